"""Ingest's upkeep between batches: the devices-online gauge, pruning refused samples, partitions and retention."""

from __future__ import annotations

import logging
import time

import psycopg
from prometheus_client import Counter, Gauge

from iotenant_workloads import tenant_schema

log = logging.getLogger("iotenant.ingest")

DEVICES_ONLINE = Gauge("iotenant_ingest_devices_online", "Devices whose last status says online")
UPKEEP_DEFERRED = Counter("iotenant_ingest_upkeep_deferred_total",
                          "Partition upkeep (new days, retention) put off because a reader held the telemetry table")
DEVICES_ONLINE_SECONDS = 15.0
RETENTION_SECONDS = 3600.0
# After a put-off partition upkeep, the next try (partitions exist days ahead: a few tries may fail).
RETENTION_RETRY_SECONDS = 60.0
# Samples of refused messages are pruned to their byte budget after about this many bytes were added.
PRUNE_AFTER_SAMPLE_BYTES = 1024 * 1024


class Upkeep:
    def __init__(self) -> None:
        self._last_retention = 0.0
        self._devices_counted = 0.0
        self.sample_bytes_since_prune = 0

    def _count_devices_online(self, connection: psycopg.Connection) -> None:
        if time.monotonic() - self._devices_counted < DEVICES_ONLINE_SECONDS:
            return
        self._devices_counted = time.monotonic()
        try:
            with connection.transaction():
                DEVICES_ONLINE.set(connection.execute("SELECT count(*) FROM devices WHERE online").fetchone()[0])
        except psycopg.Error as error:  # a gauge is not worth a batch: the next commit finds the database again
            log.debug("devices online not counted: %s", error)

    def run(self, connection: psycopg.Connection, retention_days: int, force: bool = False) -> None:
        self._count_devices_online(connection)
        if self.sample_bytes_since_prune > PRUNE_AFTER_SAMPLE_BYTES:
            tenant_schema.prune_rejected(connection)
            self.sample_bytes_since_prune = 0
        if not force and time.monotonic() - self._last_retention < RETENTION_SECONDS:
            return
        try:
            tenant_schema.ensure_partitions(connection, retention_days)
            dropped = tenant_schema.apply_retention(connection, retention_days)
        except psycopg.errors.LockNotAvailable:
            UPKEEP_DEFERRED.inc()
            log.warning("partition upkeep put off: a reader holds the telemetry table (an export?); trying again in %.0f s",
                        RETENTION_RETRY_SECONDS)
            self._last_retention = time.monotonic() - RETENTION_SECONDS + RETENTION_RETRY_SECONDS
            return
        if dropped:
            log.info("retention (%d days) dropped partitions %s", retention_days, ", ".join(dropped))
        self._last_retention = time.monotonic()
