"""`fleetpilot`: one command line for the daemon and the training tools.

Every subcommand module adds its parsers; heavy imports (torch, onnxruntime, boto3) happen inside commands.
Bad input ends with one line on stderr naming what is wrong, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys


class CliError(ValueError):
    """Bad input from the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleetpilot")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleetpilot", description="Predictive autoscaling with a learned policy.")
    parser.add_argument("--version", action="version", version=f"fleetpilot {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from fleetpilot.controller import commands as daemon_commands
    from fleetpilot.training import cli as training_commands

    daemon_commands.add_commands(sub)
    training_commands.add_commands(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from fleetpilot.controller import cli as this  # under `python -m controller.cli` this module is __main__
    from fleetpilot.policies.registry import PolicyError
    from fleetpilot.training.load import TraceError

    errors: list[type[BaseException]] = [CliError, this.CliError, PolicyError, TraceError]
    try:
        from fleetpilot.controller.config import ConfigError
        from fleetpilot.controller.journal import JournalError

        errors += [ConfigError, JournalError]
    except ImportError:
        pass
    try:
        from fleetpilot.policies.onnx_policy import ModelError

        errors.append(ModelError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        from fleetpilot.controller.logs import redact  # the one line never quotes a credential either

        print(redact(f"fleetpilot {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
