"""The route table's row (what ``/openapi.json`` says of a route and which handler answers it) and what a
request carries beyond its parameters: a JSON body, judged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from iotenant_workloads import untrusted_json
from iotenant_workloads.api.customer_api import CustomerApi
from iotenant_workloads.api.errors import JSON, ApiError
from iotenant_workloads.api.parameters import Parameter
from iotenant_workloads.untrusted_json import Unacceptable

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Route:
    """One row of the route table, and what ``/openapi.json`` says about it: the parameters its handler reads
    (the same definitions judge them), the body it takes, the answer it gives and what can follow it."""

    method: str
    path: str
    handler: Callable[[CustomerApi, web.Request], Awaitable[Any]]
    summary: str
    operation_id: str
    parameters: tuple[Parameter, ...] = ()
    body: dict[str, Any] | None = None  # JSON Schema of the request body
    success: str = "200"
    response: dict[str, Any] | None = None  # JSON Schema of the success body (None: no body, as 204)
    produces: tuple[str, ...] = field(default=(JSON,))
    # OpenAPI links from the success answer: name -> (operationId, {parameter: runtime expression}).
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    # The errors this route answers besides those of every route (401, 429, 503), by status.
    errors: tuple[int, ...] = ()


def iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object that PostgreSQL can store (size and nesting bounded), sent as JSON."""
    if request.content_type != JSON:
        raise ApiError(415, "unsupported_media_type", f"the body must be sent as {JSON}, not {request.content_type or 'untyped'}")
    payload = await request.read()  # aiohttp refuses bodies over its client_max_size (1 MiB) with 413
    try:
        return untrusted_json.storable(untrusted_json.parse_object(payload, MAX_BODY_BYTES), "the body")
    except Unacceptable as error:
        raise ApiError(422, "invalid_body", f"the body must be a JSON object: {error.detail or error.reason}") from None


def where(*conditions: tuple[str, object | None]) -> tuple[str, list[object]]:
    """``a AND b ...`` of the SQL conditions whose value is given (each takes one ``%s``), and those values."""
    given = [(sql, value) for sql, value in conditions if value is not None]
    return " AND ".join(sql for sql, _ in given) or "true", [value for _, value in given]


