"""``iotenant ingest``: MQTT to PostgreSQL that loses nothing and stores nothing twice.

- A shared subscription (``$share/<group>/iot/+/<kind>``) splits the load between replicas.
- MQTT 5, QoS 1, a persistent session (clean start off, session expiry) and manual acknowledgement:
  a message is acknowledged only after the transaction holding it has committed, so a crash or a
  database outage loses nothing; the broker redelivers what was not acknowledged.
- Duplicates are removed by the durable key (device, message ts, seq), never by memory.
- Memory is bounded: the broker sends at most ``--inflight`` unacknowledged messages (MQTT 5
  Receive Maximum); while the database is down nothing is acknowledged, so nothing more arrives.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter, Gauge, Histogram

from iotenant import logs
from iotenant.environment_flags import flag
from iotenant_workloads import database, datagram, service_endpoints
from iotenant_workloads.mounted_licence import MountedLicence
from iotenant_workloads.telemetry_store import Batch, RefusedMessage, write_batch

log = logging.getLogger("iotenant.ingest")

RECEIVED = Counter("iotenant_ingest_received_total", "MQTT messages received", ["kind"])
STORED = Counter("iotenant_ingest_stored_total", "Telemetry messages stored (new)")
MEASUREMENTS = Counter("iotenant_ingest_measurements_stored_total", "Measurement rows stored")
DUPLICATES = Counter("iotenant_ingest_duplicate_total", "Telemetry messages already stored (redeliveries)")
REJECTED = Counter("iotenant_ingest_rejected_total", "Messages refused, by reason", ["reason"])
BATCH_SIZE = Histogram("iotenant_ingest_batch_size", "Messages per committed batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
COMMIT_SECONDS = Histogram("iotenant_ingest_commit_seconds", "Time to write and commit one batch",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
LAG_SECONDS = Histogram("iotenant_ingest_lag_seconds", "From the message's timestamp to its commit",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
DATABASE_UP = Gauge("iotenant_ingest_database_up", "1 when the last database operation succeeded")
BROKER_UP = Gauge("iotenant_ingest_broker_up", "1 while connected to the broker")
INFLIGHT = Gauge("iotenant_ingest_inflight_messages", "Messages received and not yet acknowledged")

KINDS = ("telemetry", "hello", "status", "command/ack")


@dataclass(frozen=True)
class IngestSettings:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    mqtt_username: str
    mqtt_password: str
    client_id: str
    share_group: str
    inflight: int
    batch_size: int
    batch_seconds: float
    licence_file: Path
    jwks_file: Path
    customer_id: str | None
    replicas: int
    metrics_address: str
    metrics_port: int


@dataclass
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received: datetime


class TokenBucket:
    """A tenant-wide messages-per-second limit, shared out between replicas."""

    def __init__(self, rate: float) -> None:
        self.rate = max(rate, 0.001)
        self.tokens = self.rate
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Ingest:
    def __init__(self, settings: IngestSettings, licence: MountedLicence) -> None:
        self.settings = settings
        self.licence = licence
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.database_ok = False
        self.known_devices: set[str] = set()
        self.bucket: TokenBucket | None = None
        self.client = self._mqtt_client()
        self._last_maintenance = 0.0

    # ---------------------------------------------------------------- MQTT

    def _mqtt_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.settings.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        client.max_inflight_messages_set(self.settings.inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        group = self.settings.share_group
        client.subscribe([(f"$share/{group}/iot/+/{kind}", 1) for kind in KINDS])
        self.connected.set()
        BROKER_UP.set(1)
        log.info("connected to the broker as %s (shared group %s)", self.settings.client_id, group)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object) -> None:
        self.connected.clear()
        BROKER_UP.set(0)
        if not self.stopping.is_set():
            log.warning("disconnected from the broker: %s; reconnecting", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        self.inbox.put(Incoming(message.topic, bytes(message.payload), message.mid, message.qos, datetime.now(timezone.utc)))
        INFLIGHT.inc()

    # ---------------------------------------------------------------- batches

    def _classify(self, batch: Batch, item: Incoming, window: tuple[datetime, datetime]) -> None:
        claims = self.licence.current
        try:
            device_id, kind = datagram.topic_parts(item.topic)
            RECEIVED.labels(kind).inc()
            if claims is None:
                raise datagram.Rejected("licence_invalid", self.licence.problem[:200])
            if device_id not in self.known_devices:
                if len(self.known_devices) >= claims.claims.limits.maxDevices:
                    raise datagram.Rejected(datagram.DEVICE_LIMIT, f"licence allows {claims.claims.limits.maxDevices} devices")
            if kind == "telemetry":
                telemetry = datagram.parse_telemetry(device_id, item.payload)
                if not window[0] <= telemetry.ts < window[1]:
                    raise datagram.Rejected(datagram.TIMESTAMP_OUT_OF_RANGE, telemetry.ts.isoformat())
                if self.bucket is not None and not self.bucket.take():
                    raise datagram.Rejected(datagram.RATE_LIMITED, f"over {claims.claims.limits.maxMessagesPerSecond} msg/s")
                batch.telemetry.append(telemetry)
            else:
                batch.events.append(datagram.parse_event(device_id, kind, item.payload, item.received))
            self.known_devices.add(device_id)
        except datagram.Rejected as refused:
            if refused.reason == datagram.BAD_TOPIC:
                RECEIVED.labels("unknown").inc()
            batch.refused.append(RefusedMessage(item.topic, refused.reason, refused.detail, item.payload))

    def _collect(self) -> list[Incoming]:
        try:
            first = self.inbox.get(timeout=0.5)
        except queue.Empty:
            return []
        items = [first]
        deadline = time.monotonic() + self.settings.batch_seconds
        while len(items) < self.settings.batch_size:
            remaining = deadline - time.monotonic()
            try:
                items.append(self.inbox.get(timeout=max(0.0, remaining)) if remaining > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return items

    def _connect_database(self) -> psycopg.Connection:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                connection = psycopg.connect(self.settings.database_url, connect_timeout=5)
                DATABASE_UP.set(1)
                self.database_ok = True
                return connection
            except psycopg.OperationalError as error:
                DATABASE_UP.set(0)
                self.database_ok = False
                log.warning("database unavailable (%s); retrying in %.1f s", str(error).strip().splitlines()[0], delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
        raise SystemExit(0)

    def _maintain(self, connection: psycopg.Connection, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_maintenance < 3600:
            return
        claims = self.licence.current
        retention = claims.claims.limits.retentionDays if claims else 1
        database.ensure_partitions(connection, retention)
        dropped = database.apply_retention(connection, retention)
        if dropped:
            log.info("retention (%d days) dropped partitions %s", retention, ", ".join(dropped))
        self._last_maintenance = time.monotonic()

    def _apply_licence(self) -> None:
        claims = self.licence.refresh()
        if claims is None:
            self.bucket = None
            return
        rate = claims.claims.limits.maxMessagesPerSecond / max(1, self.settings.replicas)
        if self.bucket is None or self.bucket.rate != rate:
            self.bucket = TokenBucket(rate)

    def ready(self) -> tuple[bool, str]:
        if self.licence.current is None:
            return False, f"no valid licence: {self.licence.problem}"
        if not self.database_ok:
            return False, "database unavailable"
        if not self.connected.is_set():
            return False, "not connected to the broker"
        return True, "ok"

    def run(self) -> None:
        connection = self._connect_database()
        database.migrate(connection)
        self._apply_licence()
        self._maintain(connection, force=True)
        self.known_devices = {row[0] for row in connection.execute("SELECT device_id FROM devices")}
        connection.commit()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 86400
        properties.ReceiveMaximum = self.settings.inflight
        self.client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30, clean_start=False, properties=properties)
        self.client.loop_start()
        last_licence_check = time.monotonic()
        try:
            while not self.stopping.is_set():
                if time.monotonic() - last_licence_check > 5:
                    self._apply_licence()
                    last_licence_check = time.monotonic()
                items = self._collect()
                if not items:
                    continue
                received = items[-1].received
                window = database.retention_window(self.licence.current.claims.limits.retentionDays if self.licence.current else 1)
                batch = Batch(received=received)
                for item in items:
                    self._classify(batch, item, window)
                connection = self._commit(connection, batch, items)
                self._maintain(connection)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            connection.close()

    def _commit(self, connection: psycopg.Connection, batch: Batch, items: list[Incoming]) -> psycopg.Connection:
        """Write until it commits (or we are stopping), then acknowledge every message of the batch in order."""
        while True:
            started = time.monotonic()
            try:
                outcome = write_batch(connection, batch)
                break
            except psycopg.OperationalError as error:
                DATABASE_UP.set(0)
                self.database_ok = False
                log.warning("batch of %d not committed (%s); it will be retried", len(items), str(error).strip().splitlines()[0])
                try:
                    connection.close()
                finally:
                    connection = self._connect_database()
        committed = datetime.now(timezone.utc)
        DATABASE_UP.set(1)
        self.database_ok = True
        COMMIT_SECONDS.observe(time.monotonic() - started)
        BATCH_SIZE.observe(len(items))
        STORED.inc(outcome.stored_messages)
        MEASUREMENTS.inc(outcome.stored_measurements)
        DUPLICATES.inc(outcome.duplicates)
        for reason, count in outcome.refused.items():
            REJECTED.labels(reason).inc(count)
        for message in batch.telemetry:
            LAG_SECONDS.observe(max(0.0, (committed - message.ts).total_seconds()))
        for item in items:
            if item.qos > 0:
                self.client.ack(item.mid, item.qos)
        INFLIGHT.dec(len(items))
        return connection


def _settings(args: argparse.Namespace) -> IngestSettings:
    password = Path(args.mqtt_password_file).read_text().strip() if args.mqtt_password_file else (args.mqtt_password or "")
    return IngestSettings(
        database_url=args.database_url,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        mqtt_username=args.mqtt_username,
        mqtt_password=password,
        client_id=args.client_id,
        share_group=args.share_group,
        inflight=args.inflight,
        batch_size=args.batch_size,
        batch_seconds=args.batch_seconds,
        licence_file=Path(args.licence_file),
        jwks_file=Path(args.jwks_file),
        customer_id=args.customer_id,
        replicas=args.replicas,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
    )


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    settings = _settings(args)
    licence = MountedLicence(settings.licence_file, settings.jwks_file, settings.customer_id)
    try:
        verified = licence.load()
    except Exception as error:  # fail closed: no valid licence, no service
        log.error("refusing to start without a valid licence: %s", error)
        return 2
    log.info("licence %s: plan %s, %d devices, %d msg/s", verified.claims.jti, verified.claims.plan,
             verified.claims.limits.maxDevices, verified.claims.limits.maxMessagesPerSecond)
    service = Ingest(settings, licence)
    service_endpoints.serve(settings.metrics_address, settings.metrics_port, service.ready)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stopping.set())
    service.run()
    return 0


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every data-plane service shares: broker, licence, endpoints and logs."""
    flag(parser, "--mqtt-host", "IOTENANT_MQTT_HOST", "broker host", default="127.0.0.1")
    flag(parser, "--mqtt-port", "IOTENANT_MQTT_PORT", "broker port", kind=int, default=1883)
    flag(parser, "--mqtt-username", "IOTENANT_MQTT_USERNAME", "broker username of this service", default="")
    flag(parser, "--mqtt-password", "IOTENANT_MQTT_PASSWORD", "broker password (prefer --mqtt-password-file)", default="")
    flag(parser, "--mqtt-password-file", "IOTENANT_MQTT_PASSWORD_FILE", "file holding the broker password", default="")
    flag(parser, "--licence-file", "IOTENANT_LICENCE_FILE", "the mounted licence JWT", default="/etc/iotenant/licence/licence.jwt")
    flag(parser, "--jwks-file", "IOTENANT_JWKS_FILE", "the mounted JWKS that verifies it", default="/etc/iotenant/keys/jwks.json")
    flag(parser, "--customer-id", "IOTENANT_CUSTOMER_ID", "the licence subject to require")
    flag(parser, "--metrics-address", "IOTENANT_METRICS_ADDRESS", "address of /healthz, /readyz, /metrics", default="0.0.0.0")
    flag(parser, "--metrics-port", "IOTENANT_METRICS_PORT", "port of /healthz, /readyz, /metrics", kind=int, default=9100)
    flag(parser, "--log-level", "IOTENANT_LOG_LEVEL", "log level", default="info", choices=["debug", "info", "warning", "error"])
    flag(parser, "--log-format", "IOTENANT_LOG_FORMAT", "log format", default="json", choices=["json", "text"])


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    import socket

    parser = commands.add_parser("ingest", help="store device messages from the broker in PostgreSQL",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(parser, "--database-url", "IOTENANT_DATABASE_URL", "PostgreSQL connection URL", required=True)
    add_common_flags(parser)
    flag(parser, "--client-id", "IOTENANT_CLIENT_ID", "MQTT client id: stable per replica (its persistent session)",
         default=f"ingest-{socket.gethostname()}")
    flag(parser, "--share-group", "IOTENANT_SHARE_GROUP", "shared subscription group", default="ingest")
    flag(parser, "--inflight", "IOTENANT_INFLIGHT", "unacknowledged messages the broker may send (memory bound)", kind=int, default=2000)
    flag(parser, "--batch-size", "IOTENANT_BATCH_SIZE", "most messages per transaction", kind=int, default=1000)
    flag(parser, "--batch-seconds", "IOTENANT_BATCH_SECONDS", "longest wait to fill a batch", kind=float, default=0.05)
    flag(parser, "--replicas", "IOTENANT_INGEST_REPLICAS", "ingest replicas sharing the licence's rate limit", kind=int, default=1)
    parser.set_defaults(run=_run)
