"""MQTT topics and the v2 telemetry datagram: parsing and validation, nothing else.

Topics: ``iot/<device-id>/telemetry|hello|status|command|command/ack``. Telemetry v2:
``{v: 2, device_id, ts, seq, msg_type, measurements: [{ts, type, val, unit}]}`` with at most 200
measurements and ``seq`` in 0..2^32-1. The device id is the topic's: a payload naming another
device is refused. Every refusal has a reason; none raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_MEASUREMENTS = 200
MAX_SEQ = 2**32 - 1
MAX_PAYLOAD_BYTES = 64 * 1024
KINDS = ("telemetry", "hello", "status", "command/ack")

# Rejection reasons (stable: they are metric labels and API output).
BAD_TOPIC = "bad_topic"
PAYLOAD_TOO_LARGE = "payload_too_large"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
UNSUPPORTED_VERSION = "unsupported_version"
DEVICE_ID_MISMATCH = "device_id_mismatch"
BAD_TIMESTAMP = "bad_timestamp"
BAD_SEQ = "bad_seq"
BAD_MEASUREMENTS = "bad_measurements"
TOO_MANY_MEASUREMENTS = "too_many_measurements"
BAD_STATUS = "bad_status"
BAD_ACK = "bad_ack"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
DEVICE_LIMIT = "device_limit"
RATE_LIMITED = "rate_limited"
REASONS = (
    BAD_TOPIC, PAYLOAD_TOO_LARGE, INVALID_JSON, NOT_AN_OBJECT, UNSUPPORTED_VERSION, DEVICE_ID_MISMATCH,
    BAD_TIMESTAMP, BAD_SEQ, BAD_MEASUREMENTS, TOO_MANY_MEASUREMENTS, BAD_STATUS, BAD_ACK,
    TIMESTAMP_OUT_OF_RANGE, DEVICE_LIMIT, RATE_LIMITED,
)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Measurement:
    ts: datetime
    type: str
    val: float
    unit: str | None


@dataclass(frozen=True)
class Telemetry:
    device_id: str
    ts: datetime
    seq: int
    msg_type: str
    measurements: tuple[Measurement, ...]


@dataclass(frozen=True)
class DeviceEvent:
    """hello, status or command/ack: a device's non-telemetry message."""

    device_id: str
    kind: str
    ts: datetime
    body: dict[str, Any]


def topic_parts(topic: str) -> tuple[str, str]:
    """(device id, kind) of an ``iot/<id>/<kind>`` topic."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != "iot" or not DEVICE_ID.match(parts[1]):
        raise Rejected(BAD_TOPIC, topic[:200])
    kind = "/".join(parts[2:])
    if kind not in KINDS:
        raise Rejected(BAD_TOPIC, topic[:200])
    return parts[1], kind


def timestamp(value: object) -> datetime:
    """Seconds (or milliseconds) since the epoch, or an RFC 3339 string, as an aware datetime."""
    if isinstance(value, bool):
        raise Rejected(BAD_TIMESTAMP, "boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise Rejected(BAD_TIMESTAMP, "not finite")
        seconds = value / 1000.0 if value > 1e11 else float(value)
        if not 0 < seconds < 4102444800:  # 1970 .. 2100
            raise Rejected(BAD_TIMESTAMP, str(value)[:40])
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Rejected(BAD_TIMESTAMP, value[:40]) from None
        if parsed.tzinfo is None:
            raise Rejected(BAD_TIMESTAMP, "no time zone")
        return parsed.astimezone(timezone.utc)
    raise Rejected(BAD_TIMESTAMP, type(value).__name__)


def _object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(PAYLOAD_TOO_LARGE, f"{len(payload)} bytes")
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise Rejected(INVALID_JSON, str(error)[:200]) from None
    if not isinstance(document, dict):
        raise Rejected(NOT_AN_OBJECT, type(document).__name__)
    return document


def _same_device(document: dict[str, Any], device_id: str) -> None:
    named = document.get("device_id", device_id)
    if named != device_id:
        raise Rejected(DEVICE_ID_MISMATCH, f"topic {device_id!r}, payload {str(named)[:80]!r}")


def _measurement(entry: object, default_ts: datetime) -> Measurement:
    if not isinstance(entry, dict):
        raise Rejected(BAD_MEASUREMENTS, "not an object")
    kind, value, unit = entry.get("type"), entry.get("val"), entry.get("unit")
    if not isinstance(kind, str) or not 1 <= len(kind) <= 64:
        raise Rejected(BAD_MEASUREMENTS, "type must be a string of 1..64 characters")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Rejected(BAD_MEASUREMENTS, "val must be a finite number")
    if unit is not None and (not isinstance(unit, str) or len(unit) > 32):
        raise Rejected(BAD_MEASUREMENTS, "unit must be a string of at most 32 characters")
    ts = timestamp(entry["ts"]) if "ts" in entry else default_ts
    return Measurement(ts=ts, type=kind, val=float(value), unit=unit)


def parse_telemetry(device_id: str, payload: bytes) -> Telemetry:
    document = _object(payload)
    if document.get("v") != 2:
        raise Rejected(UNSUPPORTED_VERSION, str(document.get("v"))[:20])
    _same_device(document, device_id)
    ts = timestamp(document.get("ts"))
    seq = document.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise Rejected(BAD_SEQ, str(seq)[:40])
    measurements = document.get("measurements")
    if not isinstance(measurements, list) or not measurements:
        raise Rejected(BAD_MEASUREMENTS, "measurements must be a non-empty list")
    if len(measurements) > MAX_MEASUREMENTS:
        raise Rejected(TOO_MANY_MEASUREMENTS, str(len(measurements)))
    msg_type = document.get("msg_type", "telemetry")
    if not isinstance(msg_type, str) or len(msg_type) > 64:
        raise Rejected(BAD_MEASUREMENTS, "msg_type must be a string")
    return Telemetry(
        device_id=device_id,
        ts=ts,
        seq=seq,
        msg_type=msg_type,
        measurements=tuple(_measurement(entry, ts) for entry in measurements),
    )


def parse_event(device_id: str, kind: str, payload: bytes, received: datetime) -> DeviceEvent:
    document = _object(payload)
    _same_device(document, device_id)
    ts = timestamp(document["ts"]) if "ts" in document else received
    if kind == "status" and document.get("state") not in ("online", "offline"):
        raise Rejected(BAD_STATUS, "state must be online or offline")
    if kind == "command/ack":
        if not isinstance(document.get("cmd_id"), str) or not isinstance(document.get("status"), str):
            raise Rejected(BAD_ACK, "cmd_id and status must be strings")
    return DeviceEvent(device_id=device_id, kind=kind, ts=ts, body=document)
