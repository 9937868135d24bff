"""Flags with IOTENANT_... variables: a bad value names the variable, the flag overrides it."""

from __future__ import annotations

import argparse

import pytest

from iotenant.environment_flags import flag


def parser_with(monkeypatch: pytest.MonkeyPatch, value: str | None) -> argparse.ArgumentParser:
    if value is not None:
        monkeypatch.setenv("IOTENANT_TEST_PORT", value)
    parser = argparse.ArgumentParser(prog="iotenant test")
    flag(parser, "--port", "IOTENANT_TEST_PORT", "a port", kind=int, default=9100)
    return parser


def test_the_variable_sets_the_default_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parser_with(monkeypatch, None).parse_args([]).port == 9100
    assert parser_with(monkeypatch, "8080").parse_args([]).port == 8080
    assert parser_with(monkeypatch, "8080").parse_args(["--port", "7070"]).port == 7070


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parser_with(monkeypatch, "eighty")
    assert stopped.value.code == 2 and "IOTENANT_TEST_PORT='eighty'" in capsys.readouterr().err
