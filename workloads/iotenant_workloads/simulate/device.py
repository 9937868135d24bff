"""One simulated device: its credentials, its MQTT client, what it publishes and how it answers.

It connects as itself (the credentials a DeviceFleet's Secret holds), sets a last will (``status``
offline, retained), announces itself (``hello``, ``status`` online), publishes telemetry with an
increasing ``seq`` (each sensor a slow wave with noise), acknowledges commands and plays OTA updates.
When it lost its connection it waits a random while, and backs off while the broker refuses it
(``retry_delay``); ``iotenant_workloads.simulate.simulator`` drives every device's socket.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Counter, Gauge

from iotenant.mosquitto.identities import DeviceCredentials
from iotenant.vocabulary import topics

log = logging.getLogger("iotenant.simulate")

PUBLISHED = Counter("iotenant_simulator_published_total", "Messages published", ["kind"])
CONNECTED = Gauge("iotenant_simulator_connected_devices", "Devices connected to the broker")
REFUSED = Counter("iotenant_simulator_refused_total", "Connections the broker refused")
COMMANDS = Counter("iotenant_simulator_commands_total", "Commands received", ["name"])
RETRY_SECONDS = 2.0  # the first retry after a refused or failed connection; doubled up to MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 60.0
RECONNECT_SPREAD_SECONDS = 5.0  # a dropped device reconnects after a random delay up to this


def read_credentials(folder: Path, host: str | None, port: int | None, scheme: str | None = None) -> list[DeviceCredentials]:
    """One file per device id (a mounted DeviceFleet credentials Secret), each an mqtt:// or mqtts:// URL;
    the overrides point the simulator at another listener of the same broker (the internal one)."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        credentials = DeviceCredentials.from_url(path.read_text())
        if credentials.device_id != path.name:
            raise ValueError(f"{path}: the credentials are for {credentials.device_id!r}, not {path.name!r}")
        found.append(replace(credentials, host=host or credentials.host, port=port or credentials.port,
                             scheme=scheme or credentials.scheme))
    return found


