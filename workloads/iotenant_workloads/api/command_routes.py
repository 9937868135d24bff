"""The API's command routes (``features.commands``), and its broker connection that sends them."""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Gauge

from iotenant import topics
from iotenant_workloads.api import requests as api_requests
from iotenant_workloads.api.parameters import DEVICE_ID, LIMIT, STORABLE_TEXT, anchored
from iotenant_workloads.api.requests import ApiError, Route
from iotenant_workloads.api.schemas import ANY_OBJECT, TEXT, TIME, list_of, named, nullable, record

if TYPE_CHECKING:
    from iotenant_workloads.api.customer_api import CustomerApi

BROKER_UP = Gauge("iotenant_api_broker_up", "1 while connected to the broker (commands)")
MAX_COMMAND_ID = 64
COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


async def send_command(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature("commands")
    device_id = DEVICE_ID.read(request)
    await api.device_or_404(device_id)
    body = await api_requests.json_object(request)
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
         "createdAt": api_requests.iso(r["created_at"]), "ackedAt": api_requests.iso(r["acked_at"]), "result": r["result"]} for r in rows
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


class CommandPublisher:
    """The API's broker connection: publishes ``iot/<id>/command`` at QoS 1."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"api-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda *_: (self.connected.set(), BROKER_UP.set(1))
        self.client.on_disconnect = lambda *_: (self.connected.clear(), BROKER_UP.set(0))
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def publish(self, device_id: str, message: dict[str, Any]) -> None:
        info = self.client.publish(topics.device_topic(device_id, topics.COMMAND), json.dumps(message), qos=1)
        info.wait_for_publish(timeout=5)
        if not info.is_published():
            raise ApiError(503, "broker_unavailable", "the broker did not accept the command")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
