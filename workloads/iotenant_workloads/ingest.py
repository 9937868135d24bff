"""``iotenant ingest``: MQTT to PostgreSQL that loses nothing, stores nothing twice, and no device can stop.

- A shared subscription (``$share/<group>/iot/+/<kind>``) splits the load between replicas; the
  group name is the tenant's own secret, and devices may not join any share group (broker ACLs).
- Retained status (a device's "online" and its last will) reaches ingest whatever the order of
  start-up: since Mosquitto 2.0.13 a new shared subscription gets no retained messages, so ingest
  also subscribes to ``iot/+/status`` directly and keeps only the retained messages it delivers (the
  live ones arrive through the share group; storing a status twice changes nothing).
- MQTT 5, QoS 1, a persistent session (clean start off, session expiry) and manual acknowledgement:
  a message is acknowledged only after the transaction holding it has committed, so a crash or a
  database outage loses nothing; the broker redelivers what was not acknowledged.
- Every message is judged alone: whatever it holds, it is stored or refused (counted by reason and
  device, a bounded sample kept) and acknowledged; a message the database refuses is found by
  splitting its batch and refused alone, so no message is redelivered forever.
- Duplicates are removed by the durable key (device, message ts, seq), never by memory.
- Memory is bounded: the broker sends at most ``--inflight`` unacknowledged messages (MQTT 5
  Receive Maximum) and none larger than the datagram limit (MQTT 5 Maximum Packet Size).
- Alert rules (``features.alerts``) are judged after each batch is committed and acknowledged, by a
  thread of their own (``alert_evaluation``): a rule never slows or blocks storage.
- OTA progress (``iot/<id>/ota/status``) is stored as reports and as the state of the update it names.
- Limits from the verified licence: devices, the tenant's messages per second, and a device's own
  share of it. An expired licence serves through the operator's grace period; with no valid
  licence ingest disconnects and acknowledges nothing, so the broker keeps the messages.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter, Gauge, Histogram

from iotenant import logs, topics
from iotenant.environment_flags import flag
from iotenant_workloads import database, datagram, ota, service_endpoints
from iotenant_workloads.alert_evaluation import AlertEvaluator
from iotenant_workloads.mounted_licence import MountedLicence
from iotenant_workloads.rate_limits import KeyedBuckets, TokenBucket
from iotenant_workloads.refusals import RefusedMessage, Refusals
from iotenant_workloads.telemetry_store import Accepted, record_refusals, store
from iotenant_workloads.untrusted_json import Unacceptable

log = logging.getLogger("iotenant.ingest")
T = TypeVar("T")

RECEIVED = Counter("iotenant_ingest_received_total", "MQTT messages received", ["kind"])
STORED = Counter("iotenant_ingest_stored_total", "Telemetry messages stored (new)")
MEASUREMENTS = Counter("iotenant_ingest_measurements_stored_total", "Measurement rows stored")
DUPLICATES = Counter("iotenant_ingest_duplicate_total", "Telemetry messages already stored (redeliveries)")
BATCH_SIZE = Histogram("iotenant_ingest_batch_size", "Messages per committed batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
COMMIT_SECONDS = Histogram("iotenant_ingest_commit_seconds", "Time to write and commit one batch",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
LAG_SECONDS = Histogram("iotenant_ingest_lag_seconds", "From the message's timestamp to its commit",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
DATABASE_UP = Gauge("iotenant_ingest_database_up", "1 when the last database operation succeeded")
BROKER_UP = Gauge("iotenant_ingest_broker_up", "1 while connected to the broker")
INFLIGHT = Gauge("iotenant_ingest_inflight_messages", "Messages received and not yet acknowledged")
DEVICES_ONLINE = Gauge("iotenant_ingest_devices_online", "Devices whose last status says online")
LICENCE_STATE = Gauge("iotenant_ingest_licence_state", "1: valid, 0.5: expired within the grace period, 0: none (paused)")

# A device may use at most this share of the tenant's messages per second (at least one per second),
# in bursts of a few seconds' worth (a device catching up after a lost connection).
DEVICE_SHARE_OF_RATE = 0.1
DEVICE_BURST_SECONDS = 2.0
# Samples of refused messages are pruned to their byte budget after about this many bytes were added.
PRUNE_AFTER_SAMPLE_BYTES = 1024 * 1024
LICENCE_CHECK_SECONDS = 5.0
DEVICES_ONLINE_SECONDS = 15.0
# MQTT 5 subscription identifiers: which of ingest's subscriptions delivered a message.
SHARED_SUBSCRIPTION, RETAINED_STATUS_SUBSCRIPTION = 1, 2
PAUSED_POLL_SECONDS = 1.0


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
    licence_grace_seconds: int
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


class Ingest:
    def __init__(self, settings: IngestSettings, licence: MountedLicence) -> None:
        self.settings = settings
        self.licence = licence
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.paused = False
        self.database_ok = False
        self.known_devices: set[str] = set()
        self.bucket: TokenBucket | None = None
        self.device_buckets: KeyedBuckets | None = None
        self.refusals = Refusals()
        self.alerts = AlertEvaluator(settings.database_url, self._alerts_licensed, self.stopping)
        self.client = self._mqtt_client()
        self._last_maintenance = 0.0
        self._devices_counted = 0.0
        self._sample_bytes_since_prune = 0

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

    def _connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 86400
        properties.ReceiveMaximum = self.settings.inflight
        properties.MaximumPacketSize = topics.MAX_PACKET_BYTES
        self.client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30, clean_start=False,
                                  properties=properties)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        group = self.settings.share_group
        shared = Properties(PacketTypes.SUBSCRIBE)
        shared.SubscriptionIdentifier = SHARED_SUBSCRIPTION
        client.subscribe([(f"$share/{group}/{topics.all_devices_filter(kind)}", SubscribeOptions(qos=1)) for kind in topics.INGESTED],
                         properties=shared)
        retained = Properties(PacketTypes.SUBSCRIBE)
        retained.SubscriptionIdentifier = RETAINED_STATUS_SUBSCRIPTION
        client.subscribe([(topics.all_devices_filter(topics.STATUS), SubscribeOptions(qos=1))], properties=retained)
        self.connected.set()
        BROKER_UP.set(1)
        log.info("connected to the broker as %s", self.settings.client_id)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object) -> None:
        self.connected.clear()
        BROKER_UP.set(0)
        if not self.stopping.is_set() and not self.paused:
            log.warning("disconnected from the broker: %s; reconnecting", reason)

    def _on_message(self, client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        delivered_by = getattr(message.properties, "SubscriptionIdentifier", None) or []
        if SHARED_SUBSCRIPTION not in delivered_by and not message.retain:
            # A live status through the direct subscription: its copy comes through the share group.
            if message.qos > 0:
                client.ack(message.mid, message.qos)
            return
        self.inbox.put(Incoming(message.topic, bytes(message.payload), message.mid, message.qos, datetime.now(timezone.utc)))
        INFLIGHT.inc()

    # ---------------------------------------------------------------- licence

    def _apply_licence(self) -> None:
        verified = self.licence.refresh()
        LICENCE_STATE.set(0 if verified is None else 0.5 if self.licence.in_grace() else 1)
        if verified is None:
            self.bucket = self.device_buckets = None
            return
        limits = verified.claims.limits
        rate = limits.maxMessagesPerSecond / max(1, self.settings.replicas)
        if self.bucket is None or self.bucket.rate != rate:
            self.bucket = TokenBucket(rate)
            self.device_buckets = KeyedBuckets(max(1.0, rate * DEVICE_SHARE_OF_RATE), limits.maxDevices, DEVICE_BURST_SECONDS)

    def _alerts_licensed(self) -> bool:
        verified = self.licence.current
        return verified is not None and verified.claims.features.alerts

    def _pause(self) -> None:
        """No valid licence: leave the broker (it keeps the persistent session and its messages) and
        forget what was received and not acknowledged (the broker sends it again)."""
        if self.paused:
            return
        self.paused = True
        log.error("no valid licence (%s): consuming stops, nothing is acknowledged", self.licence.problem)
        self.client.disconnect()
        self.client.loop_stop()
        dropped = 0
        while True:
            try:
                self.inbox.get_nowait()
                dropped += 1
            except queue.Empty:
                break
        INFLIGHT.dec(dropped)

    def _resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        log.info("a valid licence is in force again: consuming resumes")
        self._connect()

    # ---------------------------------------------------------------- judging

    def _judge(self, item: Incoming, window: tuple[datetime, datetime], accepted: list[Accepted], refused: list[RefusedMessage]) -> None:
        """Accept or refuse one message; whatever it holds, nothing escapes."""
        device_id = ""
        try:
            device_id, kind = datagram.topic_parts(item.topic)
            RECEIVED.labels(kind).inc()
            claims = self.licence.current
            if claims is None:  # the licence went while this batch was collected: the next batch pauses
                raise Unacceptable(datagram.UNEXPECTED, "no valid licence")
            limits = claims.claims.limits
            if device_id not in self.known_devices and len(self.known_devices) >= limits.maxDevices:
                raise Unacceptable(datagram.DEVICE_LIMIT, f"licence allows {limits.maxDevices} devices")
            message: datagram.Telemetry | datagram.DeviceEvent | ota.Report
            if kind == topics.TELEMETRY:
                message = datagram.parse_telemetry(device_id, item.payload)
                if not window[0] <= message.ts < window[1]:
                    raise Unacceptable(datagram.TIMESTAMP_OUT_OF_RANGE, message.ts.isoformat())
                if self.device_buckets is not None and not self.device_buckets.take(device_id):
                    raise Unacceptable(datagram.DEVICE_RATE_LIMITED, f"over this device's {self.device_buckets.rate:g} msg/s")
                if self.bucket is not None and not self.bucket.take():
                    raise Unacceptable(datagram.RATE_LIMITED, f"over {limits.maxMessagesPerSecond} msg/s")
            elif kind == topics.OTA_STATUS:  # each report is a row: the device's own rate bounds them
                message = ota.parse_report(device_id, item.payload, item.received)
                if self.device_buckets is not None and not self.device_buckets.take(device_id):
                    raise Unacceptable(datagram.DEVICE_RATE_LIMITED, f"over this device's {self.device_buckets.rate:g} msg/s")
            else:
                message = datagram.parse_event(device_id, kind, item.payload, item.received)
            self.known_devices.add(device_id)
            accepted.append(Accepted(item.topic, item.payload, message))
        except Unacceptable as refusal:
            if refusal.reason == datagram.BAD_TOPIC:
                RECEIVED.labels("unknown").inc()
            refused.append(self.refusals.refuse(item.topic, device_id, refusal.reason, refusal.detail, item.payload))
        except Exception as error:  # a defect in judging must cost one message, never the service
            log.exception("unexpected error judging a message on %s", item.topic[:200])
            refused.append(self.refusals.refuse(item.topic, device_id, datagram.UNEXPECTED, type(error).__name__, item.payload))

    # ---------------------------------------------------------------- batches

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

    def _count_devices_online(self, connection: psycopg.Connection) -> None:
        if time.monotonic() - self._devices_counted < DEVICES_ONLINE_SECONDS:
            return
        self._devices_counted = time.monotonic()
        try:
            with connection.transaction():
                DEVICES_ONLINE.set(connection.execute("SELECT count(*) FROM devices WHERE online").fetchone()[0])
        except psycopg.Error as error:  # a gauge is not worth a batch: the next commit finds the database again
            log.debug("devices online not counted: %s", error)

    def _maintain(self, connection: psycopg.Connection, force: bool = False) -> None:
        self._count_devices_online(connection)
        if self._sample_bytes_since_prune > PRUNE_AFTER_SAMPLE_BYTES:
            database.prune_rejected(connection)
            self._sample_bytes_since_prune = 0
        if not force and time.monotonic() - self._last_maintenance < 3600:
            return
        claims = self.licence.current
        retention = claims.claims.limits.retentionDays if claims else 1
        database.ensure_partitions(connection, retention)
        dropped = database.apply_retention(connection, retention)
        if dropped:
            log.info("retention (%d days) dropped partitions %s", retention, ", ".join(dropped))
        self._last_maintenance = time.monotonic()

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
        self.alerts.start()
        self._apply_licence()
        self._maintain(connection, force=True)
        self.known_devices = {row[0] for row in connection.execute("SELECT device_id FROM devices")}
        connection.commit()
        if self.licence.current is None:
            self.paused = True  # start paused: connect once a valid licence is mounted
            log.error("no valid licence (%s): waiting for one, consuming nothing", self.licence.problem)
        else:
            self._connect()
        last_licence_check = time.monotonic()
        try:
            while not self.stopping.is_set():
                if time.monotonic() - last_licence_check > (PAUSED_POLL_SECONDS if self.paused else LICENCE_CHECK_SECONDS):
                    self._apply_licence()
                    last_licence_check = time.monotonic()
                    if self.licence.current is None:
                        self._pause()
                    else:
                        self._resume()
                if self.paused:
                    self.stopping.wait(PAUSED_POLL_SECONDS)
                    continue
                items = self._collect()
                if not items:
                    continue
                claims = self.licence.current
                window = database.retention_window(claims.claims.limits.retentionDays if claims else 1)
                accepted: list[Accepted] = []
                refused: list[RefusedMessage] = []
                for item in items:
                    self._judge(item, window, accepted, refused)
                connection = self._commit(connection, accepted, refused, items)
                self._maintain(connection)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            connection.close()

    def _until_committed(self, connection: psycopg.Connection, what: str,
                         work: Callable[[psycopg.Connection], T]) -> tuple[psycopg.Connection, T]:
        """Run ``work`` until it commits (or we are stopping). Only errors of the database itself come
        here (a message the database refuses was refused inside ``work``); nothing is acknowledged meanwhile."""
        delay = 0.5
        while True:
            try:
                return connection, work(connection)
            except psycopg.Error as error:
                DATABASE_UP.set(0)
                self.database_ok = False
                log.warning("%s not committed (%s); it will be retried", what, str(error).strip().splitlines()[0][:200])
                if isinstance(error, psycopg.OperationalError) or connection.closed:
                    try:
                        connection.close()
                    finally:
                        connection = self._connect_database()
                else:  # the database answers but fails (a schema problem, say): retry slowly
                    self.stopping.wait(delay)
                    delay = min(delay * 2, 10.0)
                    if self.stopping.is_set():
                        raise SystemExit(0) from error

    def _commit(self, connection: psycopg.Connection, accepted: list[Accepted], refused: list[RefusedMessage],
                items: list[Incoming]) -> psycopg.Connection:
        """Store the accepted messages and record the refused ones, then acknowledge every message of the batch in order."""
        received = items[-1].received
        started = time.monotonic()
        connection, outcome = self._until_committed(
            connection, f"batch of {len(items)}", lambda c: store(c, accepted, received))
        for item, reason in outcome.refused_by_database:
            refused.append(self.refusals.refuse(item.topic, item.message.device_id, datagram.DATABASE_REFUSED, reason, item.payload))
        if refused:
            connection, _ = self._until_committed(
                connection, f"{len(refused)} refusals", lambda c: record_refusals(c, refused, received))
        committed = datetime.now(timezone.utc)
        DATABASE_UP.set(1)
        self.database_ok = True
        COMMIT_SECONDS.observe(time.monotonic() - started)
        BATCH_SIZE.observe(len(items))
        STORED.inc(outcome.stored_messages)
        MEASUREMENTS.inc(outcome.stored_measurements)
        DUPLICATES.inc(outcome.duplicates)
        self._sample_bytes_since_prune += sum(len(r.payload) + len(r.detail) for r in refused if r.payload is not None)
        for item in accepted:
            if isinstance(item.message, datagram.Telemetry):
                LAG_SECONDS.observe(max(0.0, (committed - item.message.ts).total_seconds()))
        for incoming in items:
            if incoming.qos > 0:
                self.client.ack(incoming.mid, incoming.qos)
        INFLIGHT.dec(len(items))
        self.alerts.observe([item.message for item in accepted if isinstance(item.message, datagram.Telemetry)])
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
        licence_grace_seconds=args.licence_grace_seconds,
        replicas=args.replicas,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
    )


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    settings = _settings(args)
    licence = MountedLicence(settings.licence_file, settings.jwks_file, settings.customer_id, settings.licence_grace_seconds)
    verified = licence.refresh()  # without a valid licence ingest starts paused: not ready, consuming nothing
    if verified is not None:
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
    flag(parser, "--licence-grace-seconds", "IOTENANT_LICENCE_GRACE_SECONDS",
         "how long an expired licence keeps serving (the operator's expiry grace)", kind=int, default=0)
    flag(parser, "--metrics-address", "IOTENANT_METRICS_ADDRESS", "address of /healthz, /readyz, /metrics", default="0.0.0.0")
    flag(parser, "--metrics-port", "IOTENANT_METRICS_PORT", "port of /healthz, /readyz, /metrics", kind=int, default=9100)
    logs.add_flags(parser)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    import socket

    parser = commands.add_parser("ingest", help="store device messages from the broker in PostgreSQL",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(parser, "--database-url", "IOTENANT_DATABASE_URL", "PostgreSQL connection URL", required=True)
    add_common_flags(parser)
    flag(parser, "--client-id", "IOTENANT_CLIENT_ID", "MQTT client id: stable per replica (its persistent session)",
         default=f"ingest-{socket.gethostname()}")
    flag(parser, "--share-group", "IOTENANT_SHARE_GROUP", "shared subscription group (the tenant's secret group name)", default="ingest")
    flag(parser, "--inflight", "IOTENANT_INFLIGHT", "unacknowledged messages the broker may send (memory bound)", kind=int, default=2000)
    flag(parser, "--batch-size", "IOTENANT_BATCH_SIZE", "most messages per transaction", kind=int, default=1000)
    flag(parser, "--batch-seconds", "IOTENANT_BATCH_SECONDS", "longest wait to fill a batch", kind=float, default=0.05)
    flag(parser, "--replicas", "IOTENANT_INGEST_REPLICAS", "ingest replicas sharing the licence's rate limit", kind=int, default=1)
    parser.set_defaults(run=_run)
