"""Shared set-up of the data-plane benchmarks: Debian's PostgreSQL and Mosquitto on loopback."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dataplane import LicenceFiles, broker_identities, write_licence  # noqa: E402
from real_services import PostgresServer  # noqa: E402
from iotenant_testbed.mosquitto import MosquittoBroker  # noqa: E402


@dataclass
class Services:
    root: Path
    postgres: PostgresServer
    broker: MosquittoBroker
    licence: LicenceFiles


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def histogram_quantile(buckets: list[tuple[float, float]], fraction: float) -> float:
    """Prometheus-style estimate from cumulative (upper bound, count) buckets."""
    total = buckets[-1][1]
    if total == 0:
        return 0.0
    rank, previous_bound, previous_count = fraction * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            span = count - previous_count
            return previous_bound + (bound - previous_bound) * ((rank - previous_count) / span if span else 1)
        previous_bound, previous_count = bound, count
    return previous_bound


@contextmanager
def services(plan: str = "enterprise") -> Iterator[Services]:
    root = Path(tempfile.mkdtemp(prefix="iotenant-bench-"))
    root.chmod(0o755)
    postgres = PostgresServer(root=root / "postgres")
    postgres.initialise()
    postgres.start()
    broker = MosquittoBroker(root=root / "broker", identities=broker_identities())
    broker.write_configuration()
    broker.start()
    try:
        yield Services(root, postgres, broker, write_licence(root / "licence", plan))
    finally:
        broker.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
