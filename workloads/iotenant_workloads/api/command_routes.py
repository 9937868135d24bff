"""The API's command routes (``features.commands``)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web

from iotenant_workloads.api import route as api_route
from iotenant_workloads.api.customer_api import CustomerApi
from iotenant_workloads.api.errors import ApiError
from iotenant_workloads.api.parameters import DEVICE_ID, LIMIT, STORABLE_TEXT, anchored
from iotenant_workloads.api.route import Route
from iotenant_workloads.api.schemas import ANY_OBJECT, TEXT, TIME, list_of, named, nullable, record

MAX_COMMAND_ID = 64
COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


async def send_command(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature("commands")
    device_id = DEVICE_ID.read(request)
    await api.device_or_404(device_id)
    body = await api_route.json_object(request)
    unknown = sorted(set(body) - set(COMMAND_BODY["properties"]))
    if unknown:
        raise ApiError(422, "invalid_body", f"unknown field {unknown[0]!r}: allowed are {', '.join(COMMAND_BODY['properties'])}")
    if not isinstance(body.get("name"), str) or not 1 <= len(body["name"]) <= 64:
        raise ApiError(422, "invalid_body", "name (1..64 characters) is required")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ApiError(422, "invalid_body", "args must be an object")
    cmd_id = body["cmd_id"] if "cmd_id" in body else str(uuid.uuid4())  # absent: one is made; null, "" or 0 are refused
    if not isinstance(cmd_id, str) or not COMMAND_ID.fullmatch(cmd_id):
        raise ApiError(422, "invalid_body", f"cmd_id must be 1..{MAX_COMMAND_ID} of [A-Za-z0-9._:-], starting with a letter or digit")
    api.require_broker()
    rows = await api.query(
        "INSERT INTO commands (cmd_id, device_id, name, args) VALUES (%s, %s, %s, %s) ON CONFLICT (cmd_id) DO NOTHING RETURNING cmd_id",
        (cmd_id, device_id, body["name"], json.dumps(args)),
    )
    if not rows:
        raise ApiError(409, "command_exists", f"a command with cmd_id {cmd_id!r} exists already")
    await api.send(device_id, cmd_id, body["name"], args)
    return web.json_response({"cmdId": cmd_id, "status": "sent"}, status=202)

async def list_commands(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature("commands")
    device_id = DEVICE_ID.read(request)
    rows = await api.query(
        "SELECT cmd_id, name, args, status, created_at, acked_at, result FROM commands WHERE device_id = %s "
        "ORDER BY created_at DESC LIMIT %s",
        (device_id, LIMIT.read(request)),
    )
    return {"deviceId": device_id, "commands": [
        {"cmdId": r["cmd_id"], "name": r["name"], "args": r["args"], "status": r["status"],
         "createdAt": api_route.iso(r["created_at"]), "ackedAt": api_route.iso(r["acked_at"]), "result": r["result"]} for r in rows
    ]}


COMMAND_BODY: dict[str, Any] = {
    "title": "NewCommand", "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": STORABLE_TEXT}, "args": ANY_OBJECT,
                   "cmd_id": {"type": "string", "pattern": anchored(COMMAND_ID),
                              "description": "the command's id, for the device's acknowledgement; absent: one is made"}},
}
COMMAND = named("Command", record(cmdId=TEXT, name=TEXT, args=ANY_OBJECT, status=TEXT, createdAt=TIME, ackedAt=nullable(TIME),
                                  result={"description": "what the device acknowledged with, any JSON"}))

ROUTES = [
    Route("POST", "/api/v1/devices/{device_id}/commands", send_command, "Send a command (needs features.commands).",
          "sendCommand", (DEVICE_ID,), body=COMMAND_BODY, success="202",
          response=named("CommandSent", record(cmdId=TEXT, status={"const": "sent"})),
          errors=(403, 404, 409), links={"ListTheDevicesCommands": ("listCommands", {"device_id": "$request.path.device_id"})}),
    Route("GET", "/api/v1/devices/{device_id}/commands", list_commands,
          "Commands and their acknowledgement, newest first (needs features.commands).", "listCommands", (DEVICE_ID, LIMIT),
          response=named("CommandList", record(deviceId=TEXT, commands=list_of(COMMAND))), errors=(403,)),
]
