"""Writing a batch of device messages in one transaction: COPY into staging, then de-duplicate by the durable key."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from iotenant_workloads.database import REJECTED_KEPT
from iotenant_workloads.datagram import DeviceEvent, Telemetry

STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging_telemetry (
    device_id text NOT NULL, msg_ts timestamptz NOT NULL, seq bigint NOT NULL, idx smallint NOT NULL,
    ts timestamptz NOT NULL, type text NOT NULL, val double precision NOT NULL, unit text,
    received_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""

INSERT_NEW = """
WITH inserted AS (
    INSERT INTO telemetry (device_id, msg_ts, seq, idx, ts, type, val, unit, received_at)
    SELECT device_id, msg_ts, seq, idx, ts, type, val, unit, received_at FROM staging_telemetry
    ON CONFLICT DO NOTHING
    RETURNING device_id, msg_ts, seq
)
SELECT count(DISTINCT (device_id, msg_ts, seq)), count(*) FROM inserted
"""

SEEN = """
INSERT INTO devices (device_id, first_seen, last_seen)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[])
ON CONFLICT (device_id) DO UPDATE SET last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen)
"""

# Status messages are ordered by their own ts: a last will carries the time of the connection it
# belongs to, so it wins over that connection's "online" and loses to a later connection's.
STATE = """
INSERT INTO devices (device_id, first_seen, last_seen, online, state_changed_at)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET
    online = CASE WHEN devices.state_changed_at IS NULL OR devices.state_changed_at <= EXCLUDED.state_changed_at
                  THEN EXCLUDED.online ELSE devices.online END,
    state_changed_at = GREATEST(devices.state_changed_at, EXCLUDED.state_changed_at),
    last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen)
"""

HELLO = """
INSERT INTO devices (device_id, first_seen, last_seen, online, hello)
VALUES (%s, %s, %s, true, %s)
ON CONFLICT (device_id) DO UPDATE SET
    hello = EXCLUDED.hello,
    online = CASE WHEN devices.state_changed_at IS NULL THEN true ELSE devices.online END,
    last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen)
"""

ACK = """
UPDATE commands SET status = %s, acked_at = %s, result = %s
WHERE cmd_id = %s AND device_id = %s
"""


@dataclass(frozen=True)
class RefusedMessage:
    topic: str
    reason: str
    detail: str
    payload: bytes


@dataclass
class Batch:
    received: datetime
    telemetry: list[Telemetry] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    refused: list[RefusedMessage] = field(default_factory=list)


@dataclass(frozen=True)
class BatchOutcome:
    stored_messages: int
    stored_measurements: int
    duplicates: int
    refused: Counter[str]


def write_batch(connection: psycopg.Connection, batch: Batch) -> BatchOutcome:
    """Store a batch atomically; commit before returning (the caller acknowledges only after this)."""
    with connection.transaction():
        connection.execute(STAGING)
        with connection.cursor() as cursor:
            with cursor.copy(
                "COPY staging_telemetry (device_id, msg_ts, seq, idx, ts, type, val, unit, received_at) FROM STDIN"
            ) as copy:
                for message in batch.telemetry:
                    for index, measurement in enumerate(message.measurements):
                        copy.write_row(
                            (message.device_id, message.ts, message.seq, index, measurement.ts,
                             measurement.type, measurement.val, measurement.unit, batch.received)
                        )
            cursor.execute(INSERT_NEW)
            row = cursor.fetchone()
            new_messages, new_rows = (int(row[0]), int(row[1])) if row else (0, 0)

            last_seen: dict[str, datetime] = {}
            for item in [*batch.telemetry, *batch.events]:
                last_seen[item.device_id] = max(last_seen.get(item.device_id, item.ts), item.ts)
            if last_seen:
                ids = sorted(last_seen)
                cursor.execute(SEEN, (ids, [last_seen[i] for i in ids], [last_seen[i] for i in ids]))
            for event in sorted(batch.events, key=lambda e: e.ts):
                if event.kind == "hello":
                    cursor.execute(HELLO, (event.device_id, event.ts, event.ts, json.dumps(event.body)))
                elif event.kind == "status":
                    online = event.body.get("state") == "online"
                    cursor.execute(STATE, (event.device_id, event.ts, event.ts, online, event.ts))
                elif event.kind == "command/ack":
                    cursor.execute(
                        ACK,
                        (str(event.body["status"])[:32], event.ts, json.dumps(event.body.get("result")),
                         event.body["cmd_id"], event.device_id),
                    )
            if batch.refused:
                cursor.executemany(
                    "INSERT INTO rejected_messages (topic, reason, detail, payload) VALUES (%s, %s, %s, %s)",
                    [(r.topic[:256], r.reason, r.detail[:500], r.payload[:4096]) for r in batch.refused[-REJECTED_KEPT:]],
                )
    return BatchOutcome(
        stored_messages=new_messages,
        stored_measurements=new_rows,
        duplicates=len(batch.telemetry) - new_messages,
        refused=Counter(r.reason for r in batch.refused),
    )
