"""`iotenant ingest` against Debian's Mosquitto (operator-generated configuration) and PostgreSQL."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import wait_for
from dataplane import DEVICES, Device, IngestProcess, LicenceFiles, telemetry, write_licence
from raw_mqtt import MQTT_311, RawClient, publish_packet
from hostile_payloads import POISON
from real_services import PostgresServer
from iotenant_testbed.mosquitto import MosquittoBroker

def start_ingest(database: str, broker: MosquittoBroker, licence: LicenceFiles, log: Path, **options: object) -> IngestProcess:
    process = IngestProcess(database_url=database, broker_port=broker.port, licence=licence, log=log,  # type: ignore[arg-type]
                            share_group=broker.share_group, **options)
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

    # One device may take a tenth of the tenant's 50 msg/s: its burst is refused, its neighbours' messages are not.
    burst, neighbour = fleet[0], fleet[1]
    for seq in range(1, 401):
        burst.publish("telemetry", telemetry(burst.device_id, now + 1 + seq * 0.001, seq))
        if seq % 100 == 0:
            neighbour.publish("telemetry", telemetry(neighbour.device_id, now + 1 + seq * 0.001, seq))
    burst.flush()
    neighbour.flush()
    wait_for(lambda: ingest.metrics().get('iotenant_ingest_rejected_total{reason="device_rate_limited"}', 0) >= 380,
             timeout=30, what="the burst to be limited to the device's share")
    wait_for(lambda: rows(database)[0] >= 25 + 4 + 10, timeout=10, what="the neighbour's 4 messages stored beside the burst's first ones")
    assert ingest.metrics().get('iotenant_ingest_rejected_total{reason="rate_limited"}', 0) == 0

    # Every device at once: the tenant's 50 msg/s binds before any device's share.
    for seq in range(500, 510):
        for device in fleet[:25]:
            device.publish("telemetry", telemetry(device.device_id, now + 2 + seq * 0.001, seq))
    for device in fleet[:25]:
        device.flush()
    wait_for(lambda: ingest.metrics().get('iotenant_ingest_rejected_total{reason="rate_limited"}', 0) > 50,
             timeout=30, what="the tenant's rate limit")
    with psycopg.connect(database) as connection:
        counted = dict(connection.execute("SELECT device_id || ' ' || reason, count FROM refusal_counts").fetchall())
        samples = connection.execute("SELECT count(*) FROM rejected_messages WHERE device_id = %s", (burst.device_id,)).fetchone()[0]
    assert sum(n for key, n in counted.items() if key.endswith(" device_limit")) == 5
    assert counted[f"{burst.device_id} device_rate_limited"] >= 380
    assert samples <= 2, "every refusal of the burst kept its payload"  # one sample per device and reason per 10 s
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


def test_a_device_clock_ahead_of_ingest_decides_nothing(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    """A measurement, a message or a status dated to come is refused (it would pin the last telemetry,
    the online state or an alert); the same device's next honest message is stored."""
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    (device,) = devices(broker, 1)
    now, year_2099 = time.time(), 4070908800
    future_measurement = {"v": 2, "device_id": device.device_id, "ts": now, "seq": 1, "msg_type": "telemetry",
                          "measurements": [{"ts": year_2099, "type": "m0", "val": 95, "unit": "C"}]}
    device.publish("telemetry", json.dumps(future_measurement).encode())
    device.publish("telemetry", telemetry(device.device_id, now + 3600, 2))
    device.publish("status", json.dumps({"device_id": device.device_id, "state": "online", "ts": year_2099}).encode())
    device.publish("telemetry", telemetry(device.device_id, now + 60, 3))  # a clock a minute fast is a clock
    device.flush()
    wait_for(lambda: stored_seqs(database, device.device_id) == {3}, timeout=20, what="the honest message alone")
    refused = ingest.metrics().get('iotenant_ingest_rejected_total{reason="timestamp_out_of_range"}', 0)
    assert refused == 3, ingest.metrics()
    ingest.stop()


def stored_seqs(database: str, device_id: str) -> set[int]:
    with psycopg.connect(database) as connection:
        return {row[0] for row in connection.execute("SELECT DISTINCT seq FROM telemetry WHERE device_id = %s", (device_id,))}


def json_text(value: object) -> bytes:
    """JSON as a device could send it: lone surrogates escaped as \\u escapes, NaN and Infinity as Python writes them."""
    return json.dumps(value).encode()


