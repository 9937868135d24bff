"""The API's device routes: devices, their telemetry, and the tenant's licence and counts."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from iotenant_workloads.api import route as api_route
from iotenant_workloads.api.customer_api import CustomerApi
from iotenant_workloads.api.errors import ApiError
from iotenant_workloads.api.parameters import DEVICE_ID, FROM, LIMIT, TO, TYPE, time_range
from iotenant_workloads.api.route import Route
from iotenant_workloads.api.schemas import ANY_OBJECT, BOOLEAN, INTEGER, NUMBER, TEXT, TIME, list_of, named, nullable, record

# The telemetry routes' statements (the latency benchmark times them bare beside the routes).
LAST_OF_TYPE = "SELECT ts, type, val, unit, seq FROM telemetry WHERE device_id = %s AND type = %s ORDER BY ts DESC LIMIT 1"
NEWEST_FIRST = "SELECT ts, type, val, unit, seq FROM telemetry WHERE {clauses} ORDER BY ts DESC LIMIT %s"


async def list_devices(api: CustomerApi, request: web.Request) -> Any:
    limit = LIMIT.read(request)
    rows = await api.query(
        "SELECT device_id, first_seen, last_seen, online FROM devices ORDER BY device_id LIMIT %s", (limit,)
    )
    return {"devices": [_device(row) for row in rows], "count": len(rows)}

def _device(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["device_id"], "online": row["online"], "firstSeen": api_route.iso(row["first_seen"]), "lastSeen": api_route.iso(row["last_seen"])}

async def get_device(api: CustomerApi, request: web.Request) -> Any:
    row = await api.device_or_404(DEVICE_ID.read(request))
    return {**_device(row), "hello": row.get("hello"), "stateChangedAt": api_route.iso(row.get("state_changed_at"))}

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
    return {"ts": api_route.iso(row["ts"]), "type": row["type"], "val": row["val"], "unit": row["unit"], "seq": row["seq"]}

async def telemetry(api: CustomerApi, request: web.Request) -> Any:
    device_id = DEVICE_ID.read(request)
    (since, until), kind, limit = time_range(request), TYPE.read(request), LIMIT.read(request)
    clauses, parameters = api_route.where(("device_id = %s", device_id), ("type = %s", kind), ("ts >= %s", since), ("ts < %s", until))
    rows = await api.query(NEWEST_FIRST.format(clauses=clauses), (*parameters, limit))
    if not rows:
        await api.device_or_404(device_id)
    return {"deviceId": device_id, "measurements": [_measurement(row) for row in rows], "count": len(rows)}


async def licence_state(api: CustomerApi, request: web.Request) -> Any:
    claims = api.claims()
    return {"plan": claims.plan, "subject": claims.sub, "issuer": claims.iss, "id": claims.jti,
            "expiresAt": datetime.fromtimestamp(claims.exp, timezone.utc).isoformat().replace("+00:00", "Z"),
            "features": vars(claims.features), "limits": vars(claims.limits), "monitoring": vars(claims.monitoring)}

async def stats(api: CustomerApi, request: web.Request) -> Any:
    counts = await api.counts.get(api.query)
    return {**counts, "countedAt": api_route.iso(api.counts.counted_at()), "deviceLimit": api.claims().limits.maxDevices}


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
