"""The API's device routes: devices, their telemetry, and the tenant's licence and counts."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Counter

from iotenant_workloads.api import requests as api_requests
from iotenant_workloads.api.requests import ApiError, Route

if TYPE_CHECKING:
    from iotenant_workloads.api.customer_api import CustomerApi

# The telemetry routes' statements (the latency benchmark times them bare beside the routes).
LAST_OF_TYPE = "SELECT ts, type, val, unit, seq FROM telemetry WHERE device_id = %s AND type = %s ORDER BY ts DESC LIMIT 1"
NEWEST_FIRST = "SELECT ts, type, val, unit, seq FROM telemetry WHERE {clauses} ORDER BY ts DESC LIMIT %s"
# How old the counts of /api/v1/stats may be.
STATS_MAX_AGE_SECONDS = 30.0
COUNTS_TAKEN = Counter("iotenant_api_tenant_counts_total", "Times the tenant's counts were taken from the database (/api/v1/stats)")


async def list_devices(api: CustomerApi, request: web.Request) -> Any:
    limit = api_requests.limit(request)
    rows = await api.query(
        "SELECT device_id, first_seen, last_seen, online FROM devices ORDER BY device_id LIMIT %s", (limit,)
    )
    return {"devices": [_device(row) for row in rows], "count": len(rows)}

def _device(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["device_id"], "online": row["online"], "firstSeen": api_requests.iso(row["first_seen"]), "lastSeen": api_requests.iso(row["last_seen"])}

async def get_device(api: CustomerApi, request: web.Request) -> Any:
    row = await api.device_or_404(api_requests.path_device_id(request))
    return {**_device(row), "hello": row.get("hello"), "stateChangedAt": api_requests.iso(row.get("state_changed_at"))}

async def last_telemetry(api: CustomerApi, request: web.Request) -> Any:
    device_id = api_requests.path_device_id(request)
    kind = api_requests.type_parameter(request)
    if kind:
        rows = await api.query(LAST_OF_TYPE, (device_id, kind))
    else:
        rows = await api.query(
            "SELECT DISTINCT ON (type) ts, type, val, unit, seq FROM telemetry WHERE device_id = %s "
            "AND ts >= (SELECT max(ts) FROM telemetry WHERE device_id = %s) - interval '1 day' ORDER BY type, ts DESC",
            (device_id, device_id),
        )
    if not rows:
        await api.device_or_404(device_id)
        raise ApiError(404, "no_telemetry", f"device {device_id!r} has no telemetry" + (f" of type {kind!r}" if kind else ""))
    return {"deviceId": device_id, "measurements": [_measurement(row) for row in rows]}

def _measurement(row: dict[str, Any]) -> dict[str, Any]:
    return {"ts": api_requests.iso(row["ts"]), "type": row["type"], "val": row["val"], "unit": row["unit"], "seq": row["seq"]}

async def telemetry(api: CustomerApi, request: web.Request) -> Any:
    device_id = api_requests.path_device_id(request)
    since, until, kind, limit = api_requests.time_parameter(request, "from"), api_requests.time_parameter(request, "to"), api_requests.type_parameter(request), api_requests.limit(request)
    if since and until and since > until:
        raise ApiError(422, "invalid_parameter", "from must not be after to")
    clauses, parameters = api_requests.where(("device_id = %s", device_id), ("type = %s", kind), ("ts >= %s", since), ("ts <= %s", until))
    rows = await api.query(NEWEST_FIRST.format(clauses=clauses), (*parameters, limit))
    if not rows:
        await api.device_or_404(device_id)
    return {"deviceId": device_id, "measurements": [_measurement(row) for row in rows], "count": len(rows)}


async def licence_state(api: CustomerApi, request: web.Request) -> Any:
    claims = api.claims()
    return {"plan": claims.plan, "subject": claims.sub, "issuer": claims.iss, "id": claims.jti,
            "expiresAt": datetime.fromtimestamp(claims.exp, timezone.utc).isoformat().replace("+00:00", "Z"),
            "features": vars(claims.features), "limits": vars(claims.limits), "monitoring": vars(claims.monitoring)}

class TenantCounts:
    """The tenant's counts, computed at most once every ``STATS_MAX_AGE_SECONDS`` and by one request at a
    time: counting every measurement reads the whole table, which no request rate may repeat at will."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._value: dict[str, Any] | None = None
        self._taken = 0.0
        self._taken_at = datetime.now(timezone.utc)

    async def get(self, api: CustomerApi) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._taken >= STATS_MAX_AGE_SECONDS:
                (counts,) = await api.query(
                    "SELECT (SELECT count(*) FROM devices) AS devices, (SELECT count(*) FROM devices WHERE online) AS online, "
                    "(SELECT count(*) FROM telemetry) AS measurements, (SELECT count(*) FROM commands) AS commands"
                )
                rejected = await api.query("SELECT reason, sum(count)::bigint AS n FROM refusal_counts GROUP BY reason ORDER BY reason")
                self._value = {**counts, "rejected": {r["reason"]: r["n"] for r in rejected}}
                self._taken, self._taken_at = time.monotonic(), datetime.now(timezone.utc)
                COUNTS_TAKEN.inc()
            return self._value

    def counted_at(self) -> str | None:
        return api_requests.iso(self._taken_at) if self._value is not None else None


async def stats(api: CustomerApi, request: web.Request) -> Any:
    counts = await api.counts.get(api)
    return {**counts, "countedAt": api.counts.counted_at(), "deviceLimit": api.claims().limits.maxDevices}


ROUTES = [
    Route("GET", "/api/v1/devices", list_devices, "List devices.", ("limit",)),
    Route("GET", "/api/v1/devices/{device_id}", get_device, "One device: online state, first and last seen, hello."),
    Route("GET", "/api/v1/devices/{device_id}/telemetry/last", last_telemetry, "Latest measurement per type.", ("type",)),
    Route("GET", "/api/v1/devices/{device_id}/telemetry", telemetry, "Measurements, newest first.", ("from", "to", "type", "limit")),
]
TENANT_ROUTES = [
    Route("GET", "/api/v1/licence", licence_state, "The verified licence: plan, features, limits, expiry."),
    Route("GET", "/api/v1/stats", stats, "Counts of devices, measurements, commands and refused messages."),
]
