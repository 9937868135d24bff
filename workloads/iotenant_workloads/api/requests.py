"""API requests: the route table's row, what a request carries (path and query parameters and JSON
bodies, judged), and ``ApiError``, the JSON answer every refusal becomes (a stable ``error`` code and
a message naming the field and the rule)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from iotenant import topics
from iotenant_workloads import datagram, untrusted_json
from iotenant_workloads.untrusted_json import Unacceptable

if TYPE_CHECKING:
    from iotenant_workloads.api.customer_api import CustomerApi

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_BODY_BYTES = 64 * 1024
INTEGER_ID = re.compile(r"[1-9][0-9]{0,17}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class StreamBroken(Exception):
    """A streamed answer that cannot be finished (its status is sent): the connection is closed, so the
    client sees an incomplete answer rather than a short one that looks whole."""


@dataclass(frozen=True)
class Route:
    """One row of the route table, and what ``/openapi.json`` says about it."""

    method: str
    path: str
    handler: Callable[[CustomerApi, web.Request], Awaitable[Any]]
    summary: str
    query: tuple[str, ...] = ()
    body: dict[str, Any] | None = None  # JSON schema of the request body
    success: str = "200"
    produces: tuple[str, ...] = field(default=("application/json",))


def iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def time_parameter(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return datagram.timestamp_text(raw)
    except Unacceptable:
        raise ApiError(422, "invalid_parameter", f"{name} must be an RFC 3339 time or seconds since the epoch, in 1970..2100") from None


def limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(422, "invalid_parameter", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def type_parameter(request: web.Request) -> str | None:
    raw = request.query.get("type")
    if raw is None:
        return None
    try:
        return datagram.text(raw, "type", datagram.MAX_TEXT, "invalid_parameter")
    except Unacceptable as error:
        raise ApiError(422, "invalid_parameter", str(error.detail or error)) from None


def path_device_id(request: web.Request) -> str:
    raw = request.match_info["device_id"]
    if not topics.is_device_id(raw):
        raise ApiError(422, "invalid_parameter", f"device id must be {topics.DEVICE_ID_RULE}")
    return raw


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object that PostgreSQL can store (size and nesting bounded)."""
    payload = await request.read()  # aiohttp refuses bodies over its client_max_size (1 MiB) with 413
    try:
        return untrusted_json.storable(untrusted_json.parse_object(payload, MAX_BODY_BYTES), "the body")
    except Unacceptable as error:
        raise ApiError(422, "invalid_body", f"the body must be a JSON object: {error.detail or error.reason}") from None


def where(*conditions: tuple[str, object | None]) -> tuple[str, list[object]]:
    """``a AND b ...`` of the SQL conditions whose value is given (each takes one ``%s``), and those values."""
    given = [(sql, value) for sql, value in conditions if value is not None]
    return " AND ".join(sql for sql, _ in given) or "true", [value for _, value in given]


def integer_id(request: web.Request, name: str) -> int:
    """A positive integer id from the path (as PostgreSQL's bigint takes it)."""
    raw = request.match_info[name]
    if not INTEGER_ID.fullmatch(raw):
        raise ApiError(422, "invalid_parameter", f"{name} must be a positive integer")
    return int(raw)


def choice(request: web.Request, name: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
    raw = request.query.get(name, default)
    if raw is not None and raw not in allowed:
        raise ApiError(422, "invalid_parameter", f"{name} must be one of {', '.join(allowed)}")
    return raw


def device_parameter(request: web.Request, name: str = "device") -> str | None:
    raw = request.query.get(name)
    if raw is not None and not topics.is_device_id(raw):
        raise ApiError(422, "invalid_parameter", f"{name} must be a device id ({topics.DEVICE_ID_RULE})")
    return raw
