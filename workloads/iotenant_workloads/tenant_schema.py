"""The customer database: idempotent migrations, daily partitions and retention.

Telemetry is one row per measurement, unique by (device, message ts, seq, index): the durable key
that removes redeliveries while a rebooted device (seq reset, new ts) loses nothing.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

import psycopg

log = logging.getLogger("iotenant.database")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE devices (
            device_id text PRIMARY KEY,
            first_seen timestamptz NOT NULL,
            last_seen timestamptz NOT NULL,
            online boolean NOT NULL DEFAULT false,
            state_changed_at timestamptz,
            hello jsonb
        );
        CREATE TABLE telemetry (
            device_id text NOT NULL,
            msg_ts timestamptz NOT NULL,
            seq bigint NOT NULL,
            idx smallint NOT NULL,
            ts timestamptz NOT NULL,
            type text NOT NULL,
            val double precision NOT NULL,
            unit text,
            received_at timestamptz NOT NULL
        ) PARTITION BY RANGE (msg_ts);
        CREATE UNIQUE INDEX telemetry_message_key ON telemetry (device_id, msg_ts, seq, idx);
        CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts DESC);
        CREATE INDEX telemetry_device_type_ts ON telemetry (device_id, type, ts DESC);
        CREATE TABLE commands (
            cmd_id text PRIMARY KEY,
            device_id text NOT NULL,
            name text NOT NULL,
            args jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            status text NOT NULL DEFAULT 'sent',
            acked_at timestamptz,
            result jsonb
        );
        CREATE INDEX commands_device_created ON commands (device_id, created_at DESC);
        CREATE TABLE rejected_messages (
            id bigserial PRIMARY KEY,
            received_at timestamptz NOT NULL DEFAULT now(),
            topic text NOT NULL,
            reason text NOT NULL,
            detail text NOT NULL DEFAULT '',
            payload bytea NOT NULL
        );
        CREATE INDEX rejected_messages_reason ON rejected_messages (reason, id);
        """,
    ),
    (
        2,
        """
        ALTER TABLE rejected_messages ADD COLUMN device_id text NOT NULL DEFAULT '';
        CREATE TABLE refusal_counts (
            device_id text NOT NULL,
            reason text NOT NULL,
            count bigint NOT NULL,
            last_at timestamptz NOT NULL,
            PRIMARY KEY (device_id, reason)
        );
        """,
    ),
    (
        3,
        """
        ALTER TABLE devices ADD COLUMN last_telemetry_at timestamptz;
        CREATE TABLE alert_rules (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('threshold', 'silence')),
            device_id text,
            type text,
            operator text CHECK (operator IN ('>', '<', '>=', '<=')),
            threshold double precision,
            for_seconds integer NOT NULL DEFAULT 0,
            silence_seconds integer,
            created_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz
        );
        CREATE TABLE alerts (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            rule_id bigint NOT NULL REFERENCES alert_rules (id),
            device_id text NOT NULL,
            state text NOT NULL CHECK (state IN ('firing', 'resolved')),
            value double precision,
            fired_at timestamptz NOT NULL,
            resolved_at timestamptz,
            resolved_value double precision,
            acknowledged_at timestamptz
        );
        CREATE UNIQUE INDEX alerts_one_firing ON alerts (rule_id, device_id) WHERE state = 'firing';
        CREATE INDEX alerts_fired ON alerts (fired_at DESC);
        CREATE INDEX alerts_device_fired ON alerts (device_id, fired_at DESC);
        CREATE TABLE alert_state (
            rule_id bigint NOT NULL REFERENCES alert_rules (id),
            device_id text NOT NULL,
            holding_since timestamptz,
            last_ts timestamptz,
            firing_alert bigint REFERENCES alerts (id),
            PRIMARY KEY (rule_id, device_id)
        );
        CREATE TABLE ota_updates (
            cmd_id text PRIMARY KEY,
            device_id text NOT NULL,
            version text NOT NULL,
            url text NOT NULL,
            sha256 text NOT NULL,
            state text NOT NULL DEFAULT 'sent',
            progress smallint,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            reported_at timestamptz
        );
        CREATE INDEX ota_updates_device_created ON ota_updates (device_id, created_at DESC);
        CREATE TABLE ota_reports (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device_id text NOT NULL,
            cmd_id text NOT NULL,
            ts timestamptz NOT NULL,
            state text NOT NULL,
            progress smallint,
            version text,
            error text,
            received_at timestamptz NOT NULL
        );
        CREATE INDEX ota_reports_device_ts ON ota_reports (device_id, ts DESC);
        """,
    ),
]

