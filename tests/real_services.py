"""Helpers of the test session: Debian's PostgreSQL (from iotenant_testbed.postgres) and process memory."""

from __future__ import annotations

from pathlib import Path

from iotenant_testbed.postgres import PostgresServer

__all__ = ["PostgresServer", "resident_kib"]


def resident_kib(pid: int) -> int:
    """A process's resident memory (VmRSS) in KiB."""
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


