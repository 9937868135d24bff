"""The one command-line entry point: ``iotenant <command> ...``.

A process imports only the command it runs: the operator carries no database driver, web server or
MQTT simulator (about 10 MiB less resident), and each service starts no other's metrics.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

from iotenant import __version__

# The entry-point group through which another installed distribution adds a command: the local
# test bed adds ``dev`` this way, so the image, which does not carry it, has no ``iotenant dev``.
COMMAND_ENTRY_POINTS = "iotenant.commands"

# Each product command's module (its ``register`` adds the subcommand), in the order ``--help`` lists them.
PRODUCT_COMMANDS = {
    "operator": "iotenant.operator_command",
    "licence": "iotenant.licence_command",
    "ingest": "iotenant_workloads.ingest.command",
    "database-setup": "iotenant_workloads.database_setup",
    "api": "iotenant_workloads.api.app",
    "simulate": "iotenant_workloads.simulate.simulator",
}


class UserFacingError(Exception):
    """A failure whose message tells the person at the shell what to do; printed without a traceback."""


def _installed_commands() -> dict[str, str]:
    """The product's commands, then those that installed distributions add (a product name wins)."""
    added = {
        entry_point.name: entry_point.value
        for entry_point in importlib.metadata.entry_points(group=COMMAND_ENTRY_POINTS)
        if entry_point.name not in PRODUCT_COMMANDS
    }
    return {**PRODUCT_COMMANDS, **added}


COMMANDS = _installed_commands()


def _chosen(argv: Sequence[str]) -> list[str]:
    """The command ``argv`` names, or every command (for --help, --version and mistakes)."""
    first = next((argument for argument in argv if not argument.startswith("-")), None)
    return [first] if first in COMMANDS else list(COMMANDS)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the command that ``argv`` names, or with every command when ``argv`` is None."""
    parser = argparse.ArgumentParser(
        prog="iotenant",
        description="iotenant: a private, licensed IoT stack for every customer, run by a Kubernetes operator.",
    )
    parser.add_argument("--version", action="version", version=f"iotenant {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _chosen(argv) if argv is not None else COMMANDS:
        importlib.import_module(COMMANDS[name]).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserFacingError as error:
        print(f"iotenant: {error}", file=sys.stderr)
        return 1
