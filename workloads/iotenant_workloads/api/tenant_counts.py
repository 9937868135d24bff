"""The tenant's counts for ``/api/v1/stats``: devices, measurements, commands and refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from prometheus_client import Counter

# How old the counts of /api/v1/stats may be.
STATS_MAX_AGE_SECONDS = 30.0
COUNTS_TAKEN = Counter("iotenant_api_tenant_counts_total", "Times the tenant's counts were taken from the database (/api/v1/stats)")
# A read-only statement and its parameters to the rows it returns.
Query = Callable[..., Awaitable[list[dict[str, Any]]]]


class TenantCounts:
    """The tenant's counts, computed at most once every ``STATS_MAX_AGE_SECONDS`` and by one request at a
    time: counting every measurement reads the whole table, which no request rate may repeat at will."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._value: dict[str, Any] | None = None
        self._taken = 0.0
        self._taken_at = datetime.now(timezone.utc)

    async def get(self, query: Query) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._taken >= STATS_MAX_AGE_SECONDS:
                (counts,) = await query(
                    "SELECT (SELECT count(*) FROM devices) AS devices, (SELECT count(*) FROM devices WHERE online) AS online, "
                    "(SELECT count(*) FROM telemetry) AS measurements, (SELECT count(*) FROM commands) AS commands"
                )
                rejected = await query("SELECT reason, sum(count)::bigint AS n FROM refusal_counts GROUP BY reason ORDER BY reason")
                self._value = {**counts, "rejected": {r["reason"]: r["n"] for r in rejected}}
                self._taken, self._taken_at = time.monotonic(), datetime.now(timezone.utc)
                COUNTS_TAKEN.inc()
            return self._value

    def counted_at(self) -> datetime | None:
        return self._taken_at if self._value is not None else None
