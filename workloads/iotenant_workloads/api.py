"""``iotenant api``: the customer's REST API over the tenant database.

Bearer-token auth (token from a mounted file, constant-time comparison); every error is JSON with
a stable ``error`` code; features not in the verified licence give 403 ``feature_not_licensed``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hmac
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import psycopg
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from psycopg import AsyncCursor
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from iotenant import logs, topics
from iotenant.environment_flags import flag
from iotenant_workloads import alert_routes, api_requests, export_routes, ota_routes
from iotenant_workloads.api_requests import ApiError, Route, StreamBroken
from iotenant_workloads.ingest import add_common_flags
from iotenant_workloads.mounted_licence import MountedLicence
from iotenant_workloads.rate_limits import KeyedBuckets

log = logging.getLogger("iotenant.api")
T = TypeVar("T")

REQUESTS = Counter("iotenant_api_requests_total", "API requests", ["route", "status"])
LATENCY = Histogram("iotenant_api_request_seconds", "API request latency", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
DATABASE_UP = Gauge("iotenant_api_database_up", "1 when the last database query succeeded")
BROKER_UP = Gauge("iotenant_api_broker_up", "1 while connected to the broker (commands)")

MAX_COMMAND_ID = 64
COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Client addresses whose request rate is tracked at once (the least recently seen are forgotten first).
MAX_TRACKED_CLIENTS = 10_000
API_KEY = web.AppKey("iotenant_api", object)


class CustomerApi:
    def __init__(self, pool: AsyncConnectionPool, licence: MountedLicence, token_file: Path, publisher: "CommandPublisher | None", rate: KeyedBuckets) -> None:
        self.pool = pool
        self.licence = licence
        self.token_file = token_file
        self.publisher = publisher
        self.rate = rate
        self.exports = export_routes.Exports()
        self._token = b""
        self._token_stamp = 0.0
        self._token_checked = 0.0

    # ------------------------------------------------------------ auth, features, errors

    def _expected_token(self) -> bytes:
        """The mounted token, re-read when the file changes (looked at once a second at most)."""
        now = time.monotonic()
        if now - self._token_checked < MountedLicence.RECHECK_SECONDS and self._token:
            return self._token
        self._token_checked = now
        stamp = self.token_file.stat().st_mtime
        if stamp != self._token_stamp:
            self._token, self._token_stamp = self.token_file.read_text().strip().encode(), stamp
        return self._token

    def authorise(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        expected = self._expected_token()
        if scheme.lower() != "bearer" or not expected or not hmac.compare_digest(presented.strip().encode(), expected):
            raise ApiError(401, "unauthorized", "a valid bearer token is required")

    def claims(self) -> Any:
        verified = self.licence.refresh()
        if verified is None:
            raise ApiError(503, "licence_invalid", f"no valid licence: {self.licence.problem}")
        return verified.claims

    def require_feature(self, feature: str) -> None:
        if not getattr(self.claims().features, feature):
            raise ApiError(403, "feature_not_licensed", f"the licence does not include {feature}")

    async def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        async def one_statement(cursor: AsyncCursor[dict[str, Any]]) -> list[dict[str, Any]]:
            await cursor.execute(sql, parameters)
            return await cursor.fetchall() if cursor.description else []

        return await self.transaction(one_statement)

    async def transaction(self, work: Callable[[AsyncCursor[dict[str, Any]]], Awaitable[T]]) -> T:
        """``work`` in one transaction (committed when it returns); database trouble becomes an ``ApiError``."""
        try:
            async with self.pool.connection(timeout=5) as connection:
                async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
                    result = await work(cursor)
            DATABASE_UP.set(1)
            return result
        except (psycopg.OperationalError, TimeoutError) as error:
            DATABASE_UP.set(0)
            raise ApiError(503, "database_unavailable", "the database is not reachable; retry later") from error
        except (psycopg.DataError, UnicodeError) as error:  # a value the checks above let through
            raise ApiError(422, "invalid_parameter", "a parameter holds a value the database cannot take") from error

    async def send(self, device_id: str, cmd_id: str, name: str, args: dict[str, Any]) -> None:
        """Publish a command that is already recorded to ``iot/<device_id>/command`` (QoS 1)."""
        if self.publisher is None:
            raise ApiError(503, "broker_unavailable", "the broker is not reachable; retry later")
        message = {"cmd_id": cmd_id, "name": name, "args": args, "ts": time.time()}
        await asyncio.to_thread(self.publisher.publish, device_id, message)

    def require_broker(self) -> None:
        if self.publisher is None or not self.publisher.connected.is_set():
            raise ApiError(503, "broker_unavailable", "the broker is not reachable; retry later")

    async def device_or_404(self, device_id: str) -> dict[str, Any]:
        rows = await self.query("SELECT * FROM devices WHERE device_id = %s", (device_id,))
        if not rows:
            raise ApiError(404, "device_not_found", f"no device {device_id!r} has reported")
        return rows[0]

    # ------------------------------------------------------------ routes

    async def list_devices(self, request: web.Request) -> Any:
        limit = api_requests.limit(request)
        rows = await self.query(
            "SELECT device_id, first_seen, last_seen, online FROM devices ORDER BY device_id LIMIT %s", (limit,)
        )
        return {"devices": [self._device(row) for row in rows], "count": len(rows)}

    def _device(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"id": row["device_id"], "online": row["online"], "firstSeen": api_requests.iso(row["first_seen"]), "lastSeen": api_requests.iso(row["last_seen"])}

    async def get_device(self, request: web.Request) -> Any:
        row = await self.device_or_404(api_requests.path_device_id(request))
        return {**self._device(row), "hello": row.get("hello"), "stateChangedAt": api_requests.iso(row.get("state_changed_at"))}

    async def last_telemetry(self, request: web.Request) -> Any:
        device_id = api_requests.path_device_id(request)
        kind = api_requests.type_parameter(request)
        if kind:
            rows = await self.query(
                "SELECT ts, type, val, unit, seq FROM telemetry WHERE device_id = %s AND type = %s ORDER BY ts DESC LIMIT 1",
                (device_id, kind),
            )
        else:
            rows = await self.query(
                "SELECT DISTINCT ON (type) ts, type, val, unit, seq FROM telemetry WHERE device_id = %s "
                "AND ts >= (SELECT max(ts) FROM telemetry WHERE device_id = %s) - interval '1 day' ORDER BY type, ts DESC",
                (device_id, device_id),
            )
        if not rows:
            await self.device_or_404(device_id)
            raise ApiError(404, "no_telemetry", f"device {device_id!r} has no telemetry" + (f" of type {kind!r}" if kind else ""))
        return {"deviceId": device_id, "measurements": [self._measurement(row) for row in rows]}

    def _measurement(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"ts": api_requests.iso(row["ts"]), "type": row["type"], "val": row["val"], "unit": row["unit"], "seq": row["seq"]}

    async def telemetry(self, request: web.Request) -> Any:
        device_id = api_requests.path_device_id(request)
        since, until, kind, limit = api_requests.time_parameter(request, "from"), api_requests.time_parameter(request, "to"), api_requests.type_parameter(request), api_requests.limit(request)
        if since and until and since > until:
            raise ApiError(422, "invalid_parameter", "from must not be after to")
        clauses, parameters = ["device_id = %s"], [device_id]
        if kind:
            clauses.append("type = %s")
            parameters.append(kind)
        if since:
            clauses.append("ts >= %s")
            parameters.append(since)
        if until:
            clauses.append("ts <= %s")
            parameters.append(until)
        rows = await self.query(
            f"SELECT ts, type, val, unit, seq FROM telemetry WHERE {' AND '.join(clauses)} ORDER BY ts DESC LIMIT %s",
            (*parameters, limit),
        )
        if not rows:
            await self.device_or_404(device_id)
        return {"deviceId": device_id, "measurements": [self._measurement(row) for row in rows], "count": len(rows)}

    async def send_command(self, request: web.Request) -> Any:
        self.require_feature("commands")
        device_id = api_requests.path_device_id(request)
        await self.device_or_404(device_id)
        body = await api_requests.json_object(request)
        if not isinstance(body.get("name"), str) or not 1 <= len(body["name"]) <= 64:
            raise ApiError(422, "invalid_body", "name (1..64 characters) is required")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise ApiError(422, "invalid_body", "args must be an object")
        cmd_id = body.get("cmd_id") or str(uuid.uuid4())
        if not isinstance(cmd_id, str) or not COMMAND_ID.fullmatch(cmd_id):
            raise ApiError(422, "invalid_body", f"cmd_id must be 1..{MAX_COMMAND_ID} of [A-Za-z0-9._:-], starting with a letter or digit")
        self.require_broker()
        rows = await self.query(
            "INSERT INTO commands (cmd_id, device_id, name, args) VALUES (%s, %s, %s, %s) ON CONFLICT (cmd_id) DO NOTHING RETURNING cmd_id",
            (cmd_id, device_id, body["name"], json.dumps(args)),
        )
        if not rows:
            raise ApiError(409, "command_exists", f"a command with cmd_id {cmd_id!r} exists already")
        await self.send(device_id, cmd_id, body["name"], args)
        return web.json_response({"cmdId": cmd_id, "status": "sent"}, status=202)

    async def list_commands(self, request: web.Request) -> Any:
        self.require_feature("commands")
        device_id = api_requests.path_device_id(request)
        rows = await self.query(
            "SELECT cmd_id, name, args, status, created_at, acked_at, result FROM commands WHERE device_id = %s "
            "ORDER BY created_at DESC LIMIT %s",
            (device_id, api_requests.limit(request)),
        )
        return {"deviceId": device_id, "commands": [
            {"cmdId": r["cmd_id"], "name": r["name"], "args": r["args"], "status": r["status"],
             "createdAt": api_requests.iso(r["created_at"]), "ackedAt": api_requests.iso(r["acked_at"]), "result": r["result"]} for r in rows
        ]}

    async def licence_state(self, request: web.Request) -> Any:
        claims = self.claims()
        return {"plan": claims.plan, "subject": claims.sub, "issuer": claims.iss, "id": claims.jti,
                "expiresAt": datetime.fromtimestamp(claims.exp, timezone.utc).isoformat().replace("+00:00", "Z"),
                "features": vars(claims.features), "limits": vars(claims.limits), "monitoring": vars(claims.monitoring)}

    async def stats(self, request: web.Request) -> Any:
        (counts,) = await self.query(
            "SELECT (SELECT count(*) FROM devices) AS devices, (SELECT count(*) FROM devices WHERE online) AS online, "
            "(SELECT count(*) FROM telemetry) AS measurements, (SELECT count(*) FROM commands) AS commands"
        )
        rejected = await self.query("SELECT reason, sum(count)::bigint AS n FROM refusal_counts GROUP BY reason ORDER BY reason")
        limits = self.claims().limits
        return {**counts, "rejected": {r["reason"]: r["n"] for r in rejected}, "deviceLimit": limits.maxDevices}


COMMAND_BODY: dict[str, Any] = {
    "type": "object", "required": ["name"], "additionalProperties": True,
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64}, "args": {"type": "object"},
                   "cmd_id": {"type": "string", "pattern": COMMAND_ID.pattern}},
}

ROUTES: list[Route] = [
    Route("GET", "/api/v1/devices", CustomerApi.list_devices, "List devices.", ("limit",)),
    Route("GET", "/api/v1/devices/{device_id}", CustomerApi.get_device, "One device: online state, first and last seen, hello."),
    Route("GET", "/api/v1/devices/{device_id}/telemetry/last", CustomerApi.last_telemetry, "Latest measurement per type.", ("type",)),
    Route("GET", "/api/v1/devices/{device_id}/telemetry", CustomerApi.telemetry, "Measurements, newest first.",
          ("from", "to", "type", "limit")),
    Route("POST", "/api/v1/devices/{device_id}/commands", CustomerApi.send_command, "Send a command (needs features.commands).",
          body=COMMAND_BODY, success="202"),
    Route("GET", "/api/v1/devices/{device_id}/commands", CustomerApi.list_commands,
          "Commands and their acknowledgement (needs features.commands).", ("limit",)),
    *alert_routes.ROUTES,
    *export_routes.ROUTES,
    *ota_routes.ROUTES,
    Route("GET", "/api/v1/licence", CustomerApi.licence_state, "The verified licence: plan, features, limits, expiry."),
    Route("GET", "/api/v1/stats", CustomerApi.stats, "Counts of devices, measurements, commands and refused messages."),
]

ERROR_RESPONSES = (("401", "unauthorized"), ("403", "feature_not_licensed"), ("404", "not found"), ("409", "conflict"),
                   ("422", "invalid_parameter or invalid_body"), ("429", "rate_limited"), ("503", "unavailable"))


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"{([a-z_]+)}", route.path)]
        parameters += [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in route.query]
        operation: dict[str, Any] = {
            "summary": route.summary, "parameters": parameters, "security": [{"bearer": []}],
            "responses": {route.success: {"description": "OK", "content": {kind: {} for kind in route.produces}}}
            | {code: {"description": text} for code, text in ERROR_RESPONSES},
        }
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "iotenant customer API", "version": "v1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def add_endpoints(app: web.Application, api: CustomerApi) -> None:
    """/healthz, /readyz and /metrics (no token)."""

    async def healthz(_request: web.Request) -> Any:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        try:
            await api.query("SELECT 1")
        except ApiError as error:
            return web.json_response({"status": "not_ready", "detail": error.message}, status=503)
        if api.licence.refresh() is None:
            return web.json_response({"status": "not_ready", "detail": api.licence.problem}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def build_app(api: CustomerApi) -> web.Application:
    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        started = time.perf_counter()
        try:
            if request.path.startswith("/api/"):
                # The rate first: guessing tokens is throttled like everything else.
                if not api.rate.take(request.remote or "?"):
                    raise ApiError(429, "rate_limited", "too many requests; slow down")
                api.authorise(request)
            result = await handler(request)
            response = result if isinstance(result, web.StreamResponse) else web.json_response(result)
        except ApiError as error:
            response = web.json_response({"error": error.code, "message": error.message}, status=error.status)
        except StreamBroken:  # its status is sent: closing the connection is all that is left to say
            REQUESTS.labels(route, "broken").inc()
            raise
        except web.HTTPException as error:
            code = {404: "not_found", 405: "method_not_allowed"}.get(error.status, "http_error")
            response = web.json_response({"error": code, "message": error.reason}, status=error.status)
        except Exception:  # never a stack trace to the client
            log.exception("unexpected error on %s %s", request.method, request.path)
            response = web.json_response({"error": "internal_error", "message": "unexpected error"}, status=500)
        REQUESTS.labels(route, str(response.status)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)
        return response

    app = web.Application(middlewares=[errors])
    for route in ROUTES:
        app.router.add_route(route.method, route.path, functools.partial(route.handler, api))

    add_endpoints(app, api)

    async def openapi(_request: web.Request) -> Any:
        return openapi_document()

    app.router.add_get("/openapi.json", openapi)
    return app


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


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    licence = MountedLicence(Path(args.licence_file), Path(args.jwks_file), args.customer_id, args.licence_grace_seconds)
    if licence.refresh() is None:  # served anyway: every route answers 503 licence_invalid until one is mounted
        log.error("no valid licence: %s", licence.problem)
    password = Path(args.mqtt_password_file).read_text().strip() if args.mqtt_password_file else args.mqtt_password
    publisher = CommandPublisher(args.mqtt_host, args.mqtt_port, args.mqtt_username, password) if args.mqtt_username else None

    async def serve() -> None:
        pool = AsyncConnectionPool(args.database_url, min_size=2, max_size=args.pool_size, open=False, timeout=5)
        await pool.open(wait=False)
        api = CustomerApi(pool, licence, Path(args.token_file), publisher, KeyedBuckets(args.requests_per_second, MAX_TRACKED_CLIENTS))
        app = build_app(api)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sites = [web.TCPSite(runner, args.address, args.port)]
        if args.metrics_port != args.port:
            endpoints_app = web.Application()
            add_endpoints(endpoints_app, api)
            endpoints_runner = web.AppRunner(endpoints_app, access_log=None)
            await endpoints_runner.setup()
            sites.append(web.TCPSite(endpoints_runner, args.metrics_address, args.metrics_port))
        for site in sites:
            await site.start()
        log.info("API listening on %s:%d (metrics on %d)", args.address, args.port, args.metrics_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()
        await pool.close()

    try:
        asyncio.run(serve())
    finally:
        if publisher:
            publisher.close()
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("api", help="serve the customer's REST API", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(parser, "--database-url", "IOTENANT_DATABASE_URL", "PostgreSQL connection URL", required=True)
    flag(parser, "--token-file", "IOTENANT_API_TOKEN_FILE", "file holding the bearer token", default="/etc/iotenant/api-token/token")
    flag(parser, "--address", "IOTENANT_API_ADDRESS", "address to listen on", default="0.0.0.0")
    flag(parser, "--port", "IOTENANT_API_PORT", "API port", kind=int, default=8080)
    flag(parser, "--pool-size", "IOTENANT_DATABASE_POOL_SIZE", "most database connections", kind=int, default=10)
    flag(parser, "--requests-per-second", "IOTENANT_API_REQUESTS_PER_SECOND", "requests per second per client before 429",
         kind=float, default=200.0)
    add_common_flags(parser)
    parser.set_defaults(run=_run)
