"""``iotenant simulate``: devices that publish v2 telemetry, hello and status with their own credentials.

Each device connects as itself (the credentials a DeviceFleet's Secret holds), sets a last will
(``status`` offline, retained), announces itself (``hello``, ``status`` online), then publishes
telemetry every interval with an increasing ``seq``: each sensor follows a slow wave with noise, so
threshold alerts fire and resolve as they would on a real site. A simulated reboot drops the
connection, resets ``seq`` to 0 and starts again. Commands on ``iot/<id>/command`` are acknowledged;
``start_ota`` is answered with progress on ``iot/<id>/ota/status`` (downloading in steps, verifying,
installing, then succeeded with the new version announced, or now and then failed). One thread
drives every device's socket: a schedule says which device is due next (telemetry, OTA progress, a
reconnection), so a pass costs what is due, not the size of the fleet, and ten thousand devices fit in
one process. A device that loses its connection reconnects as a careful device does: after a random
delay, and backing off while the broker refuses it, so a restarted broker is not met by every device at
the same instant.
"""

from __future__ import annotations

import argparse
import collections
import heapq
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
RETRY_SECONDS = 2.0  # the first retry after a refused or failed connection; doubled up to MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 60.0
RECONNECT_SPREAD_SECONDS = 5.0  # a dropped device reconnects after a random delay up to this
MISC_SECONDS = 1.0  # keepalive pings and timeouts are looked after this often
# Connections under way at once (TCP and CONNECT sent, CONNACK awaited): the rest wait their turn, so that a
# fleet starting or coming back does not overflow the broker's listen queue, where a refused SYN costs a
# connection a second or more of the kernel's retransmission.
MAX_CONNECTING = 64
CONNACK_SECONDS = 10.0  # a connection without an answer for this long is looked at again
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


class Simulator:
    def __init__(self, devices: list[SimulatedDevice], reboot_probability: float, messages: int) -> None:
        self.devices = devices
        for index, device in enumerate(devices):
            device.index = index
        self.reboot_probability = reboot_probability
        self.messages = messages
        self.sent = 0
        self.stopping = threading.Event()
        self.selector = selectors.DefaultSelector()
        self.schedule: list[tuple[float, int]] = []  # (when, device index); only a device's latest entry (planned_at) counts
        self.writing: set[int] = set()  # devices with bytes paho could not write at once
        self.to_connect: collections.deque[int] = collections.deque()  # devices due to connect, in turn
        self.connecting: set[int] = set()  # devices whose CONNACK is awaited

    def _connect(self, device: SimulatedDevice) -> None:
        self._drop(device)  # a connection the broker closed leaves its socket registered
        try:
            device.client.connect(device.credentials.host, device.credentials.port, keepalive=device.keepalive)
        except OSError as error:
            device.failures += 1
            log.warning("%s: cannot reach the broker: %s", device.credentials.device_id, error)
            return
        sock = device.client.socket()
        if sock is None:
            return
        device.registered = sock.fileno()
        try:
            stale = self.selector.get_key(device.registered)
        except KeyError:
            pass
        else:  # the number of another device's socket that paho closed and nobody unregistered yet
            self._drop(stale.data)
            stale.data.next_at = time.monotonic() + stale.data.retry_delay()
            self._plan(stale.data.index)
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

    def _plan(self, index: int) -> None:
        device = self.devices[index]
        device.planned_at = device.wake_at()
        heapq.heappush(self.schedule, (device.planned_at, index))

    def _look_after(self, index: int, now_mono: float) -> None:
        """After the device's socket was used: a new connection starts its telemetry, a lost one is retried
        later, unwritten bytes are written."""
        device = self.devices[index]
        if device.client.socket() is None:
            self.connecting.discard(index)
            self.writing.discard(index)
            if device.registered is not None:  # just lost: reconnect after a while, not at once
                self._drop(device)
                device.next_at = now_mono + device.retry_delay()
                self._plan(index)
            return
        if index in self.connecting and device.connected:  # first telemetry at a random point of the interval
            self.connecting.discard(index)
            device.next_at = now_mono + random.uniform(0, device.interval)
            self._plan(index)
        if device.client.want_write():
            self.writing.add(index)
        if device.wake_at() < device.planned_at:  # something new is due sooner (a command started an update)
            self._plan(index)

    def _start_connection(self, index: int, now_mono: float) -> None:
        device = self.devices[index]
        self._connect(device)
        if device.registered is None:
            device.next_at = now_mono + device.retry_delay()
        else:
            self.connecting.add(index)
            device.next_at = now_mono + CONNACK_SECONDS
        self._look_after(index, now_mono)
        self._plan(index)

    def _due(self, index: int, now_mono: float) -> None:
        """What the device has to do now: reconnect, publish OTA progress or telemetry."""
        device = self.devices[index]
        device.publish_due(now_mono)
        if device.client.socket() is None:
            if now_mono >= device.next_at:
                self.to_connect.append(index)  # its turn comes in run(); planned again from there
                return
        elif device.connected and now_mono >= device.next_at:
            if self.messages and self.sent >= self.messages * len(self.devices):
                device.next_at = math.inf
            elif self.reboot_probability and random.random() < self.reboot_probability:
                self.reboot(device)
                device.next_at = now_mono + device.interval
            else:
                device.publish_telemetry(time.time())
                self.sent += 1
                device.next_at = now_mono + device.interval
        elif now_mono >= device.next_at:  # no CONNACK yet: look again later (a keepalive timeout drops it)
            device.next_at = now_mono + CONNACK_SECONDS
        self._look_after(index, now_mono)
        self._plan(index)

    def _misc(self) -> None:
        """Keepalive pings and timeouts of every connected device."""
        for index, device in enumerate(self.devices):
            if device.client.socket() is not None:
                device.client.loop_misc()
                self._look_after(index, time.monotonic())

    def run(self) -> None:
        start = time.monotonic()
        for index, device in enumerate(self.devices):
            device.next_at = start
            self.to_connect.append(index)
        next_misc = start + MISC_SECONDS
        while not self.stopping.is_set():
            now_mono = time.monotonic()
            idle = 0.05 if not self.to_connect or len(self.connecting) >= MAX_CONNECTING else 0.0
            timeout = min(idle, max(0.0, self.schedule[0][0] - now_mono)) if self.schedule else idle
            for key, _ in self.selector.select(timeout=timeout):
                device = key.data
                device.client.loop_read()
                self._look_after(device.index, time.monotonic())
            now_mono = time.monotonic()
            while self.schedule and self.schedule[0][0] <= now_mono:
                when, index = heapq.heappop(self.schedule)
                if when == self.devices[index].planned_at:
                    self._due(index, now_mono)
            while self.to_connect and len(self.connecting) < MAX_CONNECTING:
                self._start_connection(self.to_connect.popleft(), now_mono)
            for index in list(self.writing):
                self.devices[index].client.loop_write()
                self._look_after(index, now_mono)
                if not self.devices[index].client.want_write():
                    self.writing.discard(index)
            if now_mono >= next_misc:
                self._misc()
                next_misc = now_mono + MISC_SECONDS
            if self.messages and self.sent >= self.messages * len(self.devices) and not self.writing:
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