@dataclass
class SimulatedDevice:
    credentials: DeviceCredentials
    interval: float
    measurements: int
    keepalive: int
    seq: int = 0
    boot_ts: float = field(default_factory=time.time)
    next_at: float = 0.0
    connected: bool = False
    connection_ts: float = 0.0
    wave_seconds: float = 120.0
    ota_failure_probability: float = 0.1
    firmware: str = "sim-1"
    # Messages due later (OTA progress): (monotonic time, topic kind, payload), kept in time order.
    scheduled: list[tuple[float, str, dict[str, object]]] = field(default_factory=list)
    phase: float = field(default_factory=lambda: random.uniform(0, 2 * math.pi))
    # The file descriptor the selector watches for this device: a number, not the socket, since paho may
    # close the socket first (then it has no number to unregister by, and another device's new socket
    # gets the same one).
    registered: int | None = None
    failures: int = 0  # connection attempts in a row that failed or were refused
    index: int = 0  # its place in the simulator's list
    planned_at: float = math.inf  # its latest entry in the simulator's schedule (earlier entries are stale)
    tls_ca_file: str | None = None  # for mqtts:// credentials: the CA to trust (None: the system's)
    client: mqtt.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = self._new_client()

    def _topic(self, kind: str) -> str:
        return topics.device_topic(self.credentials.device_id, kind)

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.credentials.client_id, protocol=mqtt.MQTTv311)
        client.username_pw_set(self.credentials.username, self.credentials.password)
        if self.credentials.tls:
            client.tls_set(ca_certs=self.tls_ca_file)
        # "online" and the will both carry the time of the connection they belong to: the will wins over
        # its own connection's "online" (it comes later), and a later connection's "online" wins over it.
        self.connection_ts = time.time()
        offline = {"v": 2, "device_id": self.credentials.device_id, "state": "offline", "ts": self.connection_ts}
        client.will_set(self._topic("status"), json.dumps(offline), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):  # not (yet) admitted, say: try again later (the broker closes)
            REFUSED.inc()
            self.failures += 1
            log.warning("%s: connection refused: %s (%d in a row); retrying, backing off", self.credentials.device_id, reason, self.failures)
            return
        self.connected, self.failures = True, 0
        CONNECTED.inc()
        now = time.time()
        client.subscribe(self._topic(topics.COMMAND), qos=1)
        self._hello(now)
        status = {"v": 2, "device_id": self.credentials.device_id, "ts": self.connection_ts, "state": "online"}
        client.publish(self._topic(topics.STATUS), json.dumps(status), qos=1, retain=True)
        PUBLISHED.labels(topics.STATUS).inc()

    def _hello(self, now: float) -> None:
        hello = {"v": 2, "device_id": self.credentials.device_id, "ts": now, "boot_ts": self.boot_ts, "fw": self.firmware}
        self.client.publish(self._topic(topics.HELLO), json.dumps(hello), qos=1)
        PUBLISHED.labels(topics.HELLO).inc()

    def _publish(self, kind: str, document: dict[str, object]) -> None:
        self.client.publish(self._topic(kind), json.dumps({"v": 2, "device_id": self.credentials.device_id, **document}), qos=1)
        PUBLISHED.labels(kind).inc()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            command = json.loads(message.payload)
            cmd_id, name = command["cmd_id"], command["name"]
        except (ValueError, TypeError, KeyError):
            log.warning("%s: a command that is not one: %r", self.credentials.device_id, message.payload[:100])
            return
        COMMANDS.labels("start_ota" if name == topics.START_OTA else "other").inc()
        if name == topics.START_OTA and isinstance(command.get("args"), dict):
            self._start_update(cmd_id, str(command["args"].get("version", "")))
            self._publish(topics.COMMAND_ACK, {"cmd_id": cmd_id, "status": "accepted", "ts": time.time()})
        else:
            self._publish(topics.COMMAND_ACK, {"cmd_id": cmd_id, "status": "done", "ts": time.time(), "result": {"ok": True}})

    def _start_update(self, cmd_id: str, version: str) -> None:
        """Schedule an update's progress: about ten seconds of it, failing now and then."""
        steps: list[dict[str, object]] = [{"state": "downloading", "progress": p} for p in (0, 25, 50, 75, 100)]
        steps += [{"state": "verifying", "progress": 100}, {"state": "installing", "progress": 100}]
        if random.random() < self.ota_failure_probability:
            at = random.randrange(1, len(steps))
            error = "sha256 mismatch" if steps[at]["state"] == "verifying" else f"{steps[at]['state']} interrupted"
            steps = steps[:at] + [{"state": "failed", "progress": steps[at]["progress"], "error": error}]
        else:
            steps.append({"state": "succeeded", "progress": 100, "version": version})
        start = time.monotonic()
        self.scheduled += [(start + 1.2 * i, topics.OTA_STATUS, {"cmd_id": cmd_id, **step}) for i, step in enumerate(steps)]
        self.scheduled.sort(key=lambda entry: entry[0])

    def retry_delay(self) -> float:
        """Seconds until the next connection attempt: a random share of a delay that doubles with each failure."""
        if not self.failures:
            return random.uniform(0, RECONNECT_SPREAD_SECONDS)
        return random.uniform(0.5, 1.0) * min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** (self.failures - 1))

    def wake_at(self) -> float:
        """When this device has something to do next: telemetry or a reconnection, or OTA progress."""
        return min(self.next_at, self.scheduled[0][0]) if self.scheduled else self.next_at

    def publish_due(self, now_mono: float) -> None:
        while self.scheduled and self.scheduled[0][0] <= now_mono:
            _, kind, document = self.scheduled.pop(0)
            self._publish(kind, {**document, "ts": time.time()})
            if document.get("state") == "succeeded":
                self.firmware = str(document.get("version") or self.firmware)
                self._hello(time.time())

    def reading(self, sensor: int, now: float) -> float:
        """A slow wave per sensor (period ``wave_seconds``) between about 17 and 28, with noise."""
        angle = 2 * math.pi * now / self.wave_seconds + self.phase + sensor
        return round(22.5 + 5 * math.sin(angle) + random.gauss(0, 0.3), 3)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, _r: object, _p: object) -> None:
        if self.connected:
            CONNECTED.dec()
        self.connected = False

    def publish_telemetry(self, now: float) -> None:
        payload = {
            "v": 2, "device_id": self.credentials.device_id, "ts": now, "seq": self.seq, "msg_type": "telemetry",
            "measurements": [{"type": f"sensor{i}", "val": self.reading(i, now), "unit": "C"} for i in range(self.measurements)],
        }
        self.client.publish(self._topic(topics.TELEMETRY), json.dumps(payload), qos=1)
        self.seq = (self.seq + 1) % 2**32
        PUBLISHED.labels(topics.TELEMETRY).inc()