# Values that PostgreSQL, JSON or a double refuse, or that stretch a parser.
HOSTILE_SCALARS = st.one_of(
    st.integers(min_value=-(10**60), max_value=10**60),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**40, 10**300, 0, -1, 2**32, 2**32 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 1e15, 1e11, 4102444800, 4102444800000, -62135596800]),
    st.text(alphabet=st.characters(codec=None, exclude_categories=[]), max_size=40),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d", "\u0000\ud800", "\x7f\x1b[2J", "\u202e", "𝟙𝟚𝟛",
                     "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-13-45T99:99:99Z",
                     "2026-11-25T10:00:00", "1e400", "NaN", "" , " " * 100]),
    st.booleans(),
    st.none(),
)
HOSTILE_VALUES = st.recursive(HOSTILE_SCALARS, lambda children: st.lists(children, max_size=3)
                              | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)
FIELDS = {
    "telemetry": ["v", "device_id", "ts", "seq", "msg_type", "measurements"],
    "hello": ["device_id", "ts", "fw", "model"],
    "status": ["device_id", "ts", "state"],
    "command/ack": ["device_id", "ts", "cmd_id", "status", "result"],
}


def good_document(kind: str, device_id: str) -> dict:
    return {
        "telemetry": {"v": 2, "device_id": device_id, "ts": time.time() - 5, "seq": 1, "msg_type": "telemetry",
                      "measurements": [{"type": "t", "val": 1.0, "unit": "C"}]},
        "hello": {"device_id": device_id, "fw": "1.0", "model": "x"},
        "status": {"device_id": device_id, "state": "online"},
        "command/ack": {"device_id": device_id, "cmd_id": "c-1", "status": "done", "result": {"ok": True}},
    }[kind]


