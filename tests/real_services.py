"""Helpers of the test session: Debian's PostgreSQL (from iotenant_testbed.postgres), and what a local
process uses (memory, CPU) and reports (its /metrics)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from iotenant_testbed.postgres import PostgresServer

__all__ = ["PostgresServer", "cpu_seconds", "resident_kib", "scrape_metrics"]


def resident_kib(pid: int) -> int:
    """A process's resident memory (VmRSS) in KiB."""
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_metrics(port: int) -> dict[str, float]:
    """A local process's /metrics as {sample with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
