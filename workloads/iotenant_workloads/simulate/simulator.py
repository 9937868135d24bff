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
import logging
import math
import random
import selectors
import signal
import threading
import time
from pathlib import Path

from prometheus_client import Counter

from iotenant import logs
from iotenant.environment_flags import flag
from iotenant_workloads import service_endpoints
from iotenant_workloads.simulate.device import SimulatedDevice, read_credentials

log = logging.getLogger("iotenant.simulate")

REBOOTS = Counter("iotenant_simulator_reboots_total", "Simulated device reboots")
MISC_SECONDS = 1.0  # keepalive pings and timeouts are looked after this often
# Connections under way at once (TCP and CONNECT sent, CONNACK awaited): the rest wait their turn, so that a
# fleet starting or coming back does not overflow the broker's listen queue, where a refused SYN costs a
# connection a second or more of the kernel's retransmission.
MAX_CONNECTING = 64
CONNACK_SECONDS = 10.0  # a connection without an answer for this long is looked at again


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
