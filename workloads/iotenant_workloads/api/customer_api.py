"""The API's core: who may ask (bearer token, request rate), what the licence allows, and the database."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from aiohttp import web
from prometheus_client import Gauge
from psycopg import AsyncCursor
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from iotenant_workloads.api.command_publisher import CommandPublisher
from iotenant_workloads.api.errors import ApiError
from iotenant_workloads.api.export_slots import Exports
from iotenant_workloads.api.tenant_counts import TenantCounts
from iotenant_workloads.mounted_licence import MountedLicence
from iotenant_workloads.rate_limits import KeyedBuckets

T = TypeVar("T")
# How long a request waits for a database connection before it is answered 503.
CONNECTION_WAIT_SECONDS = 5.0
DATABASE_UP = Gauge("iotenant_api_database_up", "1 when the last database query succeeded")


class CustomerApi:
    def __init__(self, pool: AsyncConnectionPool, licence: MountedLicence, token_file: Path, publisher: CommandPublisher | None,
                 rate: KeyedBuckets, exports: Exports | None = None) -> None:
        self.pool = pool
        self.licence = licence
        self.token_file = token_file
        self.publisher = publisher
        self.rate = rate
        self.exports = exports or Exports()
        self.counts = TenantCounts()
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

    def holds_token(self, request: web.Request) -> bool:
        """Whether the request presents the tenant's bearer token (compared in constant time)."""
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        expected = self._expected_token()
        return scheme.lower() == "bearer" and bool(expected) and hmac.compare_digest(presented.strip().encode(), expected)

    def admit(self, request: web.Request) -> None:
        """The request's rate, then its token. Requests with the token and requests without it are counted
        apart (per client address each): behind an Ingress every client has the controller's address,
        and a flood of requests without the token must not use up the token holders' rate. Guessing
        tokens is throttled all the same."""
        authorised = self.holds_token(request)
        if not self.rate.take(f"{'token' if authorised else 'anonymous'} {request.remote or '?'}"):
            raise ApiError(429, "rate_limited", "too many requests; slow down")
        if not authorised:
            raise ApiError(401, "unauthorized", "a valid bearer token is required")

    def claims(self) -> Any:
        verified = self.licence.refresh()
        if verified is None:
            raise ApiError(503, "licence_invalid", f"no valid licence: {self.licence.problem}")
        return verified.claims

    def require_feature(self, feature: str) -> None:
        if not getattr(self.claims().features, feature):
            raise ApiError(403, "feature_not_licensed", f"the licence does not include {feature}")

    async def query(self, sql: str, parameters: tuple[Any, ...] = (),
                    wait_seconds: float = CONNECTION_WAIT_SECONDS) -> list[dict[str, Any]]:
        """One statement, committed on its own (the pool's connections are in autocommit: one round trip)."""
        async def one_statement(cursor: AsyncCursor[dict[str, Any]]) -> list[dict[str, Any]]:
            await cursor.execute(sql, parameters)
            return await cursor.fetchall() if cursor.description else []

        return await self._with_cursor(one_statement, wait_seconds, in_transaction=False)

    async def transaction(self, work: Callable[[AsyncCursor[dict[str, Any]]], Awaitable[T]],
                          wait_seconds: float = CONNECTION_WAIT_SECONDS) -> T:
        """``work`` in one transaction (committed when it returns); database trouble, or no connection within
        ``wait_seconds``, becomes an ``ApiError``."""
        return await self._with_cursor(work, wait_seconds, in_transaction=True)

    async def _with_cursor(self, work: Callable[[AsyncCursor[dict[str, Any]]], Awaitable[T]], wait_seconds: float,
                           in_transaction: bool) -> T:
        try:
            async with self.pool.connection(timeout=wait_seconds) as connection:
                if in_transaction:
                    async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
                        result = await work(cursor)
                else:
                    async with connection.cursor(row_factory=dict_row) as cursor:
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