# Samples of refused messages are kept for inspection up to this many bytes; older ones are deleted.
REJECTED_BYTES_KEPT = 4 * 1024 * 1024
PARTITIONS_AHEAD_DAYS = 2


def migrate(connection: psycopg.Connection) -> int:
    """Apply missing migrations in one transaction each; safe to run from several replicas at once."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(4242001)")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in connection.execute("SELECT version FROM schema_migrations")}
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            connection.execute(statements)
            connection.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            log.info("applied database migration %d", version)
    return max(version for version, _ in MIGRATIONS)


def partition_name(day: date) -> str:
    return f"telemetry_p{day:%Y%m%d}"


# Creating or dropping a partition locks the whole telemetry table, and waits for every reader of it (a
# long export) while every writer queues behind the wait: upkeep waits this long at most, then gives up
# (psycopg.errors.LockNotAvailable) and tries again later, so that ingest never stops behind a reader.
WAIT_FOR_TABLE_LOCKS = "SET LOCAL lock_timeout = '2s'"


def ensure_partitions(connection: psycopg.Connection, retention_days: int, today: date | None = None) -> list[str]:
    """Daily partitions from the oldest retained day to a few days ahead; returns those created."""
    today = today or datetime.now(timezone.utc).date()
    created = []
    with connection.transaction():
        connection.execute(WAIT_FOR_TABLE_LOCKS)
        connection.execute("SELECT pg_advisory_xact_lock(4242002)")
        existing = {
            row[0]
            for row in connection.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry'"
            )
        }
        for offset in range(-retention_days, PARTITIONS_AHEAD_DAYS + 1):
            day = today + timedelta(days=offset)
            name = partition_name(day)
            if name in existing:
                continue
            connection.execute(
                f"CREATE TABLE {name} PARTITION OF telemetry FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
            )
            created.append(name)
    return created


def apply_retention(connection: psycopg.Connection, retention_days: int, today: date | None = None) -> list[str]:
    """Drop whole partitions older than the retention window, resolved alerts and OTA reports as old, and
    old refused messages."""
    today = today or datetime.now(timezone.utc).date()
    oldest = today - timedelta(days=retention_days)
    dropped = []
    with connection.transaction():
        connection.execute(WAIT_FOR_TABLE_LOCKS)
        rows = connection.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry'"
        ).fetchall()
        for (name,) in rows:
            day = datetime.strptime(name.removeprefix("telemetry_p"), "%Y%m%d").date()
            if day < oldest:
                connection.execute(f"DROP TABLE {name}")
                dropped.append(name)
        connection.execute("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < %s", (oldest,))
        connection.execute("DELETE FROM ota_reports WHERE ts < %s", (oldest,))
        connection.execute("DELETE FROM alert_state WHERE rule_id IN (SELECT id FROM alert_rules WHERE deleted_at IS NOT NULL)")
    prune_rejected(connection)
    return dropped


def prune_rejected(connection: psycopg.Connection) -> int:
    """Delete the oldest samples of refused messages beyond ``REJECTED_BYTES_KEPT``; returns how many."""
    with connection.transaction():
        deleted = connection.execute(
            "DELETE FROM rejected_messages WHERE id <= ("
            " SELECT max(id) FROM (SELECT id, sum(octet_length(payload) + octet_length(detail) + octet_length(topic))"
            "  OVER (ORDER BY id DESC) AS kept FROM rejected_messages) newest WHERE kept > %s)",
            (REJECTED_BYTES_KEPT,),
        )
    return deleted.rowcount


def retention_window(retention_days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Message timestamps that can be stored: inside the partitions that exist."""
    now = now or datetime.now(timezone.utc)
    start = datetime.combine(now.date() - timedelta(days=retention_days), datetime.min.time(), tzinfo=timezone.utc)
    end = datetime.combine(now.date() + timedelta(days=PARTITIONS_AHEAD_DAYS + 1), datetime.min.time(), tzinfo=timezone.utc)
    return start, end
