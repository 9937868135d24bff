"""The API's device routes: devices, their telemetry, and the tenant's licence and counts."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Counter

from iotenant_workloads.api import requests as api_requests
from iotenant_workloads.api.parameters import DEVICE_ID, FROM, LIMIT, TO, TYPE, time_range
from iotenant_workloads.api.requests import ApiError, Route
from iotenant_workloads.api.schemas import ANY_OBJECT, BOOLEAN, INTEGER, NUMBER, TEXT, TIME, list_of, named, nullable, record

if TYPE_CHECKING:
    from iotenant_workloads.api.customer_api import CustomerApi

# The telemetry routes' statements (the latency benchmark times them bare beside the routes).
LAST_OF_TYPE = "SELECT ts, type, val, unit, seq FROM telemetry WHERE device_id = %s AND type = %s ORDER BY ts DESC LIMIT 1"
NEWEST_FIRST = "SELECT ts, type, val, unit, seq FROM telemetry WHERE {clauses} ORDER BY ts DESC LIMIT %s"
# How old the counts of /api/v1/stats may be.
STATS_MAX_AGE_SECONDS = 30.0
COUNTS_TAKEN = Counter("iotenant_api_tenant_counts_total", "Times the tenant's counts were taken from the database (/api/v1/stats)")


async def list_devices(api: CustomerApi, request: web.Request) -> Any:
    limit = LIMIT.read(request)
    rows = await api.query(
        "SELECT device_id, first_seen, last_seen, online FROM devices ORDER BY device_id LIMIT %s", (limit,)
    )
    return {"devices": [_device(row) for row in rows], "count": len(rows)}

def _device(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["device_id"], "online": row["online"], "firstSeen": api_requests.iso(row["first_seen"]), "lastSeen": api_requests.iso(row["last_seen"])}

async def get_device(api: CustomerApi, request: web.Request) -> Any:
    row = await api.device_or_404(DEVICE_ID.read(request))
    return {**_device(row), "hello": row.get("hello"), "stateChangedAt": api_requests.iso(row.get("state_changed_at"))}

async def last_telemetry(api: CustomerApi, request: web.Request) -> Any:
    device_id = DEVICE_ID.read(request)
    kind = TYPE.read(request)
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
    device_id = DEVICE_ID.read(request)
    (since, until), kind, limit = time_range(request), TYPE.read(request), LIMIT.read(request)
    clauses, parameters = api_requests.where(("device_id = %s", device_id), ("type = %s", kind), ("ts >= %s", since), ("ts < %s", until))
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


_DEVICE = {"id": TEXT, "online": BOOLEAN, "firstSeen": TIME, "lastSeen": TIME}
DEVICE = named("Device", record(**_DEVICE))
MEASUREMENT = named("Measurement", record(ts=TIME, type=TEXT, val=NUMBER, unit=nullable(TEXT), seq=INTEGER))
_MEASUREMENTS = {"deviceId": TEXT, "measurements": list_of(MEASUREMENT)}

ROUTES = [
    Route("GET", "/api/v1/devices", list_devices, "List devices, by id.", "listDevices", (LIMIT,),
          response=named("DeviceList", record(devices=list_of(DEVICE), count=INTEGER))),
    Route("GET", "/api/v1/devices/{device_id}", get_device, "One device: online state, first and last seen, hello.", "getDevice",
          (DEVICE_ID,), response=named("DeviceDetail", record(**_DEVICE, hello=nullable(ANY_OBJECT), stateChangedAt=nullable(TIME))),
          errors=(404,)),
    Route("GET", "/api/v1/devices/{device_id}/telemetry/last", last_telemetry, "Latest measurement per type.", "getLastTelemetry",
          (DEVICE_ID, TYPE), response=named("LatestMeasurements", record(**_MEASUREMENTS)), errors=(404,)),
    Route("GET", "/api/v1/devices/{device_id}/telemetry", telemetry,
          "Measurements from (included) to (excluded), newest first.", "listTelemetry", (DEVICE_ID, FROM, TO, TYPE, LIMIT),
          response=named("Telemetry", record(**_MEASUREMENTS, count=INTEGER)), errors=(404,)),
]
_LIMITS = named("Limits", record(maxDevices=INTEGER, maxFleets=INTEGER, retentionDays=INTEGER, maxMessagesPerSecond=INTEGER, maxAlertRules=INTEGER))
TENANT_ROUTES = [
    Route("GET", "/api/v1/licence", licence_state, "The verified licence: plan, features, limits, expiry.", "getLicence",
          response=named("Licence", record(plan=TEXT, subject=TEXT, issuer=TEXT, id=TEXT, expiresAt=TIME,
                          features={"type": "object", "additionalProperties": BOOLEAN}, limits=_LIMITS,
                          monitoring=record(tier={"enum": ["shared", "dedicated"]}, retentionDays=INTEGER, storageGb=INTEGER)))),
    Route("GET", "/api/v1/stats", stats, "Counts of devices, measurements, commands and refused messages.", "getStats",
          response=named("Stats", record(devices=INTEGER, online=INTEGER, measurements=INTEGER, commands=INTEGER,
                          rejected={"type": "object", "additionalProperties": INTEGER}, countedAt=nullable(TIME), deviceLimit=INTEGER))),
]
