"""``iotenant api``: the customer's REST API over the tenant database.

Bearer-token auth (token from a mounted file, constant-time comparison); every error is JSON with
a stable ``error`` code; features not in the verified licence give 403 ``feature_not_licensed``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from psycopg_pool import AsyncConnectionPool

from iotenant import logs
from iotenant.environment_flags import flag
from iotenant.vocabulary.contract import API_PORT, API_TOKEN_FILE, PROBE_TIMEOUT_SECONDS, Env
from iotenant_workloads.api.command_publisher import CommandPublisher
from iotenant_workloads.api.customer_api import CustomerApi
from iotenant_workloads.api.errors import ApiError, StreamBroken
from iotenant_workloads.api.export_slots import CLIENT_STALL_SECONDS, Exports
from iotenant_workloads.api.openapi import ROUTES, openapi_document
from iotenant_workloads.rate_limits import KeyedBuckets
from iotenant_workloads.service_flags import add_common_flags, mounted_licence, mqtt_password

log = logging.getLogger("iotenant.api")

REQUESTS = Counter("iotenant_api_requests_total", "API requests", ["route", "status"])
MALFORMED = Counter("iotenant_api_malformed_requests_total", "Requests refused before routing because their HTTP could not be parsed")
LATENCY = Histogram("iotenant_api_request_seconds", "API request latency", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
# Client addresses whose request rate is tracked at once (the least recently seen are forgotten first).
MAX_TRACKED_CLIENTS = 10_000


class MalformedRequests(logging.Filter):
    """aiohttp logs a whole traceback for every request it cannot parse: anyone who reaches the port could
    fill the log. Each becomes one line, and is counted."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            MALFORMED.inc()
            detail = " ".join(str(error).split())[:200]
            record.msg, record.args = "malformed request refused (%s): %s", (type(error).__name__, detail)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def add_endpoints(app: web.Application, api: CustomerApi) -> None:
    """/healthz, /readyz and /metrics (no token)."""

    async def healthz(_request: web.Request) -> Any:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        try:
            # Within the kubelet's probe timeout, so that not ready is a 503 with its reason, not a timeout.
            await api.query("SELECT 1", wait_seconds=PROBE_TIMEOUT_SECONDS / 2)
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


def build_app(api: CustomerApi, endpoints: bool) -> web.Application:
    """The customer's API; ``endpoints``: /healthz, /readyz and /metrics too (when they have no port of
    their own: on the public port they would tell anyone the service's state and figures)."""
    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        started = time.perf_counter()
        try:
            if request.path.startswith("/api/"):
                api.admit(request)
            result = await handler(request)
            response = result if isinstance(result, web.StreamResponse) else web.json_response(result)
        except ApiError as error:
            response = web.json_response({"error": error.code, "message": error.message}, status=error.status)
        except StreamBroken:  # its status is sent: closing the connection is all that is left to say
            REQUESTS.labels(route, "broken").inc()
            raise
        except web.HTTPException as error:
            code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(error.status, "http_error")
            allowed = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else {}
            response = web.json_response({"error": code, "message": error.reason}, status=error.status, headers=allowed)
        except Exception:  # never a stack trace to the client
            log.exception("unexpected error on %s %s", request.method, request.path)
            response = web.json_response({"error": "internal_error", "message": "unexpected error"}, status=500)
        REQUESTS.labels(route, str(response.status)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)
        return response

    app = web.Application(middlewares=[errors])
    for route in ROUTES:
        app.router.add_route(route.method, route.path, functools.partial(route.handler, api))

    if endpoints:
        add_endpoints(app, api)

    async def openapi(_request: web.Request) -> Any:
        return openapi_document()

    app.router.add_get("/openapi.json", openapi)
    return app


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    licence = mounted_licence(args)  # served anyway: every route answers 503 licence_invalid until one is mounted
    publisher = CommandPublisher(args.mqtt_host, args.mqtt_port, args.mqtt_username, mqtt_password(args)) if args.mqtt_username else None

    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())

    async def serve() -> None:
        # Autocommit: a route's one statement is one round trip (no BEGIN and COMMIT around it); work of
        # several statements opens its transaction explicitly (CustomerApi.transaction).
        pool = AsyncConnectionPool(args.database_url, min_size=2, max_size=args.pool_size, open=False, timeout=5,
                                   kwargs={"autocommit": True})
        await pool.open(wait=False)
        api = CustomerApi(pool, licence, Path(args.token_file), publisher, KeyedBuckets(args.requests_per_second, MAX_TRACKED_CLIENTS),
                          Exports(stall_seconds=args.export_stall_seconds))
        app = build_app(api, endpoints=args.metrics_port == args.port)
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
    flag(parser, "--database-url", Env.DATABASE_URL, "PostgreSQL connection URL", required=True)
    flag(parser, "--token-file", Env.API_TOKEN_FILE, "file holding the bearer token", default=API_TOKEN_FILE)
    flag(parser, "--address", "IOTENANT_API_ADDRESS", "address to listen on", default="0.0.0.0")
    flag(parser, "--port", Env.API_PORT, "API port", kind=int, default=API_PORT)
    flag(parser, "--pool-size", "IOTENANT_DATABASE_POOL_SIZE", "most database connections", kind=int, default=10)
    flag(parser, "--requests-per-second", "IOTENANT_API_REQUESTS_PER_SECOND", "requests per second per client before 429",
         kind=float, default=200.0)
    flag(parser, "--export-stall-seconds", "IOTENANT_EXPORT_STALL_SECONDS",
         "how long an export's client may take no data before the export ends (it holds a database connection)",
         kind=float, default=CLIENT_STALL_SECONDS)
    add_common_flags(parser)
    parser.set_defaults(run=_run)
