"""``iotenant simulate``: devices that publish v2 telemetry, hello and status with their own credentials.

Each device connects as itself (the credentials a DeviceFleet's Secret holds), sets a last will
(``status`` offline, retained), announces itself (``hello``, ``status`` online), then publishes
telemetry every interval with an increasing ``seq``: each sensor follows a slow wave with noise, so
threshold alerts fire and resolve as they would on a real site. A simulated reboot drops the
connection, resets ``seq`` to 0 and starts again. Commands on ``iot/<id>/command`` are acknowledged;
``start_ota`` is answered with progress on ``iot/<id>/ota/status`` (downloading in steps, verifying,
installing, then succeeded with the new version announced, or now and then failed). One thread
drives every device's socket.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import selectors
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Counter, Gauge

from iotenant import logs, topics
from iotenant.broker.identities import DeviceCredentials
from iotenant.environment_flags import flag
from iotenant_workloads import service_endpoints

log = logging.getLogger("iotenant.simulate")

PUBLISHED = Counter("iotenant_simulator_published_total", "Messages published", ["kind"])
REBOOTS = Counter("iotenant_simulator_reboots_total", "Simulated device reboots")
CONNECTED = Gauge("iotenant_simulator_connected_devices", "Devices connected to the broker")
REFUSED = Counter("iotenant_simulator_refused_total", "Connections the broker refused")
RETRY_SECONDS = 2.0
COMMANDS = Counter("iotenant_simulator_commands_total", "Commands received", ["name"])


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
    registered: object | None = None  # the socket the selector watches for this device
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
        if getattr(reason, "is_failure", False):  # not (yet) admitted, say: try again a little later
            REFUSED.inc()
            log.warning("%s: connection refused: %s; retrying in %.0f s", self.credentials.device_id, reason, RETRY_SECONDS)
            self.next_at = time.monotonic() + RETRY_SECONDS
            return
        self.connected = True
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


class Simulator:
    def __init__(self, devices: list[SimulatedDevice], reboot_probability: float, messages: int) -> None:
        self.devices = devices
        self.reboot_probability = reboot_probability
        self.messages = messages
        self.stopping = threading.Event()
        self.selector = selectors.DefaultSelector()

    def _connect(self, device: SimulatedDevice) -> None:
        self._drop(device)  # a connection the broker closed leaves its socket registered
        try:
            device.client.connect(device.credentials.host, device.credentials.port, keepalive=device.keepalive)
        except OSError as error:
            log.warning("%s: cannot reach the broker: %s", device.credentials.device_id, error)
            device.next_at = time.monotonic() + RETRY_SECONDS
            return
        device.registered = device.client.socket()
        self.selector.register(device.registered, selectors.EVENT_READ, device)

    def _drop(self, device: SimulatedDevice) -> None:
        if device.registered is not None:
            try:
                self.selector.unregister(device.registered)
            except (KeyError, ValueError):
                pass
            device.registered = None

    def reboot(self, device: SimulatedDevice) -> None:
        """Power cycle: the connection dies without a goodbye (the broker sends the last will), seq restarts."""
        self._drop(device)
        sock = device.client.socket()
        if sock is not None:
            sock.close()
        device._on_disconnect(device.client, None, None, None, None)
        REBOOTS.inc()
        device.seq = 0
        device.boot_ts = time.time()
        device.client = device._new_client()
        self._connect(device)

    def run(self) -> None:
        start = time.monotonic()
        for index, device in enumerate(self.devices):
            device.next_at = start + device.interval * index / max(1, len(self.devices))
            self._connect(device)
        sent = 0
        while not self.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                key.data.client.loop_read()
            now_mono, now = time.monotonic(), time.time()
            for device in self.devices:
                client = device.client
                if client.socket() is None:
                    if now_mono >= device.next_at:
                        self._connect(device)
                    continue
                if device.connected:
                    device.publish_due(now_mono)
                if device.connected and now_mono >= device.next_at:
                    if self.messages and sent >= self.messages * len(self.devices):
                        continue
                    if self.reboot_probability and random.random() < self.reboot_probability:
                        self.reboot(device)
                        continue
                    device.publish_telemetry(now)
                    sent += 1
                    device.next_at = now_mono + device.interval
                if client.want_write():
                    client.loop_write()
                client.loop_misc()
            if self.messages and sent >= self.messages * len(self.devices) and all(
                not d.client.want_write() for d in self.devices
            ):
                break
        for device in self.devices:
            device.client.disconnect()
            if device.client.want_write():
                device.client.loop_write()


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    credentials = read_credentials(Path(args.credentials_dir), args.mqtt_host_override, args.mqtt_port_override,
                                   args.mqtt_scheme_override)
    if not credentials:
        log.error("no device credentials in %s", args.credentials_dir)
        return 2
    devices = [SimulatedDevice(c, args.interval, args.measurements, args.keepalive, wave_seconds=args.wave_seconds,
                               ota_failure_probability=args.ota_failure_probability, tls_ca_file=args.tls_ca_file) for c in credentials]
    simulator = Simulator(devices, args.reboot_probability, args.messages)
    service_endpoints.serve(args.metrics_address, args.metrics_port, lambda: (True, "ok"))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: simulator.stopping.set())
    log.info("simulating %d devices every %.1f s", len(devices), args.interval)
    simulator.run()
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("simulate", help="play a fleet's devices with their credentials", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(parser, "--credentials-dir", "IOTENANT_CREDENTIALS_DIR", "folder with one credentials file per device id",
         default="/etc/iotenant/devices")
    flag(parser, "--mqtt-host-override", "IOTENANT_MQTT_HOST", "broker host instead of the one in the credentials")
    flag(parser, "--mqtt-port-override", "IOTENANT_MQTT_PORT", "broker port instead of the one in the credentials", kind=int)
    flag(parser, "--mqtt-scheme-override", "IOTENANT_MQTT_SCHEME", "mqtt or mqtts instead of the credentials' scheme",
         choices=["mqtt", "mqtts"])
    flag(parser, "--tls-ca-file", "IOTENANT_MQTT_TLS_CA_FILE", "CA certificate to trust for mqtts:// (default: the system's)")
    flag(parser, "--interval", "IOTENANT_TELEMETRY_INTERVAL_SECONDS", "seconds between two telemetry messages of a device",
         kind=float, default=10.0)
    flag(parser, "--measurements", "IOTENANT_MEASUREMENTS", "measurements per message", kind=int, default=3)
    flag(parser, "--reboot-probability", "IOTENANT_REBOOT_PROBABILITY", "chance per message that the device reboots first",
         kind=float, default=0.0)
    flag(parser, "--wave-seconds", "IOTENANT_WAVE_SECONDS", "period of each sensor's wave (alerts fire and resolve with it)",
         kind=float, default=120.0)
    flag(parser, "--ota-failure-probability", "IOTENANT_OTA_FAILURE_PROBABILITY", "chance that an OTA update fails part-way",
         kind=float, default=0.1)
    flag(parser, "--messages", "IOTENANT_MESSAGES", "telemetry messages per device, then stop (0: until stopped)", kind=int, default=0)
    flag(parser, "--keepalive", "IOTENANT_KEEPALIVE_SECONDS", "MQTT keepalive (the last will fires after 1.5 times this)",
         kind=int, default=30)
    flag(parser, "--metrics-address", "IOTENANT_METRICS_ADDRESS", "address of /healthz, /readyz, /metrics", default="0.0.0.0")
    flag(parser, "--metrics-port", "IOTENANT_METRICS_PORT", "port of /healthz, /readyz, /metrics", kind=int, default=9100)
    logs.add_flags(parser)
    parser.set_defaults(run=_run)