@st.composite
def hostile_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A message on any topic kind: a good document with some fields made hostile, or hostile bytes."""
    kind = draw(st.sampled_from(list(FIELDS)))
    shape = draw(st.sampled_from(["fields", "measurement", "nesting", "bytes", "wrapped"]))
    document = good_document(kind, "dev-001")
    if shape == "fields":
        for name in draw(st.lists(st.sampled_from(FIELDS[kind]), min_size=1, max_size=3, unique=True)):
            document[name] = draw(HOSTILE_VALUES)
        return kind, json_text(document)
    if shape == "measurement" and kind == "telemetry":
        entry = {"type": "t", "val": 1.0, "unit": "C", "ts": time.time() - 5}
        entry[draw(st.sampled_from(list(entry)))] = draw(HOSTILE_VALUES)
        document["measurements"] = [entry]
        return kind, json_text(document)
    if shape == "nesting":
        depth = draw(st.integers(min_value=15, max_value=60_000))
        opening = draw(st.sampled_from([b"[", b'{"a":']))
        closing = b"]" if opening == b"[" else b"}"
        return kind, (opening * depth + b"1" + closing * depth)[: 64 * 1024 + 10]
    if shape == "bytes":
        return kind, draw(st.binary(max_size=300))
    return kind, json_text({**document, "extra": draw(HOSTILE_VALUES)})


def test_hostile_messages_on_every_topic_never_stop_the_next_good_one(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    """After each hostile message, ingest is alive (the same process) and the next good message is stored within seconds."""
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    pid = ingest.process.pid
    attacker, witness = devices(broker, 2)
    good = iter(range(1, 10**6))
    start = time.time() - 60
    examples = 0

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(message=hostile_messages())
    def attack(message: tuple[str, bytes]) -> None:
        nonlocal examples
        kind, payload = message
        attacker.publish(kind, payload)
        seq = next(good)
        witness.publish("telemetry", telemetry(witness.device_id, start + seq * 0.01, seq))
        attacker.flush()
        witness.flush()
        wait_for(lambda: seq in stored_seqs(database, witness.device_id), timeout=5,
                 what=f"the good message after a hostile {kind} message ({payload[:120]!r})")
        assert ingest.alive() and ingest.process.pid == pid
        examples += 1

    attack()
    metrics = ingest.metrics()
    rejected = {k.split('"')[1]: v for k, v in metrics.items() if k.startswith("iotenant_ingest_rejected_total")}
    print(f"{examples} hostile messages; refused by reason: {rejected}")
    assert sum(rejected.values()) > examples / 2, rejected
    assert "unexpected" not in rejected, f"judging raised: see {tmp_path / 'ingest.log'}"
    with psycopg.connect(database) as connection:
        counted = dict(connection.execute("SELECT reason, sum(count) FROM refusal_counts GROUP BY reason").fetchall())
    assert {reason: float(n) for reason, n in counted.items()} == rejected
    ingest.stop()


def test_poison_messages_are_refused_once_and_never_redelivered(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    attacker, witness = devices(broker, 2)
    now = time.time() - 30
    for n, (kind, payload) in enumerate(POISON):
        attacker.publish(kind, payload)
        witness.publish("telemetry", telemetry(witness.device_id, now + n, n))
    attacker.flush()
    witness.flush()
    wait_for(lambda: len(stored_seqs(database, witness.device_id)) == len(POISON), timeout=20, what="every good message")
    metrics = ingest.metrics()
    refused = sum(v for k, v in metrics.items() if k.startswith("iotenant_ingest_rejected_total"))
    assert refused == len(POISON), metrics
    assert metrics["iotenant_ingest_inflight_messages"] == 0
    ingest.stop()
    ingest.start()  # the same persistent session: nothing unacknowledged is left to redeliver
    time.sleep(3)
    assert sum(v for k, v in ingest.metrics().items() if k.startswith("iotenant_ingest_received_total")) == 0
    ingest.stop()


def test_a_message_the_database_refuses_is_isolated_and_the_rest_of_its_batch_stored(database: str) -> None:
    from datetime import datetime, timezone

    from iotenant_workloads import tenant_schema as schema
    from iotenant_workloads.datagram import Measurement, Telemetry
    from iotenant_workloads.ingest.telemetry_store import Accepted, store

    now = datetime.now(timezone.utc)
    with psycopg.connect(database) as connection:
        schema.migrate(connection)
        schema.ensure_partitions(connection, 1)

        def message(seq: int, kind: str) -> Accepted:  # built directly: the checks that would refuse it are bypassed
            return Accepted("iot/dev-001/telemetry", b"{}", Telemetry("dev-001", now, seq, "telemetry", (Measurement(now, kind, 1.0, None),)))

        batch = [message(seq, "t") for seq in range(40)]
        batch[7] = message(7, "nul\x00")
        batch[30] = message(30, "surrogate\ud800")
        outcome = store(connection, batch, now)
    assert [item.message.seq for item, _ in outcome.refused_by_database] == [7, 30]
    assert outcome.stored_messages == 38
    assert rows(database) == (38, 38)


def test_partitions_follow_the_licence_retention(database: str) -> None:
    from datetime import date

    from iotenant_workloads import tenant_schema as schema

    today = date(2026, 3, 10)
    with psycopg.connect(database) as connection:
        schema.migrate(connection)
        assert schema.migrate(connection) == max(version for version, _ in schema.MIGRATIONS)  # idempotent
        created = schema.ensure_partitions(connection, 7, today=today)
        assert created[0] == "telemetry_p20260303" and created[-1] == "telemetry_p20260312" and len(created) == 10
        assert schema.ensure_partitions(connection, 7, today=today) == []
        later = date(2026, 3, 20)
        schema.ensure_partitions(connection, 7, today=later)
        rule = connection.execute("INSERT INTO alert_rules (name, kind, silence_seconds) VALUES ('q', 'silence', 60) RETURNING id").fetchone()[0]
        for resolved_on, device in (("2026-03-12", "old"), ("2026-03-14", "kept")):
            connection.execute("INSERT INTO alerts (rule_id, device_id, state, fired_at, resolved_at) VALUES (%s, %s, 'resolved', %s, %s)",
                               (rule, device, resolved_on, resolved_on))
            connection.execute("INSERT INTO ota_reports (device_id, cmd_id, ts, state, received_at) VALUES (%s, 'c', %s, 'failed', %s)",
                               (device, resolved_on, resolved_on))
        connection.commit()
        dropped = schema.apply_retention(connection, 7, today=later)
        assert dropped == [f"telemetry_p202603{day:02d}" for day in range(3, 13)]
        assert [row[0] for row in connection.execute("SELECT device_id FROM alerts")] == ["kept"]
        assert [row[0] for row in connection.execute("SELECT device_id FROM ota_reports")] == ["kept"]


def test_partition_upkeep_never_stops_ingest_behind_a_reader_of_the_table(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    """Dropping an expired partition locks all of telemetry and waits for its readers, and every writer
    queues behind the wait: with a reader holding the table (as a slow export does), ingest puts the
    upkeep off and keeps storing."""
    from datetime import date

    from iotenant_workloads import tenant_schema as schema

    with psycopg.connect(database) as connection:
        schema.migrate(connection)
        schema.ensure_partitions(connection, 1, today=date.today())
        schema.ensure_partitions(connection, 1, today=date(2020, 1, 2))  # expired: retention drops them
    reader = psycopg.connect(database)
    reader.execute("SELECT count(*) FROM telemetry")  # its transaction stays open, holding the table
    try:
        ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")  # upkeep runs at start
        try:
            device = devices(broker, 1)[0]
            device.publish("telemetry", telemetry(device.device_id, time.time() - 1, 1))
            device.flush()
            wait_for(lambda: stored_seqs(database, device.device_id) == {1}, timeout=20, what="a message stored while the table is read")
            assert ingest.metrics()["iotenant_ingest_upkeep_deferred_total"] >= 1
            device.close()
        finally:
            ingest.stop()
    finally:
        reader.close()
    with psycopg.connect(database) as connection:  # the reader gone, the put-off upkeep goes through
        dropped = schema.apply_retention(connection, 1)
        assert dropped and all(name.startswith("telemetry_p2020") for name in dropped), dropped


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


def test_a_device_cannot_join_the_share_group_or_read_what_ingest_stores(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    from mqtt_probe import NOT_AUTHORIZED, Probe, Refused

    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log")
    publisher, intruder_device = devices(broker, 3)[1:]
    intruder_device.close()
    intruder_id = intruder_device.device_id
    for client_id in (f"{intruder_id}-a", f"{intruder_id}-b", "ingest-test", "dev-002"):
        try:
            Probe.connect(broker.port, intruder_id, f"{intruder_id}-password", client_id=client_id).close()
            raise AssertionError(f"{intruder_id} connected with client id {client_id}")
        except Refused:
            pass
    intruder = Probe.connect(broker.port, intruder_id, f"{intruder_id}-password")
    for share in (f"$share/{broker.share_group}/iot/+/telemetry", f"$share/{broker.share_group}/iot/dev-002/telemetry",
                  "$share/ingest/iot/+/telemetry", "$share/x/#", "#", "iot/+/telemetry", "iot/dev-002/#"):
        assert intruder.subscribe(share) == NOT_AUTHORIZED, share
    start = time.time() - 60
    for seq in range(1000):
        publisher.publish("telemetry", telemetry(publisher.device_id, start + seq * 0.01, seq))
    publisher.flush()
    wait_for(lambda: rows(database)[0] == 1000, timeout=30, what="all 1,000 messages stored")
    time.sleep(0.5)
    print(f"share-group intruder: ingest stored {rows(database)[0]} of 1000, the intruder received {len(intruder.messages)}")
    assert rows(database)[0] == 1000 and intruder.messages == []
    intruder.close()
    ingest.stop()


def test_an_expired_licence_serves_through_the_grace_period_and_no_licence_acknowledges_nothing(
    database: str, broker: MosquittoBroker, tmp_path: Path
) -> None:
    folder = tmp_path / "licence"
    valid = write_licence(folder, "enterprise")
    ingest = start_ingest(database, broker, valid, tmp_path / "ingest.log", extra=["--licence-grace-seconds", "3600"])
    (device,) = devices(broker, 1)
    start = time.time() - 60

    def publish(first: int, count: int) -> None:
        for seq in range(first, first + count):
            device.publish("telemetry", telemetry(device.device_id, start + seq * 0.01, seq))
        device.flush()

    publish(0, 100)
    wait_for(lambda: rows(database)[0] == 100, timeout=20, what="100 messages under a valid licence")

    # Expired an hour ago, within the operator's grace period: service continues and every message is stored.
    expired = {"iat": int(time.time()) - 7200, "nbf": int(time.time()) - 7200, "exp": int(time.time()) - 60}
    write_licence(folder, "enterprise", key=valid.key, **expired)
    wait_for(lambda: ingest.metrics()["iotenant_ingest_licence_state"] == 0.5, timeout=20, what="the licence to be in grace")
    publish(100, 100)
    wait_for(lambda: rows(database)[0] == 200, timeout=20, what="200 messages within the grace period")

    # Past the grace period: ingest leaves the broker, acknowledging nothing; the broker keeps the messages.
    write_licence(folder, "enterprise", key=valid.key, **{**expired, "exp": int(time.time()) - 7000})
    wait_for(lambda: ingest.metrics()["iotenant_ingest_licence_state"] == 0 and ingest.metrics()["iotenant_ingest_broker_up"] == 0,
             timeout=20, what="ingest to pause without a valid licence")
    publish(200, 300)
    time.sleep(2)
    assert rows(database)[0] == 200
    assert ingest.metrics().get('iotenant_ingest_rejected_total{reason="unexpected"}', 0) == 0

    write_licence(folder, "enterprise", key=valid.key)
    wait_for(lambda: rows(database)[0] == 500, timeout=30, what="the 300 held messages once a valid licence is back")
    assert ingest.alive()
    ingest.stop()


def test_retained_status_from_before_ingest_subscribed_is_stored_and_a_last_will_marks_offline(
    database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles, tmp_path: Path
) -> None:
    """Since Mosquitto 2.0.13 a new shared subscription gets no retained messages: the status devices
    published before ingest ever subscribed must still arrive."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    online: list[mqtt.Client] = []
    for device in DEVICES[:3]:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
        client.username_pw_set(device, f"{device}-password")
        connected_at = time.time()
        client.will_set(f"iot/{device}/status", json.dumps({"state": "offline", "ts": connected_at}), qos=1, retain=True)
        client.connect("127.0.0.1", broker.port, keepalive=5)
        client.loop_start()
        client.publish(f"iot/{device}/status", json.dumps({"state": "online", "ts": connected_at}), qos=1, retain=True).wait_for_publish(5)
        online.append(client)
    ingest = start_ingest(database, broker, enterprise_licence, tmp_path / "ingest.log", client_id="ingest-late")

    def states() -> dict[str, bool]:
        with psycopg.connect(database) as connection:
            return dict(connection.execute("SELECT device_id, online FROM devices").fetchall())

    wait_for(lambda: states() == {device: True for device in DEVICES[:3]}, timeout=20, what="three devices online from retained status")
    online[0].loop_stop()
    online[0].socket().close()  # gone without DISCONNECT: the broker publishes its last will
    wait_for(lambda: states().get(DEVICES[0]) is False, timeout=30, what=f"{DEVICES[0]} offline by its last will")
    assert states()[DEVICES[1]] is True
    for client in online[1:]:
        client.disconnect()
        client.loop_stop()
    ingest.stop()


