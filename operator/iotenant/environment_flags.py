"""Command-line flags that each have an IOTENANT_... environment variable, documented in --help.

The operator's Deployments and a person at a shell configure a service the same way.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable


def boolean(value: str) -> bool:
    """A flag or variable value read as a boolean: true/false, yes/no, on/off, 1/0."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean (true or false)")


def flag(
    parser: argparse.ArgumentParser,
    name: str,
    variable: str,
    help_text: str,
    *,
    kind: Callable[[str], Any] = str,
    default: Any = None,
    required: bool = False,
    choices: list[str] | None = None,
) -> None:
    """Add ``--name``; its default comes from ``variable`` when set, else ``default``."""
    from_environment = os.environ.get(variable)
    try:
        value = kind(from_environment) if from_environment is not None else default
    except (ValueError, argparse.ArgumentTypeError) as error:
        parser.error(f"{variable}={from_environment!r}: {error}")
    suffix = f" [{variable}]" + (f" (default: {default})" if default not in (None, "") else "")
    parser.add_argument(
        name,
        type=kind,
        default=value,
        required=required and value is None,
        choices=choices,
        help=help_text + suffix,
    )
