"""The one command-line entry point: ``iotenant <command> ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from iotenant import __version__
from iotenant import licence_command, operator_command
from iotenant.devcluster import command as devcluster_command
from iotenant_workloads import database_setup
from iotenant_workloads.api import app as api
from iotenant_workloads.ingest import command as ingest
from iotenant_workloads.simulate import simulator as simulate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotenant",
        description="iotenant: a private, licensed IoT stack for every customer, run by a Kubernetes operator.",
    )
    parser.add_argument("--version", action="version", version=f"iotenant {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    operator_command.register(commands)
    licence_command.register(commands)
    devcluster_command.register(commands)
    ingest.register(commands)
    database_setup.register(commands)
    api.register(commands)
    simulate.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except devcluster_command.UserFacingError as error:
        print(f"iotenant: {error}", file=sys.stderr)
        return 1
