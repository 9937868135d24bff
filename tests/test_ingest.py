"""`iotenant ingest` against Debian's Mosquitto (operator-generated configuration) and PostgreSQL."""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import wait_for
from dataplane import DEVICES, Device, IngestProcess, LicenceFiles, telemetry, write_licence
from real_services import PostgresServer
from iotenant.devcluster.mosquitto import MosquittoBroker

def start_ingest(database: str, broker: MosquittoBroker, licence: LicenceFiles, log: Path, **options: object) -> IngestProcess:
    process = IngestProcess(database_url=database, broker_port=broker.port, licence=licence, log=log, **options)  # type: ignore[arg-type]
    process.start()
    return process


def devices(broker: MosquittoBroker, count: int) -> list[Device]:
    return [Device(broker.port, device, f"{device}-password") for device in DEVICES[:count]]


def rows(database: str) -> tuple[int, int]:
    """(distinct messages, measurement rows) stored."""
    with psycopg.connect(database) as connection:
        messages, measurements = connection.execute(
            "SELECT count(DISTINCT (device_id, msg_ts, seq)), count(*) FROM telemetry"
        ).fetchone()
    return int(messages), int(measurements)


def publish_stream(fleet: list[Device], messages: int, redeliver_fraction: float, reboots: int, seed: int = 7) -> int:
    """Publish ``messages`` distinct telemetry messages (plus redeliveries); returns the distinct count."""
    rng = random.Random(seed)
    start = time.time() - 60
    seq = {device.device_id: 0 for device in fleet}
    epoch = {device.device_id: start for device in fleet}
    reboot_at = set(rng.sample(range(messages), reboots))
    sent: list[tuple[Device, bytes]] = []
    for n in range(messages):
        device = fleet[n % len(fleet)]
        if n in reboot_at:  # the device restarts: seq starts again at 0, its clock moves on
            seq[device.device_id] = 0
            epoch[device.device_id] += 1.0
        payload = telemetry(device.device_id, epoch[device.device_id] + seq[device.device_id] * 0.001, seq[device.device_id])
        seq[device.device_id] += 1
        device.publish("telemetry", payload)
        sent.append((device, payload))
        if rng.random() < redeliver_fraction:
            redelivered_device, redelivered = rng.choice(sent)
            redelivered_device.publish("telemetry", redelivered)
    for device in fleet:
        device.flush()
    return messages


