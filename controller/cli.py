"""`fleetpilot`: one command line for the daemon and the training tools.

Every subcommand module adds its parsers; heavy imports (torch, onnxruntime, boto3) happen inside commands.
Bad input (any `policies.errors.UserError`: config, policy, model, trace, command-line value) ends with one line
on stderr naming what is wrong, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from fleetpilot.policies.errors import CliError, UserError

__all__ = ["CliError", "UserError", "build_parser", "main"]


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        from fleetpilot.controller.logs import redact  # the one line never quotes a credential either

        print(redact(f"fleetpilot {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
