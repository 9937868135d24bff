"""Helpers for data-plane tests: a licence, device publishers and an ingest process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotenant.licensing import keys as licence_keys, licence as licences
from iotenant.licensing.plans import load_catalogue
from iotenant.mosquitto.identities import API, INGEST, Identity, service_identities
from iotenant_testbed.loopback import free_port
from iotenant_testbed.mosquitto import MosquittoBroker
from real_services import resident_kib, scrape_metrics

CUSTOMER_ID = "acme-0001"
DEVICES = [f"dev-{n:03d}" for n in range(1, 41)]


def broker_identities() -> list[Identity]:
    """The service identities and 40 devices, each with its own password."""
    return service_identities("ingest-password", "api-password") + [
        Identity(device, f"{device}-password", label="fleet/test") for device in DEVICES
    ]


@dataclass
class LicenceFiles:
    licence_file: Path
    jwks_file: Path
    key: licence_keys.SigningKey


def write_licence(folder: Path, plan: str, key: licence_keys.SigningKey | None = None, **overrides: Any) -> LicenceFiles:
    key = key or licence_keys.SigningKey.generate()
    claims = load_catalogue()[plan].claims(CUSTOMER_ID, "test", 30 * 86400)
    if overrides:
        claims = licences._claims_from_payload({**claims.to_payload(), **overrides})
    folder.mkdir(parents=True, exist_ok=True)
    licence_file, jwks_file = folder / "licence.jwt", folder / "jwks.json"
    licence_file.write_text(licences.sign(claims, key))
    jwks_file.write_text(json.dumps(licence_keys.jwks([key.jwk])))
    return LicenceFiles(licence_file, jwks_file, key)


def telemetry(device_id: str, ts: float, seq: int, values: int = 2) -> bytes:
    return json.dumps(
        {
            "v": 2, "device_id": device_id, "ts": ts, "seq": seq, "msg_type": "telemetry",
            "measurements": [{"type": f"m{i}", "val": seq * 0.5 + i, "unit": "C"} for i in range(values)],
        }
    ).encode()


class Device:
    """One device's MQTT connection with its own credentials."""

    def __init__(self, port: int, device_id: str, password: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(device_id, password)
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError(f"{device_id} could not connect")
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, kind: str, payload: bytes, qos: int = 1) -> None:
        self.pending.append(self.client.publish(f"iot/{self.device_id}/{kind}", payload, qos=qos))

    def flush(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.pending:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"{self.device_id}: message {info.mid} not acknowledged by the broker")
        self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def launch(name: str, arguments: list[str], password: str, log: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    """Start ``iotenant <name>`` and wait until its /readyz answers 200."""
    env = dict(os.environ, IOTENANT_MQTT_PASSWORD=password)
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "iotenant", name, *arguments], env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1).status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{name} not ready after 30 s:\n{log.read_text()[-3000:]}")


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def service_arguments(database_url: str, broker_port: int, username: str, licence: LicenceFiles, metrics_port: int) -> list[str]:
    """The flags ingest and api share: database, broker identity, licence, metrics on loopback."""
    return ["--database-url", database_url, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker_port),
            "--mqtt-username", username, "--licence-file", str(licence.licence_file), "--jwks-file", str(licence.jwks_file),
            "--customer-id", CUSTOMER_ID, "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
            "--log-format", "text"]


@dataclass
class IngestProcess:
    database_url: str
    broker_port: int
    licence: LicenceFiles
    log: Path
    client_id: str = "ingest-test"
    share_group: str = "ingest"
    metrics_port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = launch(
            "ingest",
            [*service_arguments(self.database_url, self.broker_port, INGEST, self.licence, self.metrics_port),
             "--client-id", self.client_id, "--share-group", self.share_group, *self.extra],
            "ingest-password", self.log, self.metrics_port,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        terminate(self.process)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.metrics_port)

    def rss_kib(self) -> int:
        assert self.process is not None
        return resident_kib(self.process.pid)


@dataclass
class ApiProcess:
    database_url: str
    broker_port: int
    licence: LicenceFiles
    token_file: Path
    log: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = launch(
            "api",
            [*service_arguments(self.database_url, self.broker_port, API, self.licence, self.metrics_port),
             "--token-file", str(self.token_file), "--address", "127.0.0.1", "--port", str(self.port), *self.extra],
            "api-password", self.log, self.metrics_port,
        )

    def request(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def download(self, path: str, token: str) -> tuple[int, dict[str, str], bytes]:
        """A streamed answer, whole: status, headers and body."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def stop(self) -> None:
        terminate(self.process)


def readings(device_id: str, ts: float, seq: int, **values: float) -> bytes:
    """A telemetry message with the given measurement types and values."""
    return json.dumps({"v": 2, "device_id": device_id, "ts": ts, "seq": seq,
                       "measurements": [{"type": kind, "val": value} for kind, value in values.items()]}).encode()


TOKEN = "s3cret-token-for-tests"


@dataclass
class Stack:
    api: ApiProcess
    ingest: IngestProcess
    broker: MosquittoBroker
    database: str
    started: float


def start_stack(database: str, broker: MosquittoBroker, licence: LicenceFiles, folder: Path, extra: list[str] | None = None) -> Stack:
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    ingest = IngestProcess(database_url=database, broker_port=broker.port, licence=licence, log=folder / "ingest.log",
                           share_group=broker.share_group)
    ingest.start()
    try:
        return _fill_stack(database, broker, licence, folder, extra, ingest, token_file)
    except BaseException:
        ingest.stop()
        raise


def _fill_stack(database: str, broker: MosquittoBroker, licence: LicenceFiles, folder: Path, extra: list[str] | None,
                ingest: IngestProcess, token_file: Path) -> Stack:
    from conftest import wait_for  # conftest imports this module

    api = ApiProcess(database_url=database, broker_port=broker.port, licence=licence, token_file=token_file,
                     log=folder / "api.log", extra=extra or [])
    api.start()
    started = time.time() - 100
    device = Device(broker.port, "dev-001", "dev-001-password")
    for seq in range(150):
        device.publish("telemetry", telemetry("dev-001", started + seq, seq, values=2))
    device.publish("hello", json.dumps({"v": 2, "device_id": "dev-001", "fw": "1.2.3"}).encode())
    device.close()
    other = Device(broker.port, "dev-002", "dev-002-password")
    other.publish("telemetry", telemetry("dev-002", started, 0, values=1))
    other.close()
    wait_for(lambda: ingest.metrics()["iotenant_ingest_stored_total"] == 151, timeout=30, what="the fixture telemetry")
    return Stack(api=api, ingest=ingest, broker=broker, database=database, started=started)
