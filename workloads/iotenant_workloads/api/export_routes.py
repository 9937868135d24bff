"""The API's export route (``features.export``): a device's or the whole tenant's telemetry, streamed.

Rows come from a server-side cursor a chunk at a time and leave as they come, so the API's memory
does not grow with the export. The range is half-open (``from`` <= ts < ``to``), ordered by time,
and bounded by the licence's retention; ``X-Export-From`` and ``X-Export-To`` state the range served,
so an interrupted export resumes with ``from`` = the last complete row's ts (rows of that instant
come again). A client that takes no data for ``--export-stall-seconds`` loses its export. An export
that fails part-way closes the connection: the client sees an incomplete answer, never a short one
that looks whole. Text a device chose (type, unit) cannot become a spreadsheet formula in CSV.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from datetime import datetime
from typing import Any

import psycopg
from aiohttp import web
from prometheus_client import Counter

from iotenant_workloads import tenant_schema as database
from iotenant_workloads.api import route as api_route
from iotenant_workloads.api.customer_api import CustomerApi
from iotenant_workloads.api.errors import ApiError, StreamBroken
from iotenant_workloads.api.parameters import DEVICE, FROM, TO, TYPE, choice, time_range
from iotenant_workloads.api.route import Route

log = logging.getLogger("iotenant.api")

EXPORTED_ROWS = Counter("iotenant_api_export_rows_total", "Telemetry rows exported", ["format"])

FEATURE = "export"
CSV, NDJSON = "csv", "ndjson"
FORMATS = (CSV, NDJSON)
CONTENT_TYPES = {CSV: "text/csv; charset=utf-8", NDJSON: "application/x-ndjson"}
FORMAT = choice("format", FORMATS, CSV, "CSV or newline-delimited JSON")
CSV_HEADER = ("ts", "deviceId", "type", "val", "unit", "seq")
CHUNK_ROWS = 5000

TIMESTAMP = """to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
# OWASP's rule against CSV injection: a cell that a spreadsheet would read as a formula gets a leading quote.
SPREADSHEET_SAFE = "CASE WHEN {0} ~ '^[-=+@\t\r]' THEN '''' || {0} ELSE {0} END"
COLUMNS = {
    CSV: f"{TIMESTAMP}, device_id, {SPREADSHEET_SAFE.format('type')}, val, {SPREADSHEET_SAFE.format('unit')}, seq",
    # Compact JSON, one object a line, built by PostgreSQL (to_json quotes and escapes each text).
    NDJSON: f"""concat('{{"ts":"', {TIMESTAMP}, '","deviceId":', to_json(device_id), ',"type":', to_json(type), ',"val":', to_json(val),
                ',"unit":', coalesce(to_json(unit)::text, 'null'), ',"seq":', seq, '}}')""",
}


def _csv_chunk(rows: list[tuple[Any, ...]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


def _ndjson_chunk(rows: list[tuple[Any, ...]]) -> bytes:
    return ("\n".join(row[0] for row in rows) + "\n").encode()


def _range(api: CustomerApi, request: web.Request) -> tuple[datetime, datetime]:
    retention = api.claims().limits.retentionDays
    oldest, newest = database.retention_window(retention)
    since, until = time_range(request)
    # What the retention keeps, and no more: X-Export-From and X-Export-To say what was served.
    since = max(since or oldest, oldest)
    return since, max(since, min(until or newest, newest))  # from not before to: an empty export


async def export(api: CustomerApi, request: web.Request) -> web.StreamResponse:
    api.require_feature(FEATURE)
    chosen = FORMAT.read(request)
    since, until = _range(api, request)
    device_id, measurement_type = DEVICE.read(request), TYPE.read(request)
    clauses, parameters = api_route.where(("ts >= %s", since), ("ts < %s", until), ("device_id = %s", device_id),
                                             ("type = %s", measurement_type))
    statement = f"SELECT {COLUMNS[chosen]} FROM telemetry WHERE {clauses} ORDER BY ts, device_id, type, seq"
    exports = api.exports
    if exports.running >= exports.most:
        raise ApiError(429, "export_busy", f"{exports.most} exports are streaming; retry when one has finished")
    exports.running += 1
    try:
        return await _stream(api, request, chosen, statement, tuple(parameters), since, until)
    finally:
        exports.running -= 1


async def _send(response: web.StreamResponse, chunk: bytes, stall_seconds: float) -> None:
    """One chunk to the client, which must take it within ``stall_seconds``: the export holds a database
    connection and a transaction open, which a client that stops reading must not keep."""
    await asyncio.wait_for(response.write(chunk), stall_seconds)


async def _stream(api: CustomerApi, request: web.Request, chosen: str, statement: str, parameters: tuple[Any, ...],
                  since: datetime, until: datetime) -> web.StreamResponse:
    encode = _csv_chunk if chosen == CSV else _ndjson_chunk
    response = web.StreamResponse(headers={
        "Content-Type": CONTENT_TYPES[chosen], "Content-Disposition": f'attachment; filename="telemetry.{chosen}"',
        "Cache-Control": "no-store", "X-Export-From": api_route.iso(since) or "", "X-Export-To": api_route.iso(until) or "",
    })
    rows_sent = 0
    try:
        async with api.pool.connection(timeout=5) as connection, connection.transaction():
            async with connection.cursor(name="export") as cursor:
                await cursor.execute(statement, parameters)
                rows = await cursor.fetchmany(CHUNK_ROWS)
                await response.prepare(request)
                if chosen == CSV:
                    await _send(response, _csv_chunk([CSV_HEADER]), api.exports.stall_seconds)
                while rows:
                    await _send(response, encode(rows), api.exports.stall_seconds)
                    rows_sent += len(rows)
                    EXPORTED_ROWS.labels(chosen).inc(len(rows))
                    rows = await cursor.fetchmany(CHUNK_ROWS)
        await response.write_eof()
        return response
    except (psycopg.OperationalError, TimeoutError) as error:
        if not response.prepared:
            raise ApiError(503, "database_unavailable", "the database is not reachable; retry later") from error
        log.warning("export broken after %d rows: %s", rows_sent, str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__)
        raise StreamBroken() from error
    except ConnectionError as error:
        log.info("export ended by the client after %d rows", rows_sent)
        raise StreamBroken() from error
    except asyncio.CancelledError:
        log.info("export cancelled after %d rows", rows_sent)
        raise


ROUTES = [
    Route("GET", "/api/v1/export", export,
          "Telemetry from (included) to (excluded), within retention, oldest first, streamed as CSV or NDJSON "
          "(needs features.export). X-Export-From and X-Export-To state the range served.", "exportTelemetry",
          (FROM, TO, DEVICE, TYPE, FORMAT), produces=(CONTENT_TYPES[CSV], CONTENT_TYPES[NDJSON]),
          response={"type": "string", "description": "CSV with a header row, or one compact JSON object a line"}, errors=(403,)),
]
