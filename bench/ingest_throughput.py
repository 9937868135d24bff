"""Sustained ingest throughput and lag, beside the raw ceilings measured in the same run.

Prints, for N messages published at QoS 1 by several device connections:
- the broker ceiling: a bare paho receiver subscribed as ingest is (its identity, its share group)
  that only counts (automatic acknowledgement);
- the database ceiling: COPY of the same rows into the telemetry table (binary, as ingest writes);
- ingest with 1 and with 2 processes under a flood: messages/s from first publish to last committed
  row, and p50/p99 of the lag from each message's timestamp to its commit (estimated from the
  ingest's lag histogram, as Prometheus would);
- ingest with 1 process under a paced publisher at --paced-share (default 0.8) of the broker
  ceiling: the lag p50/p99 a steady load sees;
- ingest's share of the ceiling, and 2 processes over 1.

Every reference is checked: a ceiling under SANITY_FLOOR_MSG_PER_S, a receiver that got fewer
messages than were sent, or an ingest that never stores them all fails the benchmark with a message
instead of printing a figure.

Usage: python bench/ingest_throughput.py [--messages 60000] [--devices 20] [--paced-share 0.8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import threading
import time
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import psycopg
from dataplane_bench import Services, histogram_quantile, services
from paho.mqtt.enums import CallbackAPIVersion

from dataplane import DEVICES, IngestProcess, telemetry
from iotenant.mosquitto.identities import INGEST
from iotenant_workloads import tenant_schema as database
from iotenant_workloads.ingest.telemetry_store import STAGING_COLUMNS

# Below this, a reference measured nothing real (a refused subscription, a broker that is not up).
SANITY_FLOOR_MSG_PER_S = 500.0
STORE_TIMEOUT_SECONDS = 600.0


class BrokenReference(SystemExit):
    """A ceiling or a run that cannot be right: the benchmark stops and says why."""


def publish_worker(port: int, devices: list[str], messages: int, rate: float) -> None:
    """Publish ``messages`` from ``devices``: as fast as possible, or at ``rate`` messages/s when > 0."""
    clients = []
    for device in devices:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}", protocol=mqtt.MQTTv311)
        client.username_pw_set(device, f"{device}-password")
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", port)
        client.loop_start()
        clients.append(client)
    infos = []
    started = time.monotonic()
    for n in range(messages):
        if rate > 0 and (early := started + n / rate - time.monotonic()) > 0:
            time.sleep(early)
        client = clients[n % len(clients)]
        device = devices[n % len(devices)]
        infos.append(client.publish(f"iot/{device}/telemetry", telemetry(device, time.time(), n), qos=1))
    for info in infos:
        info.wait_for_publish(120)
    for client in clients:
        client.disconnect()
        client.loop_stop()


def publish(port: int, devices: list[str], messages: int, processes: int = 2, rate: float = 0.0) -> float:
    """Publish from ``processes`` processes (together at ``rate`` messages/s when > 0); returns the time
    the first message left."""
    share = [devices[i::processes] for i in range(processes)]
    workers = [multiprocessing.Process(target=publish_worker, args=(port, share[i], messages // processes, rate / processes))
               for i in range(processes)]
    started = time.time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return started


def broker_ceiling(svc: Services, devices: list[str], messages: int) -> float:
    received = 0
    done = threading.Event()
    first: list[float] = []

    def on_message(*_: object) -> None:
        nonlocal received
        if not first:
            first.append(time.time())
        received += 1
        if received >= messages:
            done.set()

    counter = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter", protocol=mqtt.MQTTv5)
    counter.username_pw_set(INGEST, "ingest-password")
    counter.on_message = on_message
    subscribed = threading.Event()
    counter.on_subscribe = lambda *_: subscribed.set()
    counter.connect("127.0.0.1", svc.broker.port)
    # The broker lets ingest's identity into its own share group only.
    shared = f"$share/{svc.broker.share_group}/iot/+/telemetry"
    counter.subscribe(shared, qos=1)
    counter.loop_start()
    if not subscribed.wait(10):
        raise BrokenReference(f"the bare receiver could not subscribe to {shared} as ingest")
    started = publish(svc.broker.port, devices, messages)
    done.wait(300)
    elapsed = time.time() - started
    counter.unsubscribe(shared)
    counter.disconnect()
    counter.loop_stop()
    if received < messages:
        raise BrokenReference(f"the bare receiver got {received} of {messages} messages: the broker ceiling is not a reference")
    return sane("broker ceiling", received / elapsed)


def sane(what: str, rate: float) -> float:
    if rate < SANITY_FLOOR_MSG_PER_S:
        raise BrokenReference(f"{what}: {rate:.1f} msg/s, under the sanity floor of {SANITY_FLOOR_MSG_PER_S:.0f}: the set-up is broken")
    return rate


def copy_ceiling(url: str, messages: int) -> float:
    now = datetime.now(timezone.utc)
    with psycopg.connect(url) as connection:
        database.migrate(connection)
        database.ensure_partitions(connection, 2)
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor:
            columns = ", ".join(name for name, _ in STAGING_COLUMNS)  # the staging table's are the telemetry table's
            with cursor.copy(f"COPY telemetry ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([kind for _, kind in STAGING_COLUMNS])
                for n in range(messages):
                    ts = now.replace(microsecond=n % 1_000_000)
                    for index in range(2):
                        copy.write_row((DEVICES[n % 20], ts, n, index, ts, f"m{index}", n * 0.5, "C", now))
        connection.commit()
        return sane("COPY ceiling", messages / (time.perf_counter() - started))


def forget_session(port: int, client_id: str) -> None:
    """Connect as ``client_id`` with a clean start and no session expiry: the broker drops its session."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(INGEST, "ingest-password")
    client.connect("127.0.0.1", port, clean_start=True)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