def flood_while_an_honest_device_publishes(broker: MosquittoBroker, ingest: IngestProcess, attacker_packets: list[bytes],
                                           seconds: float) -> tuple[float, int]:
    """A raw client floods ``attacker_packets`` (QoS 0, never reading) for ``seconds`` while an honest device
    of the same tenant publishes one telemetry message every 0.5 s; returns ingest's memory growth (MiB)
    and how many honest messages were sent."""
    honest = devices(broker, 1)[0]
    attacker = RawClient(broker.port, DEVICES[1], f"{DEVICES[1]}-password", MQTT_311)
    flood = threading.Thread(target=attacker.send_for, args=(attacker_packets, seconds), daemon=True)
    before = peak = ingest.rss_kib()
    started, sent = time.monotonic(), 0
    flood.start()
    while time.monotonic() - started < seconds:
        honest.publish("telemetry", telemetry(honest.device_id, time.time() - 5 + sent * 0.001, sent))
        sent += 1
        time.sleep(0.5)
        peak = max(peak, ingest.rss_kib())
    flood.join()
    attacker.close()
    honest.close()
    return (peak - before) / 1024, sent


@pytest.mark.parametrize("kind", ["hello", "telemetry"])
def test_one_devices_qos0_flood_neither_grows_ingest_nor_starves_its_neighbour(
    database: str, broker: MosquittoBroker, tmp_path: Path, kind: str
) -> None:
    licence = write_licence(tmp_path / "licence", "starter")  # 50 msg/s, a device a tenth of it
    ingest = start_ingest(database, broker, licence, tmp_path / "ingest.log")
    padding = "x" * 15_000  # as large as the starter plan's packets go
    document = {"v": 2, "device_id": DEVICES[1], "ts": time.time() - 5, "seq": 1, "msg_type": kind, "fw": padding}
    if kind == "telemetry":
        document = {**document, "measurements": [{"ts": time.time() - 5, "type": "t", "val": 1.0, "unit": padding}]}
    packets = [publish_packet(f"iot/{DEVICES[1]}/{kind}", json.dumps(document).encode(), 0, 0, MQTT_311)]
    try:
        growth_mib, sent = flood_while_an_honest_device_publishes(broker, ingest, packets, seconds=10)
        try:
            wait_for(lambda: len(stored_seqs(database, DEVICES[0])) == sent, timeout=60, what=f"the honest device's {sent} messages")
        finally:
            print(f"QoS 0 {kind} flood: ingest +{growth_mib:.0f} MiB, honest device {len(stored_seqs(database, DEVICES[0]))} of {sent} stored")
        # Unbounded, a 10 s flood grew ingest by 736 MiB; bounded, 31 (hello) and 55 MiB (telemetry) were measured.
        assert growth_mib < 96, f"ingest grew by {growth_mib:.0f} MiB"
        assert ingest.alive()
    finally:
        ingest.stop()
