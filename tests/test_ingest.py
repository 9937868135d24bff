"""`iotenant ingest` against Debian's Mosquitto (operator-generated configuration) and PostgreSQL."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import wait_for
from dataplane import Device, IngestProcess, LicenceFiles, telemetry, write_licence
from iotenant.broker_identities import API, INGEST, Identity
from real_services import MosquittoBroker, PostgresServer

DEVICES = [f"dev-{n:03d}" for n in range(1, 41)]


def identities() -> list[Identity]:
    return [Identity("ingest", "ingest-password", INGEST), Identity("api", "api-password", API)] + [
        Identity(device, f"{device}-password") for device in DEVICES
    ]


@pytest.fixture(scope="session")
def service_root() -> Iterator[Path]:
    """A folder the services' own users can reach (pytest's temporary folders are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="iotenant-services-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(service_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(root=service_root / "postgres")
    server.initialise()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker(service_root: Path) -> Iterator[MosquittoBroker]:
    server = MosquittoBroker(root=Path(tempfile.mkdtemp(prefix="broker-", dir=service_root)), admin_password="admin-password", identities=identities())
    server.write_configuration()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres.create_database(request.node.name.replace("[", "_").replace("]", "")[:60].lower())


@pytest.fixture
def enterprise_licence(tmp_path: Path) -> LicenceFiles:
    return write_licence(tmp_path / "licence", "enterprise")


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
