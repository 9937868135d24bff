"""The API's path and query parameters: each defined once, with the JSON Schema that ``/openapi.json`` states
and the judgement a request's value gets, so the document and the handlers cannot drift apart.

A handler reads a parameter with ``PARAMETER.read(request)``: the value, judged, or its default; anything
else is a 422 ``invalid_parameter`` naming the parameter and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from iotenant.vocabulary import topics
from iotenant_workloads import datagram
from iotenant_workloads.alert_rules import FIRING, RESOLVED
from iotenant_workloads.api.errors import ApiError
from iotenant_workloads.untrusted_json import Unacceptable

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# A positive id as PostgreSQL's bigint holds it.
INTEGER_ID = re.compile(r"[1-9][0-9]{0,17}")
# Times: seconds since the epoch (after datagram.EARLIEST, before datagram.LATEST: 1 to 4102444799, a fraction
# allowed), or an RFC 3339 date-time, which any year may name: a range is clamped to 1970..2100, where all data lies.
EPOCH_SECONDS = (r"^([1-9][0-9]{0,8}|[1-3][0-9]{9}|40[0-9]{8}|410[01][0-9]{6}|4102[0-3][0-9]{5}|41024[0-3][0-9]{4}"
                 r"|410244[0-3][0-9]{3}|4102444[0-7][0-9]{2})(\.[0-9]{1,9})?$")
_RFC_3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|([+-])([0-9]{2}):([0-9]{2}))")
EARLIEST, LATEST = (datetime.fromtimestamp(moment, timezone.utc) for moment in (datagram.EARLIEST, datagram.LATEST))
# Text PostgreSQL can store: no NUL (JSON Schema cannot say "no unpaired surrogate"; those are refused too).
STORABLE_TEXT = r"^[^\u0000]*$"


def anchored(pattern: re.Pattern[str]) -> str:
    """A full-match pattern as JSON Schema states it (JSON Schema patterns match anywhere unless anchored)."""
    return f"^(?:{pattern.pattern})$"


@dataclass(frozen=True)
class Parameter:
    """One path or query parameter: how the document states it and how a request's value is judged."""

    name: str
    location: str  # "path" or "query"
    schema: dict[str, Any]
    description: str
    judge: Callable[[str], Any]  # the raw text -> the value; raises ValueError (or Unacceptable) when it breaks the rule
    rule: str  # the rule in words, for whoever is refused

    def read(self, request: web.Request) -> Any:
        raw = request.match_info.get(self.name) if self.location == "path" else request.query.get(self.name)
        if raw is None:
            return self.schema.get("default")
        try:
            return self.judge(raw)
        except (ValueError, Unacceptable):
            raise ApiError(422, "invalid_parameter", f"{self.name} must be {self.rule}") from None

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "in": self.location, "required": self.location == "path",
                "description": self.description, "schema": self.schema}


def _device_id(raw: str) -> str:
    if not topics.is_device_id(raw):
        raise ValueError(raw)
    return raw


def _positive_id(raw: str) -> int:
    if not INTEGER_ID.fullmatch(raw):
        raise ValueError(raw)
    return int(raw)


def _limit(raw: str) -> int:
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValueError(raw)
    return int(raw)


def _time(raw: str) -> datetime:
    """Seconds since the epoch, or an RFC 3339 date-time (a leap second read as its :59), clamped to 1970..2100."""
    if re.fullmatch(EPOCH_SECONDS, raw):
        return datetime.fromtimestamp(float(raw), timezone.utc)
    match = _RFC_3339.fullmatch(raw)
    if match is None:
        raise ValueError(raw)
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    offset = timedelta(0) if match[8] in "Zz" else (1 if match[9] == "+" else -1) * timedelta(hours=int(match[10]), minutes=int(match[11]))
    if offset >= timedelta(days=1) or offset <= timedelta(days=-1):
        raise ValueError(raw)
    fraction = int((match[7] or ".0")[1:7].ljust(6, "0"))
    local = datetime(year, month, day, hour, minute, min(second, 59), fraction, timezone(offset))
    try:
        return min(max(local.astimezone(timezone.utc), EARLIEST), LATEST)
    except OverflowError:  # year 1 or 9999 moved past the calendar by its offset: far outside the data either way
        return EARLIEST if year < 1970 else LATEST


def _text(raw: str) -> str:
    return datagram.text(raw, "type", datagram.MAX_TEXT, "invalid_parameter")


def _one_of(*allowed: str) -> Callable[[str], str]:
    def judge(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(raw)
        return raw
    return judge


DEVICE_ID_SCHEMA = {"type": "string", "pattern": anchored(topics.DEVICE_ID), "minLength": 1, "maxLength": 63}
_ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}
_TIME_SCHEMA = {"type": "string", "anyOf": [{"format": "date-time"}, {"pattern": EPOCH_SECONDS}]}

DEVICE_ID = Parameter("device_id", "path", DEVICE_ID_SCHEMA, "The device's id.", _device_id, f"a device id ({topics.DEVICE_ID_RULE})")
RULE_ID = Parameter("rule_id", "path", _ID_SCHEMA, "The alert rule's id.", _positive_id, "a positive integer")
ALERT_ID = Parameter("alert_id", "path", _ID_SCHEMA, "The alert's id.", _positive_id, "a positive integer")
LIMIT = Parameter("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                  "How many items at most.", _limit, f"an integer from 1 to {MAX_LIMIT}")
FROM = Parameter("from", "query", _TIME_SCHEMA, "Start of the range, included: RFC 3339, or seconds since the epoch.",
                 _time, "an RFC 3339 date-time or seconds since the epoch (1 to 4102444799)")
TO = Parameter("to", "query", _TIME_SCHEMA, "End of the range, excluded: RFC 3339, or seconds since the epoch.",
               _time, "an RFC 3339 date-time or seconds since the epoch (1 to 4102444799)")
TYPE = Parameter("type", "query", {"type": "string", "minLength": 1, "maxLength": datagram.MAX_TEXT, "pattern": STORABLE_TEXT},
                 "A measurement type.", _text, f"1..{datagram.MAX_TEXT} characters PostgreSQL can store")
DEVICE = Parameter("device", "query", DEVICE_ID_SCHEMA, "Only this device.", _device_id, f"a device id ({topics.DEVICE_ID_RULE})")
STATE = Parameter("state", "query", {"type": "string", "enum": [FIRING, RESOLVED]}, "Only alerts in this state.",
                  _one_of(FIRING, RESOLVED), f"one of {FIRING}, {RESOLVED}")


def choice(name: str, allowed: tuple[str, ...], default: str, description: str) -> Parameter:
    """A query parameter taking one of ``allowed``."""
    return Parameter(name, "query", {"type": "string", "enum": list(allowed), "default": default}, description,
                     _one_of(*allowed), f"one of {', '.join(allowed)}")


def time_range(request: web.Request) -> tuple[datetime | None, datetime | None]:
    """``from`` (included) and ``to`` (excluded), the one range convention of every route. A range whose from
    is not before its to holds nothing: its answer is empty, not an error (each time is valid on its own)."""
    return FROM.read(request), TO.read(request)