def test_ten_thousand_messages_with_redeliveries_and_reboots_give_exactly_the_right_rows(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    fleet = devices(broker, 20)
    distinct = publish_stream(fleet, 10_000, redeliver_fraction=0.05, reboots=3)
    wait_for(lambda: rows(database)[0] == distinct, timeout=60, what=f"{distinct} distinct messages stored")
    time.sleep(1)
    assert rows(database) == (distinct, distinct * 2)
    metrics = ingest.metrics()
    assert metrics["iotenant_ingest_stored_total"] == distinct
    received = metrics['iotenant_ingest_received_total{kind="telemetry"}']
    assert metrics["iotenant_ingest_duplicate_total"] == received - distinct
    assert received - distinct > 400  # about 5 % redelivered
    with psycopg.connect(database) as connection:
        restarts = connection.execute(
            "SELECT count(*) FROM telemetry WHERE seq = 0 AND idx = 0"
        ).fetchone()[0]
        assert restarts == 20 + 3  # each device's first message, and the three reboots
        assert connection.execute("SELECT count(*) FROM devices").fetchone()[0] == 20
    ingest.stop()


def test_ingest_killed_mid_stream_loses_nothing_and_doubles_nothing(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    fleet = devices(broker, 10)
    start = time.time() - 30
    total = 6000
    for n in range(total):
        device = fleet[n % len(fleet)]
        device.publish("telemetry", telemetry(device.device_id, start + n * 0.001, n))
        if n == total // 3:
            wait_for(lambda: rows(database)[0] > 0, timeout=30, what="the first rows")
            ingest.kill()  # SIGKILL: no goodbye, unacknowledged messages stay with the broker
    for device in fleet:
        device.flush()
    stored_while_down = rows(database)[0]
    assert stored_while_down < total
    ingest.start()  # same client id: the persistent session and its queued messages resume
    wait_for(lambda: rows(database)[0] == total, timeout=60, what=f"all {total} messages after the restart")
    time.sleep(1)
    assert rows(database) == (total, total * 2)
    ingest.stop()


def test_database_outage_loses_nothing_and_memory_stays_bounded(
    database: str, broker: MosquittoBroker, postgres: PostgresServer, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log", extra=["--inflight", "500"])
    fleet = devices(broker, 10)
    start = time.time() - 30
    published = 0

    def burst(count: int) -> None:
        nonlocal published
        for _ in range(count):
            device = fleet[published % len(fleet)]
            device.publish("telemetry", telemetry(device.device_id, start + published * 0.001, published, values=5))
            published += 1
        for device in fleet:
            device.flush()

    burst(2000)
    wait_for(lambda: rows(database)[0] == 2000, timeout=30, what="the first 2000 messages")
    rss_before = ingest.rss_kib()
    postgres.stop()
    outage_started = time.monotonic()
    peak = rss_before
    while time.monotonic() - outage_started < 10:
        burst(1000)
        peak = max(peak, ingest.rss_kib())
        assert ingest.alive()
    wait_for(lambda: ingest.metrics()["iotenant_ingest_database_up"] == 0, timeout=10, what="database_up to drop")
    postgres.start()
    wait_for(lambda: rows(database)[0] == published, timeout=60, what=f"all {published} messages after the outage")
    assert rows(database) == (published, published * 5)
    growth_mib = (peak - rss_before) / 1024
    print(f"published {published} messages; RSS before the outage {rss_before / 1024:.0f} MiB, peak during it +{growth_mib:.1f} MiB")
    assert growth_mib < 64, f"memory grew by {growth_mib:.0f} MiB during the outage"
    assert ingest.metrics()["iotenant_ingest_database_up"] == 1
    ingest.stop()


def test_two_ingest_processes_split_the_load_without_doubling(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    first = start_ingest(database, broker, enterprise_licence, tmp_path / "first.log", client_id="ingest-a")
    second = start_ingest(database, broker, enterprise_licence, tmp_path / "second.log", client_id="ingest-b")
    fleet = devices(broker, 10)
    distinct = publish_stream(fleet, 5000, redeliver_fraction=0.0, reboots=0)
    wait_for(lambda: rows(database)[0] == distinct, timeout=60, what=f"{distinct} messages")
    time.sleep(1)
    counts = [p.metrics()['iotenant_ingest_received_total{kind="telemetry"}'] for p in (first, second)]
    assert sum(counts) == distinct, counts
    assert min(counts) > distinct * 0.2, f"the load was not shared: {counts}"
    assert rows(database) == (distinct, distinct * 2)
    first.stop()
    second.stop()


def test_device_limit_and_rate_limit_come_from_the_licence(
    database: str, broker: MosquittoBroker, tmp_path: Path
) -> None:
    licence = write_licence(tmp_path / "licence", "starter")  # 25 devices, 50 msg/s
    ingest = start_ingest(database, broker, licence, tmp_path / "ingest.log")
    fleet = devices(broker, 30)
    now = time.time() - 10
    for n, device in enumerate(fleet):  # one message each, slowly enough for the rate limit
        device.publish("telemetry", telemetry(device.device_id, now + n * 0.001, 0))
        device.flush()
        time.sleep(0.03)
    wait_for(lambda: ingest.metrics().get('iotenant_ingest_rejected_total{reason="device_limit"}', 0) == 5,
             timeout=30, what="5 devices over the licence limit refused")
    assert rows(database)[0] == 25

    burst = fleet[0]
    for seq in range(1, 401):
        burst.publish("telemetry", telemetry(burst.device_id, now + 1 + seq * 0.001, seq))
    burst.flush()
    wait_for(lambda: ingest.metrics().get('iotenant_ingest_rejected_total{reason="rate_limited"}', 0) > 200,
             timeout=30, what="the burst to be rate limited")
    with psycopg.connect(database) as connection:
        kept = connection.execute("SELECT reason, count(*) FROM rejected_messages GROUP BY reason").fetchall()
    assert dict(kept)["device_limit"] == 5
    ingest.stop()


def test_spoofed_device_id_is_refused(database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path) -> None:
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    (device,) = devices(broker, 1)
    device.publish("telemetry", telemetry("dev-002", time.time(), 1))
    device.flush()
    wait_for(lambda: ingest.metrics().get('iotenant_ingest_rejected_total{reason="device_id_mismatch"}', 0) == 1,
             timeout=20, what="the spoofed message to be refused")
    assert rows(database) == (0, 0)
    ingest.stop()


PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=5),
        max_leaves=20,
    ).map(lambda value: __import__("json").dumps(value).encode()),
    st.fixed_dictionaries(
        {"v": st.sampled_from([2, 1, "2"]), "device_id": st.sampled_from(["dev-001", "dev-002"]),
         "ts": st.one_of(st.floats(), st.integers(), st.text(max_size=30)), "seq": st.integers(min_value=-5, max_value=2**33),
         "measurements": st.lists(st.fixed_dictionaries({"type": st.text(max_size=70), "val": st.floats(allow_nan=True)}), max_size=3)}
    ).map(lambda value: __import__("json").dumps(value).encode()),
)


def test_fuzzed_payloads_never_crash_ingest_and_are_counted_by_reason(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    (device,) = devices(broker, 1)
    sent: list[bytes] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(payload=PAYLOADS, kind=st.sampled_from(["telemetry", "status", "hello", "command/ack"]))
    def publish(payload: bytes, kind: str) -> None:
        device.publish(kind, payload)
        sent.append(payload)

    publish()
    device.flush()

    def accounted() -> bool:
        metrics = ingest.metrics()
        received = sum(v for k, v in metrics.items() if k.startswith("iotenant_ingest_received_total"))
        return received == len(sent) and metrics.get("iotenant_ingest_inflight_messages", 1) == 0

    wait_for(accounted, timeout=30, what=f"all {len(sent)} fuzzed messages to be processed")
    assert ingest.alive()
    metrics = ingest.metrics()
    rejected = {k: v for k, v in metrics.items() if k.startswith("iotenant_ingest_rejected_total")}
    assert sum(rejected.values()) > len(sent) / 2, rejected
    with psycopg.connect(database) as connection:
        kept = dict(connection.execute("SELECT reason, count(*) FROM rejected_messages GROUP BY reason").fetchall())
    assert sum(kept.values()) == sum(rejected.values())
    assert set(kept) <= {"invalid_json", "not_an_object", "unsupported_version", "device_id_mismatch", "bad_timestamp",
                         "bad_seq", "bad_measurements", "too_many_measurements", "bad_status", "bad_ack",
                         "timestamp_out_of_range", "payload_too_large"}
    ingest.stop()


def test_partitions_follow_the_licence_retention(database: str) -> None:
    from datetime import date

    from iotenant_workloads import database as schema

    today = date(2026, 3, 10)
    with psycopg.connect(database) as connection:
        schema.migrate(connection)
        assert schema.migrate(connection) == 1  # idempotent
        created = schema.ensure_partitions(connection, 7, today=today)
        assert created[0] == "telemetry_p20260303" and created[-1] == "telemetry_p20260312" and len(created) == 10
        assert schema.ensure_partitions(connection, 7, today=today) == []
        later = date(2026, 3, 20)
        schema.ensure_partitions(connection, 7, today=later)
        dropped = schema.apply_retention(connection, 7, today=later)
        assert dropped == [f"telemetry_p202603{day:02d}" for day in range(3, 13)]


def test_a_changed_licence_file_is_re_read(database: str, broker: MosquittoBroker, tmp_path: Path) -> None:
    licence = write_licence(tmp_path / "licence", "enterprise")
    ingest = start_ingest(database, broker, licence, tmp_path / "ingest.log")
    fleet = devices(broker, 30)
    now = time.time() - 10
    for n, device in enumerate(fleet[:20]):
        device.publish("telemetry", telemetry(device.device_id, now + n * 0.001, 0))
        device.flush()
    wait_for(lambda: rows(database)[0] == 20, timeout=20, what="20 devices stored")
    roomy = {"maxDevices": 25, "maxFleets": 2, "retentionDays": 7, "maxMessagesPerSecond": 10000}
    write_licence(tmp_path / "licence", "starter", key=licence.key, limits=roomy)
    wait_for(lambda: "plan starter" in (tmp_path / "ingest.log").read_text(), timeout=20, what="the new licence to be read")
    for n, device in enumerate(fleet[20:]):
        device.publish("telemetry", telemetry(device.device_id, now + 1 + n * 0.001, 0))
        device.flush()
    wait_for(lambda: ingest.metrics().get('iotenant_ingest_rejected_total{reason="device_limit"}', 0) == 5,
             timeout=20, what="the starter device limit to apply")
    assert rows(database)[0] == 25
    ingest.stop()
