"""Telemetry export: rows/s and the API's peak memory, for tenants of different sizes.

For each --rows size: a fresh database filled with that many measurements (as bench/api_latency.py
fills it), a fresh ``iotenant api``, then the whole tenant exported as CSV and as NDJSON over HTTP,
read in 1 MiB pieces. Prints rows/s, MB/s, time to the first byte, and the API process's peak
resident memory (VmHWM) after each export: the goal is memory independent of the rows exported.

Usage: python bench/export_stream.py [--rows 1000000 10000000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from pathlib import Path

from api_latency import TOKEN, fill
from dataplane import ApiProcess
from dataplane_bench import services


def peak_kib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0])


def export(port: int, query: str) -> tuple[int, int, float, float]:
    """(rows, bytes, seconds to the first byte, seconds in all) of one whole export."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("GET", f"/api/v1/export{query}", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{query}: {response.status} {response.read()[:300]!r}")
    first = None
    size = lines = 0
    while piece := response.read(1 << 20):
        first = first or time.perf_counter() - started
        size += len(piece)
        lines += piece.count(b"\n")
    return lines, size, first or 0.0, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    results = []
    with services() as svc:
        token_file = Path(svc.root / "token")
        token_file.write_text(TOKEN)
        for rows in args.rows:
            url = svc.postgres.create_database(f"bench_export_{rows}")
            fill_seconds = fill(url, rows, args.devices)
            api = ApiProcess(database_url=url, broker_port=svc.broker.port, licence=svc.licence, token_file=token_file,
                             log=svc.root / f"api-{rows}.log", extra=["--requests-per-second", "100000"])
            api.start()
            assert api.process is not None
            figures: dict[str, float | int] = {"rows": rows, "fill_seconds": round(fill_seconds, 1),
                                               "api_peak_rss_mib_before": round(peak_kib(api.process.pid) / 1024, 1)}
            for chosen, header_lines in (("csv", 1), ("ndjson", 0)):
                lines, size, first, seconds = export(api.port, f"?format={chosen}")
                if lines - header_lines != rows:
                    raise RuntimeError(f"{chosen}: {lines - header_lines} rows exported, {rows} stored")
                figures |= {f"{chosen}_rows_per_second": round(rows / seconds), f"{chosen}_mb_per_second": round(size / seconds / 1e6, 1),
                            f"{chosen}_first_byte_seconds": round(first, 2), f"{chosen}_seconds": round(seconds, 1),
                            f"{chosen}_api_peak_rss_mib": round(peak_kib(api.process.pid) / 1024, 1)}
            api.stop()
            results.append(figures)
            print(json.dumps(figures), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
