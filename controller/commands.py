"""Daemon subcommands (`run`, `config check`, `decisions`): filled in by the controller work."""
from __future__ import annotations


def add_commands(sub) -> None:
    pass
