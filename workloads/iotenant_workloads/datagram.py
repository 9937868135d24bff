"""Device messages: the topic, and the v2 telemetry datagram, judged and parsed, nothing else.

Topics: ``iot/<device-id>/<kind>`` (``iotenant.vocabulary.topics``). Telemetry v2:
``{v: 2, device_id, ts, seq, msg_type, measurements: [{ts, type, val, unit}]}`` with at most 200
measurements and ``seq`` in 0..2^32-1. The device id is the topic's: a payload naming another
device is refused. Every value that reaches the database was checked for what PostgreSQL refuses
(``untrusted_json``). Every refusal is an ``Unacceptable`` with a reason; nothing else escapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from iotenant.vocabulary import topics
from iotenant_workloads import untrusted_json
from iotenant_workloads.untrusted_json import (
    INVALID_JSON, NESTING_TOO_DEEP, NOT_AN_OBJECT, NUMBER_OUT_OF_RANGE, PAYLOAD_TOO_LARGE, UNSTORABLE_TEXT, Unacceptable,
)

MAX_MEASUREMENTS = 200
MAX_SEQ = 2**32 - 1
MAX_PAYLOAD_BYTES = topics.MAX_DATAGRAM_BYTES
MAX_TEXT = 64  # measurement type, msg_type
MAX_UNIT = 32
MAX_ID = 64  # command ids
# Timestamps a device may send: 1970 .. 2100 (seconds, or milliseconds when above 1e11).
EARLIEST, LATEST = 0, 4102444800
MILLISECONDS_ABOVE = 1e11
MAX_TIMESTAMP_TEXT = 40

# Refusal reasons (stable: metric labels and API output). Those of untrusted_json are among them.
BAD_TOPIC = "bad_topic"
UNSUPPORTED_VERSION = "unsupported_version"
DEVICE_ID_MISMATCH = "device_id_mismatch"
BAD_TIMESTAMP = "bad_timestamp"
BAD_SEQ = "bad_seq"
BAD_MEASUREMENTS = "bad_measurements"
TOO_MANY_MEASUREMENTS = "too_many_measurements"
BAD_STATUS = "bad_status"
BAD_ACK = "bad_ack"
BAD_OTA_STATUS = "bad_ota_status"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
DEVICE_LIMIT = "device_limit"
RATE_LIMITED = "rate_limited"
DEVICE_RATE_LIMITED = "device_rate_limited"
DATABASE_REFUSED = "database_refused"
UNEXPECTED = "unexpected"
REASONS = (
    BAD_TOPIC, PAYLOAD_TOO_LARGE, INVALID_JSON, NESTING_TOO_DEEP, NOT_AN_OBJECT, UNSTORABLE_TEXT, NUMBER_OUT_OF_RANGE,
    UNSUPPORTED_VERSION, DEVICE_ID_MISMATCH, BAD_TIMESTAMP, BAD_SEQ, BAD_MEASUREMENTS, TOO_MANY_MEASUREMENTS, BAD_STATUS,
    BAD_ACK, BAD_OTA_STATUS, TIMESTAMP_OUT_OF_RANGE, DEVICE_LIMIT, RATE_LIMITED, DEVICE_RATE_LIMITED, DATABASE_REFUSED, UNEXPECTED,
)
# Reasons that say what a message contains (the others say what the tenant allows).
CONTENT_REASONS = frozenset(REASONS) - {DEVICE_LIMIT, RATE_LIMITED, DEVICE_RATE_LIMITED, DATABASE_REFUSED, UNEXPECTED}


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
    """(device id, kind) of an ``iot/<id>/<kind>`` topic that ingest stores."""
    root, _, rest = topic.partition("/")
    device_id, _, kind = rest.partition("/")
    if root != topics.ROOT or not topics.is_device_id(device_id) or kind not in topics.INGESTED:
        raise Unacceptable(BAD_TOPIC, untrusted_json.printable(topic))
    return device_id, kind


_DECIMAL = re.compile(r"-?[0-9]{1,16}(\.[0-9]{1,9})?")


def timestamp(value: object) -> datetime:
    """Seconds (or milliseconds) since the epoch, or an RFC 3339 string, as an aware datetime in 1970..2100."""
    if isinstance(value, bool):
        raise Unacceptable(BAD_TIMESTAMP, "boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not -1e14 < value < 1e14:
            raise Unacceptable(BAD_TIMESTAMP, untrusted_json.printable(str(value), 40))
        seconds = value / 1000.0 if value > MILLISECONDS_ABOVE else float(value)
        if not EARLIEST < seconds < LATEST:
            raise Unacceptable(BAD_TIMESTAMP, untrusted_json.printable(str(value), 40))
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    if isinstance(value, str):
        if len(value) > MAX_TIMESTAMP_TEXT:
            raise Unacceptable(BAD_TIMESTAMP, f"a text of {len(value)} characters")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise Unacceptable(BAD_TIMESTAMP, "no time zone")
            moment = parsed.timestamp()
        except (ValueError, OverflowError, OSError):
            raise Unacceptable(BAD_TIMESTAMP, untrusted_json.printable(value, 40)) from None
        if not EARLIEST < moment < LATEST:
            raise Unacceptable(BAD_TIMESTAMP, untrusted_json.printable(value, 40))
        return datetime.fromtimestamp(moment, tz=timezone.utc)
    raise Unacceptable(BAD_TIMESTAMP, type(value).__name__)


def timestamp_text(value: str) -> datetime:
    """A timestamp given as text (an API parameter): ASCII seconds since the epoch, or RFC 3339."""
    return timestamp(float(value) if _DECIMAL.fullmatch(value) else value)


def same_device(document: dict[str, Any], device_id: str) -> None:
    named = document.get("device_id", device_id)
    if named != device_id:
        raise Unacceptable(DEVICE_ID_MISMATCH, f"topic {device_id!r}, payload {untrusted_json.printable(str(named), 80)!r}")


def text(value: object, what: str, longest: int, reason: str) -> str:
    """A string of 1..``longest`` characters that PostgreSQL can store."""
    if not isinstance(value, str) or not 1 <= len(value) <= longest:
        raise Unacceptable(reason, f"{what} must be a string of 1..{longest} characters")
    return untrusted_json.storable_text(value, what)


def number(value: object, what: str) -> float:
    """A finite double (integers too large for one are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unacceptable(BAD_MEASUREMENTS, f"{what} must be a number")
    try:
        converted = float(value)
    except OverflowError:
        raise Unacceptable(NUMBER_OUT_OF_RANGE, f"{what} does not fit a double") from None
    if not math.isfinite(converted):
        raise Unacceptable(NUMBER_OUT_OF_RANGE, f"{what} must be finite")
    return converted


def _measurement(entry: object, default_ts: datetime) -> Measurement:
    if not isinstance(entry, dict):
        raise Unacceptable(BAD_MEASUREMENTS, "a measurement must be an object")
    kind = text(entry.get("type"), "type", MAX_TEXT, BAD_MEASUREMENTS)
    value = number(entry.get("val"), "val")
    unit = entry.get("unit")
    if unit is not None:
        if not isinstance(unit, str) or len(unit) > MAX_UNIT:
            raise Unacceptable(BAD_MEASUREMENTS, f"unit must be a string of at most {MAX_UNIT} characters")
        untrusted_json.storable_text(unit, "unit")
    ts = timestamp(entry["ts"]) if "ts" in entry else default_ts
    return Measurement(ts=ts, type=kind, val=value, unit=unit)


def parse_telemetry(device_id: str, payload: bytes) -> Telemetry:
    document = untrusted_json.parse_object(payload, MAX_PAYLOAD_BYTES)
    if document.get("v") != 2 or isinstance(document.get("v"), bool):
        raise Unacceptable(UNSUPPORTED_VERSION, untrusted_json.printable(str(document.get("v")), 20))
    same_device(document, device_id)
    ts = timestamp(document.get("ts"))
    seq = document.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise Unacceptable(BAD_SEQ, untrusted_json.printable(str(seq), 40))
    measurements = document.get("measurements")
    if not isinstance(measurements, list) or not measurements:
        raise Unacceptable(BAD_MEASUREMENTS, "measurements must be a non-empty list")
    if len(measurements) > MAX_MEASUREMENTS:
        raise Unacceptable(TOO_MANY_MEASUREMENTS, str(len(measurements)))
    msg_type = text(document.get("msg_type", "telemetry"), "msg_type", MAX_TEXT, BAD_MEASUREMENTS)
    return Telemetry(
        device_id=device_id,
        ts=ts,
        seq=seq,
        msg_type=msg_type,
        measurements=tuple(_measurement(entry, ts) for entry in measurements),
    )


def parse_event(device_id: str, kind: str, payload: bytes, received: datetime) -> DeviceEvent:
    document = untrusted_json.parse_object(payload, MAX_PAYLOAD_BYTES)
    same_device(document, device_id)
    ts = timestamp(document["ts"]) if "ts" in document else received
    if kind == topics.STATUS and document.get("state") not in ("online", "offline"):
        raise Unacceptable(BAD_STATUS, "state must be online or offline")
    if kind == topics.COMMAND_ACK:
        text(document.get("cmd_id"), "cmd_id", MAX_ID, BAD_ACK)
        text(document.get("status"), "status", MAX_ID, BAD_ACK)
    untrusted_json.storable(document, kind)
    return DeviceEvent(device_id=device_id, kind=kind, ts=ts, body=document)
