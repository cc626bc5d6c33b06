"""User-input errors: the one base class the command line catches (one line on stderr, exit code 2).

Every module that refuses bad input (a config field, a policy name, a model file, a trace, a command-line value)
raises a subclass of `UserError`; it lives here, in a module that imports nothing, so that any layer may raise
one and the CLI that assembles the commands catches them all without importing the modules that raise them.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message names what is wrong (file, line, field) in one line."""


class CliError(UserError):
    """A command-line value that cannot be used."""
