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
  Receive Maximum) and none larger than the datagram limit (MQTT 5 Maximum Packet Size); QoS 0
  messages, which no Receive Maximum bounds, are dropped on arrival (counted, reason ``busy``)
  while as many messages, or 16 MiB of QoS 0 ones, are waiting.
- Alert rules (``features.alerts``) are judged after each batch is committed and acknowledged, by a
  thread of their own (``alert_evaluation``): a rule never slows or blocks storage.
- OTA progress (``iot/<id>/ota/status``) is stored as reports and as the state of the update it names.
- Limits from the verified licence: devices, the tenant's messages per second, and a device's own
  share of it. An expired licence serves through the operator's grace period; with no valid
  licence ingest disconnects and acknowledges nothing, so the broker keeps the messages.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TypeVar

import psycopg
from prometheus_client import Counter, Gauge, Histogram

from iotenant_workloads import datagram, tenant_schema as database
from iotenant_workloads.ingest import broker_session
from iotenant_workloads.ingest.alert_evaluation import AlertEvaluator
from iotenant_workloads.ingest.broker_session import BrokerSession
from iotenant_workloads.ingest.judge import Incoming, MessageJudge
from iotenant_workloads.ingest.refusals import RefusedMessage
from iotenant_workloads.ingest.settings import IngestSettings
from iotenant_workloads.ingest.telemetry_store import Accepted, record_refusals, store
from iotenant_workloads.ingest.upkeep import Upkeep
from iotenant_workloads.mounted_licence import MountedLicence

log = logging.getLogger("iotenant.ingest")
T = TypeVar("T")

STORED = Counter("iotenant_ingest_stored_total", "Telemetry messages stored (new)")
MEASUREMENTS = Counter("iotenant_ingest_measurements_stored_total", "Measurement rows stored")
DUPLICATES = Counter("iotenant_ingest_duplicate_total", "Telemetry messages already stored (redeliveries)")
BATCH_SIZE = Histogram("iotenant_ingest_batch_size", "Messages per committed batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
COMMIT_SECONDS = Histogram("iotenant_ingest_commit_seconds", "Time to write and commit one batch",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
LAG_SECONDS = Histogram("iotenant_ingest_lag_seconds", "From the message's timestamp to its commit",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
DATABASE_UP = Gauge("iotenant_ingest_database_up", "1 when the last database operation succeeded")
LICENCE_STATE = Gauge("iotenant_ingest_licence_state", "1: valid, 0.5: expired within the grace period, 0: none (paused)")

LICENCE_CHECK_SECONDS = 5.0
PAUSED_POLL_SECONDS = 1.0


class Ingest:
    def __init__(self, settings: IngestSettings, licence: MountedLicence) -> None:
        self.settings = settings
        self.licence = licence
        self.inbox = broker_session.Inbox()
        self.stopping = threading.Event()
        self.paused = False
        self.database_ok = False
        self.judge = MessageJudge()
        self.upkeep = Upkeep()
        self.alerts = AlertEvaluator(settings.database_url, self._alerts_licensed, self.stopping)
        self.broker = BrokerSession(settings, self.inbox, lambda: self.stopping.is_set() or self.paused)

    # ---------------------------------------------------------------- licence

    def _apply_licence(self) -> None:
        verified = self.licence.refresh()
        LICENCE_STATE.set(0 if verified is None else 0.5 if self.licence.in_grace() else 1)
        self.judge.apply_limits(verified, self.settings.replicas)

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
        self.broker.disconnect()
        dropped = 0
        while True:
            try:
                self.inbox.get_nowait()
                dropped += 1
            except queue.Empty:
                break
        broker_session.INFLIGHT.dec(dropped)

    def _resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        log.info("a valid licence is in force again: consuming resumes")
        self.broker.connect()

    # ---------------------------------------------------------------- judging

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

    def _maintain(self, connection: psycopg.Connection, force: bool = False) -> None:
        verified = self.licence.current
        self.upkeep.run(connection, verified.claims.limits.retentionDays if verified else 1, force)

    def ready(self) -> tuple[bool, str]:
        if self.licence.current is None:
            return False, f"no valid licence: {self.licence.problem}"
        if not self.database_ok:
            return False, "database unavailable"
        if not self.broker.connected.is_set():
            return False, "not connected to the broker"
        return True, "ok"

    def run(self) -> None:
        connection = self._connect_database()
        database.migrate(connection)
        self.alerts.start()
        self._apply_licence()
        self._maintain(connection, force=True)
        self.judge.known_devices = {row[0] for row in connection.execute("SELECT device_id FROM devices")}
        connection.commit()
        if self.licence.current is None:
            self.paused = True  # start paused: connect once a valid licence is mounted
            log.error("no valid licence (%s): waiting for one, consuming nothing", self.licence.problem)
        else:
            self.broker.connect()
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
                    self.judge.judge(item, self.licence.current, window, accepted, refused)
                connection = self._commit(connection, accepted, refused, items)
                self._maintain(connection)
        finally:
            self.broker.disconnect()
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
            refused.append(self.judge.refusals.refuse(item.topic, item.message.device_id, datagram.DATABASE_REFUSED, reason, item.payload))
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
        self.upkeep.sample_bytes_since_prune += sum(len(r.payload) + len(r.detail) for r in refused if r.payload is not None)
        for item in accepted:
            if isinstance(item.message, datagram.Telemetry):
                LAG_SECONDS.observe(max(0.0, (committed - item.message.ts).total_seconds()))
        for incoming in items:
            if incoming.qos > 0:
                self.broker.client.ack(incoming.mid, incoming.qos)
        broker_session.INFLIGHT.dec(len(items))
        self.alerts.observe([item.message for item in accepted if isinstance(item.message, datagram.Telemetry)])
        return connection


