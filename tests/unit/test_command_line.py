"""The one command line: every command listed in --help, and a process importing only the command it runs."""

from __future__ import annotations

import subprocess
import sys

from iotenant.cli import COMMANDS, build_parser

SERVICE_LIBRARIES = ("psycopg", "psycopg_pool", "iotenant_workloads")


def modules_after(argv: list[str]) -> set[str]:
    """The top-level modules a fresh interpreter holds after building the parser for ``argv``."""
    probe = f"import sys; from iotenant.cli import build_parser; build_parser({argv!r}); print(' '.join(sys.modules))"
    output = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return {name.split(".")[0] for name in output.split()}


def test_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for name in COMMANDS:
        assert f"    {name}" in text, name


def test_the_operator_carries_no_service_code() -> None:
    loaded = modules_after(["operator", "--help"])
    assert not loaded & set(SERVICE_LIBRARIES), loaded & set(SERVICE_LIBRARIES)


def test_a_service_loads_its_own_code() -> None:
    assert "iotenant_workloads" in modules_after(["api", "--help"])


def test_a_mistyped_command_is_refused_with_every_choice_named() -> None:
    result = subprocess.run([sys.executable, "-m", "iotenant", "operater"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 'operater'" in result.stderr and all(f"'{name}'" in result.stderr for name in COMMANDS)
