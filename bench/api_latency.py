"""API latency with many stored rows: p50/p99 of last, recent-100 and recent-1000, beside the same
statements run bare through psycopg in the same run, and each route's ratio to them.

Fills the telemetry table with --rows measurements (default 10 million, 1000 devices, 2 types)
with one INSERT ... SELECT from generate_series, then times sequential keep-alive requests and the
route's own SQL (``device_routes``) on one connection, for the same devices in the same order. A
reference that returns no rows or times nothing fails the benchmark instead of printing a ratio.

Usage: python bench/api_latency.py [--rows 10000000] [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from pathlib import Path

import psycopg

from dataplane_bench import percentile, services
from dataplane import ApiProcess

from iotenant_workloads import tenant_schema as database
from iotenant_workloads.api.device_routes import LAST_OF_TYPE, NEWEST_FIRST

TOKEN = "bench-token"
# Each route, and the statement it runs with the parameters it passes for device n.
ROUTES = (
    ("last", "/api/v1/devices/dev-{n}/telemetry/last?type=m0", LAST_OF_TYPE, lambda n: (f"dev-{n}", "m0"), 1),
    ("recent_100", "/api/v1/devices/dev-{n}/telemetry?limit=100", NEWEST_FIRST.format(clauses="device_id = %s"),
     lambda n: (f"dev-{n}", 100), 100),
    ("recent_1000", "/api/v1/devices/dev-{n}/telemetry?limit=1000", NEWEST_FIRST.format(clauses="device_id = %s"),
     lambda n: (f"dev-{n}", 1000), 1000),
)
# Below this, a timing is not a measurement (a broken clock or an empty answer).
SANITY_FLOOR_SECONDS = 1e-6


def fill(url: str, rows: int, devices: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url) as connection:
        database.migrate(connection)
        database.ensure_partitions(connection, 7)
        connection.commit()
        per_device = rows // (devices * 2)
        connection.execute(
            """
            INSERT INTO devices (device_id, first_seen, last_seen, online)
            SELECT format('dev-%%s', d), now() - interval '6 days', now(), true FROM generate_series(1, %s) d
            """,
            (devices,),
        )
        connection.execute(
            """
            INSERT INTO telemetry (device_id, msg_ts, seq, idx, ts, type, val, unit, received_at)
            SELECT format('dev-%%s', d), now() - (s * interval '1 second') * (518400.0 / %s), s, i,
                   now() - (s * interval '1 second') * (518400.0 / %s), format('m%%s', i), random() * 100, 'C', now()
            FROM generate_series(1, %s) d, generate_series(1, %s) s, generate_series(0, 1) i
            """,
            (per_device, per_device, devices, per_device),
        )
        connection.commit()
        connection.execute("ANALYZE telemetry")
    return time.perf_counter() - started


def timed(connection: http.client.HTTPConnection, path: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        body = response.read()
        samples.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
    return samples


def timed_sql(connection: psycopg.Connection, statement: str, parameters: tuple[object, ...], rows: int) -> float:
    started = time.perf_counter()
    fetched = connection.execute(statement, parameters).fetchall()
    elapsed = time.perf_counter() - started
    if len(fetched) != rows or elapsed < SANITY_FLOOR_SECONDS:
        raise RuntimeError(f"the SQL reference is broken: {len(fetched)} rows (expected {rows}) in {elapsed:.9f} s for {parameters}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with services() as svc:
        url = svc.postgres.create_database("bench_api")
        fill_seconds = fill(url, args.rows, args.devices)
        token_file = Path(svc.root / "token")
        token_file.write_text(TOKEN)
        api = ApiProcess(database_url=url, broker_port=svc.broker.port, licence=svc.licence, token_file=token_file,
                         log=svc.root / "api.log", extra=["--requests-per-second", "100000"])
        api.start()
        connection = http.client.HTTPConnection("127.0.0.1", api.port)
        results: dict[str, float] = {"rows": args.rows, "fill_seconds": round(fill_seconds, 1)}
        devices = [(n * 7) % args.devices + 1 for n in range(1, args.requests + 1)]
        with psycopg.connect(url, autocommit=True) as sql:
            for name, path, statement, parameters, rows in ROUTES:
                timed(connection, path.format(n=1), 20)  # warm up both
                for _ in range(20):
                    timed_sql(sql, statement, parameters(1), rows)
                samples: list[float] = []
                references: list[float] = []
                for n in devices:
                    samples += timed(connection, path.format(n=n), 1)
                    references.append(timed_sql(sql, statement, parameters(n), rows))
                for label, values in ((name, samples), (f"{name}_sql", references)):
                    results[f"{label}_p50_ms"] = round(percentile(values, 0.5) * 1000, 3)
                    results[f"{label}_p99_ms"] = round(percentile(values, 0.99) * 1000, 3)
                results[f"{name}_p99_ratio_to_sql"] = round(percentile(samples, 0.99) / percentile(references, 0.99), 2)
        api.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
