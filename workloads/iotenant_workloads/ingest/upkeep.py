"""Ingest's upkeep between batches: the devices-online gauge, pruning refused samples, partitions and retention."""

from __future__ import annotations

import logging
import time

import psycopg
from prometheus_client import Gauge

from iotenant_workloads import tenant_schema

log = logging.getLogger("iotenant.ingest")

DEVICES_ONLINE = Gauge("iotenant_ingest_devices_online", "Devices whose last status says online")
DEVICES_ONLINE_SECONDS = 15.0
RETENTION_SECONDS = 3600.0
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
        tenant_schema.ensure_partitions(connection, retention_days)
        dropped = tenant_schema.apply_retention(connection, retention_days)
        if dropped:
            log.info("retention (%d days) dropped partitions %s", retention_days, ", ".join(dropped))
        self._last_retention = time.monotonic()