def ingest_run(svc: Services, devices: list[str], messages: int, processes: int, rate: float = 0.0) -> dict[str, float]:
    """Ingest with ``processes`` processes under a flood (``rate`` 0) or a paced publisher."""
    url = svc.postgres.create_database(f"bench_ingest_{processes}_{'paced' if rate else 'flood'}")
    runners = [
        IngestProcess(database_url=url, broker_port=svc.broker.port, licence=svc.licence,
                      log=svc.root / f"ingest-{processes}-{i}.log", client_id=f"bench-ingest-{processes}-{i}",
                      share_group=svc.broker.share_group)
        for i in range(processes)
    ]
    for runner in runners:
        runner.start()
    started = publish(svc.broker.port, devices, messages, rate=rate)
    deadline = time.monotonic() + STORE_TIMEOUT_SECONDS
    with psycopg.connect(url, autocommit=True) as connection:
        while (stored := connection.execute("SELECT count(*) FROM telemetry").fetchone()[0]) < messages * 2:
            if time.monotonic() > deadline:
                raise BrokenReference(f"ingest ({processes} processes) stored {stored // 2} of {messages} messages "
                                      f"in {STORE_TIMEOUT_SECONDS:.0f} s (see {svc.root}/ingest-*.log)")
            time.sleep(0.05)
    elapsed = time.time() - started
    buckets: dict[float, float] = {}
    for runner in runners:
        for name, value in runner.metrics().items():
            if name.startswith("iotenant_ingest_lag_seconds_bucket"):
                bound = name.split('le="')[1].rstrip('"}')
                key = float("inf") if bound == "+Inf" else float(bound)
                buckets[key] = buckets.get(key, 0.0) + value
        runner.stop()
        # Mosquitto keeps handing a shared subscription's messages to stopped sessions: end this one.
        forget_session(svc.broker.port, runner.client_id)
    ordered = sorted(buckets.items())
    return {"rate": sane(f"ingest, {processes} processes", messages / elapsed),
            "p50": histogram_quantile(ordered, 0.5), "p99": histogram_quantile(ordered, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--paced-share", type=float, default=0.8, help="the paced publisher's rate, as a share of the broker ceiling")
    args = parser.parse_args()
    devices = DEVICES[: args.devices]
    with services() as svc:
        ceiling = broker_ceiling(svc, devices, args.messages)
        results = {
            "broker_ceiling_msg_per_s": ceiling,
            "copy_ceiling_msg_per_s": copy_ceiling(svc.postgres.create_database("bench_copy"), args.messages),
        }
        for processes in (1, 2):
            run = ingest_run(svc, devices, args.messages, processes)
            results[f"ingest_{processes}_msg_per_s"] = run["rate"]
            results[f"ingest_{processes}_lag_p50_s"] = run["p50"]
            results[f"ingest_{processes}_lag_p99_s"] = run["p99"]
        paced = ingest_run(svc, devices, args.messages, 1, rate=ceiling * args.paced_share)
        results["paced_msg_per_s"] = paced["rate"]
        results["ingest_1_paced_lag_p50_s"] = paced["p50"]
        results["ingest_1_paced_lag_p99_s"] = paced["p99"]
        results["ingest_1_share_of_broker_ceiling"] = results["ingest_1_msg_per_s"] / ceiling
        results["ingest_2_over_1"] = results["ingest_2_msg_per_s"] / results["ingest_1_msg_per_s"]
    print(json.dumps({"messages": args.messages, "devices": args.devices, "cores": multiprocessing.cpu_count(),
                      **{k: round(v, 3) for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
