"""The API's OTA routes (``features.ota``): start an update on a device, and follow it.

``POST`` records the update and the ``start_ota`` command in one transaction, then publishes the
command; a device runs one update at a time (409 ``ota_in_progress``), unless the running one has
not reported for ``ota.STALE_SECONDS`` (it is then marked failed and replaced). ``GET`` shows the
updates, newest first (the first is the current one), and the device's reports.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from psycopg import AsyncCursor

from iotenant.vocabulary import topics
from iotenant_workloads import ota
from iotenant_workloads.api import route as api_route
from iotenant_workloads.api.customer_api import CustomerApi
from iotenant_workloads.api.errors import ApiError
from iotenant_workloads.api.parameters import DEVICE_ID, LIMIT, anchored
from iotenant_workloads.api.route import Route
from iotenant_workloads.api.schemas import INTEGER, TEXT, TIME, list_of, named, nullable, record

FEATURE = "ota"
DEVICE_LOCK = 4242102  # with the device id's hash: one update decision per device at a time

RUNNING = """
SELECT cmd_id, state, created_at, reported_at FROM ota_updates
WHERE device_id = %s AND state NOT IN ('succeeded', 'failed') ORDER BY created_at DESC LIMIT 1
"""
ABANDON = f"""
UPDATE ota_updates SET state = 'failed', error = %s WHERE cmd_id = %s
  AND COALESCE(reported_at, created_at) < now() - interval '{ota.STALE_SECONDS} seconds'
"""


def _update(row: dict[str, Any]) -> dict[str, Any]:
    return {"cmdId": row["cmd_id"], "version": row["version"], "url": row["url"], "sha256": row["sha256"], "state": row["state"],
            "progress": row["progress"], "error": row["error"], "createdAt": api_route.iso(row["created_at"]),
            "reportedAt": api_route.iso(row["reported_at"])}


def _report(row: dict[str, Any]) -> dict[str, Any]:
    return {"cmdId": row["cmd_id"], "ts": api_route.iso(row["ts"]), "state": row["state"], "progress": row["progress"],
            "version": row["version"], "error": row["error"]}


async def start_update(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature(FEATURE)
    device_id = DEVICE_ID.read(request)
    await api.device_or_404(device_id)
    body = await api_route.json_object(request)
    try:
        update = ota.judge_request(body)
    except ota.InvalidRequest as error:
        raise ApiError(422, "invalid_body", str(error)) from None
    api.require_broker()
    cmd_id = str(uuid.uuid4())

    async def record(cursor: AsyncCursor[dict[str, Any]]) -> None:
        await cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (DEVICE_LOCK, device_id))
        await cursor.execute(RUNNING, (device_id,))
        running = await cursor.fetchone()
        if running is not None:
            await cursor.execute(ABANDON, (f"no report for {ota.STALE_SECONDS} s; replaced by {cmd_id}", running["cmd_id"]))
            if cursor.rowcount == 0:
                raise ApiError(409, "ota_in_progress",
                               f"update {running['cmd_id']} is {running['state']} on {device_id}; wait for it to succeed or fail")
        await cursor.execute("INSERT INTO commands (cmd_id, device_id, name, args) VALUES (%s, %s, %s, %s)",
                             (cmd_id, device_id, topics.START_OTA, json.dumps(update.command_args())))
        await cursor.execute("INSERT INTO ota_updates (cmd_id, device_id, version, url, sha256) VALUES (%s, %s, %s, %s, %s)",
                             (cmd_id, device_id, update.version, update.url, update.sha256))

    await api.transaction(record)
    await api.send(device_id, cmd_id, topics.START_OTA, update.command_args())
    return web.json_response({"cmdId": cmd_id, "state": ota.SENT, **update.command_args()}, status=202)


async def list_updates(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature(FEATURE)
    device_id, most = DEVICE_ID.read(request), LIMIT.read(request)
    updates = await api.query("SELECT * FROM ota_updates WHERE device_id = %s ORDER BY created_at DESC LIMIT %s", (device_id, most))
    reports = await api.query("SELECT * FROM ota_reports WHERE device_id = %s ORDER BY ts DESC, id DESC LIMIT %s", (device_id, most))
    if not updates and not reports:
        await api.device_or_404(device_id)
    shown = [_update(row) for row in updates]
    return {"deviceId": device_id, "current": shown[0] if shown else None, "updates": shown, "reports": [_report(r) for r in reports]}


UPDATE_BODY: dict[str, Any] = {
    "title": "NewOtaUpdate", "type": "object", "required": ["version", "url", "sha256"], "additionalProperties": False,
    "properties": {
        "version": {"type": "string", "pattern": anchored(ota.VERSION)},
        "url": {"type": "string", "format": "uri", "pattern": "^https://", "maxLength": ota.MAX_URL},
        "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
    },
}
UPDATE = named("OtaUpdate", record(cmdId=TEXT, version=TEXT, url=TEXT, sha256=TEXT, state=TEXT, progress=nullable(INTEGER), error=nullable(TEXT),
                createdAt=TIME, reportedAt=nullable(TIME)))
REPORT = named("OtaReport", record(cmdId=TEXT, ts=TIME, state=TEXT, progress=nullable(INTEGER), version=nullable(TEXT), error=nullable(TEXT)))

ROUTES = [
    Route("POST", "/api/v1/devices/{device_id}/ota", start_update, "Start an OTA update on the device (needs features.ota).",
          "startOtaUpdate", (DEVICE_ID,), body=UPDATE_BODY, success="202",
          response=named("OtaStarted", record(cmdId=TEXT, state=TEXT, version=TEXT, url=TEXT, sha256=TEXT)), errors=(403, 404, 409),
          links={"FollowTheUpdate": ("listOtaUpdates", {"device_id": "$request.path.device_id"})}),
    Route("GET", "/api/v1/devices/{device_id}/ota", list_updates, "The device's OTA updates and progress reports (needs features.ota).",
          "listOtaUpdates", (DEVICE_ID, LIMIT),
          response=named("OtaState", record(deviceId=TEXT, current=nullable(UPDATE), updates=list_of(UPDATE), reports=list_of(REPORT))),
          errors=(403, 404)),
]
