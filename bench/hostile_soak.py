"""Soak: ingest under a long mix of hostile and good device messages (Debian's Mosquitto and PostgreSQL).

Forty devices publish ``--messages`` messages, a ``--hostile`` share of them hostile (every shape of
``tests/hostile_payloads.py`` plus random bytes, deep nesting and wrong types), the rest good
telemetry. Prints what was stored, what was refused by reason, how often ingest restarted (goal: 0),
its memory before and after, and how many bytes of refused samples the database kept.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import time

import psycopg

from dataplane_bench import services
from dataplane import DEVICES, Device, IngestProcess, telemetry
from hostile_payloads import POISON


def hostile(rng: random.Random, device_id: str) -> tuple[str, bytes]:
    shape = rng.randrange(6)
    if shape == 0:
        return rng.choice(POISON)
    if shape == 1:
        return rng.choice(["telemetry", "hello", "status", "command/ack"]), rng.randbytes(rng.randrange(1, 400))
    if shape == 2:
        depth = rng.randrange(20, 30_000)
        return "telemetry", b"[" * depth + b"]" * depth
    if shape == 3:
        wrong = rng.choice([None, True, "x", [], {}, 2**70, -1.5, "\u0000", "\ud800"])
        field = rng.choice(["v", "ts", "seq", "measurements", "msg_type", "device_id"])
        document = {"v": 2, "device_id": device_id, "ts": time.time(), "seq": 1, "measurements": [{"type": "t", "val": 1}]}
        return "telemetry", json.dumps({**document, field: wrong}).encode()
    if shape == 4:
        return "telemetry", json.dumps({"v": 2, "device_id": DEVICES[0] if device_id != DEVICES[0] else DEVICES[1],
                                        "ts": time.time(), "seq": 1, "measurements": [{"type": "t", "val": 1}]}).encode()
    return "hello", json.dumps({"device_id": device_id, "fw": rng.choice(["\u0000", "\udfff", "ok" * 5000]), "deep": [[[[[1]]]]]}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--hostile", type=float, default=0.3, help="share of hostile messages")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with services() as svc:
        url = svc.postgres.create_database("bench_soak")
        ingest = IngestProcess(database_url=url, broker_port=svc.broker.port, licence=svc.licence, log=svc.root / "ingest.log",
                               share_group=svc.broker.share_group)
        ingest.start()
        pid = ingest.process.pid if ingest.process else 0
        fleet = [Device(svc.broker.port, device, f"{device}-password") for device in DEVICES]
        rss_before = ingest.rss_kib()
        start = time.time() - 3600
        good = hostile_count = 0
        seq = {device.device_id: 0 for device in fleet}
        started = time.monotonic()
        for n in range(args.messages):
            device = fleet[n % len(fleet)]
            if rng.random() < args.hostile:
                kind, payload = hostile(rng, device.device_id)
                hostile_count += 1
            else:
                number = seq[device.device_id]
                seq[device.device_id] += 1
                kind, payload = "telemetry", telemetry(device.device_id, start + number * 0.05, number)
                good += 1
            device.publish(kind, payload)
            if n % 2000 == 1999:
                for each in fleet:
                    each.flush()
                time.sleep(0.1)  # within the tenant's 10,000 msg/s and each device's 1,000
        for device in fleet:
            device.flush()
        with psycopg.connect(url, autocommit=True) as connection:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                metrics = ingest.metrics()
                received = sum(v for k, v in metrics.items() if k.startswith("iotenant_ingest_received_total"))
                if received >= args.messages and metrics["iotenant_ingest_inflight_messages"] == 0:
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            # Good telemetry carries the measurement types m0 and m1; hostile shapes that happen to be valid use "t".
            stored = connection.execute("SELECT count(DISTINCT (device_id, msg_ts, seq)) FROM telemetry WHERE type = 'm0'").fetchone()[0]
            sample_bytes = connection.execute(
                "SELECT coalesce(sum(octet_length(payload) + octet_length(detail) + octet_length(topic)), 0) FROM rejected_messages"
            ).fetchone()[0]
            samples = connection.execute("SELECT count(*) FROM rejected_messages").fetchone()[0]
        metrics = ingest.metrics()
        refused = {k.split('"')[1]: int(v) for k, v in metrics.items() if k.startswith("iotenant_ingest_rejected_total")}
        rss_after = ingest.rss_kib()
        restarts = 0 if ingest.alive() and ingest.process and ingest.process.pid == pid else 1
        ingest.stop()
        for device in fleet:
            device.close()
    print(json.dumps({
        "messages": args.messages, "good": good, "hostile": hostile_count, "cores": multiprocessing.cpu_count(),
        "seconds": round(elapsed, 1), "good_stored": stored, "good_lost": good - stored,
        "hostile_but_valid_accepted": hostile_count - sum(refused.values()),
        "refused_total": sum(refused.values()), "refused_by_reason": dict(sorted(refused.items())),
        "ingest_restarts": restarts, "ingest_rss_mib_before": round(rss_before / 1024, 1),
        "ingest_rss_mib_after": round(rss_after / 1024, 1), "refused_samples_kept": samples,
        "refused_sample_bytes_kept": sample_bytes,
    }, indent=2))


if __name__ == "__main__":
    main()
