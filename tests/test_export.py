"""Telemetry export (features.export) through the real API over what the real ingest stored."""

from __future__ import annotations

import csv
import io
import json
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from conftest import wait_for
from dataplane import TOKEN, Device, Stack, start_stack, write_licence
from iotenant_testbed.mosquitto import MosquittoBroker


@pytest.fixture
def stack(api_stack: Callable[..., Stack]) -> Stack:
    return api_stack("enterprise")


def export(stack: Stack, query: str) -> tuple[int, dict[str, str], bytes]:
    return stack.api.download(f"/api/v1/export{query}", TOKEN)


def csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_csv_and_ndjson_hold_every_row_in_time_order(stack: Stack) -> None:
    status, headers, body = export(stack, "")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == 'attachment; filename="telemetry.csv"'
    rows = csv_rows(body)
    assert body.startswith(b"ts,deviceId,type,val,unit,seq\n") and len(rows) == 301
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    first = [r for r in rows if r["deviceId"] == "dev-001" and r["seq"] == "7"]
    assert {(r["type"], float(r["val"]), r["unit"]) for r in first} == {("m0", 3.5, "C"), ("m1", 4.5, "C")}
    assert datetime.fromisoformat(first[0]["ts"]).timestamp() == pytest.approx(stack.started + 7, abs=1e-5)

    status, headers, body = export(stack, "?format=ndjson")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson" and len(lines) == 301
    assert body.decode().splitlines() == [json.dumps(line, separators=(",", ":")) for line in lines], "compact JSON, keys in order"
    assert {(line["deviceId"], line["type"], line["val"], line["seq"]) for line in lines} == {
        (r["deviceId"], r["type"], float(r["val"]), int(r["seq"])) for r in rows}


def test_filters_and_half_open_ranges_resume_without_gaps_or_overlaps(stack: Stack) -> None:
    started = stack.started
    _, _, body = export(stack, "?device=dev-002")
    assert [r["deviceId"] for r in csv_rows(body)] == ["dev-002"]
    _, _, body = export(stack, "?device=dev-001&type=m1")
    assert len(csv_rows(body)) == 150 and {r["type"] for r in csv_rows(body)} == {"m1"}
    status, headers, body = export(stack, f"?device=dev-001&type=m0&from={started + 10}&to={started + 20}")
    assert status == 200 and [int(r["seq"]) for r in csv_rows(body)] == list(range(10, 20))
    assert datetime.fromisoformat(headers["X-Export-From"]).timestamp() == pytest.approx(started + 10, abs=1e-5)
    middle = started + 75
    halves = [csv_rows(export(stack, f"?device=dev-001&to={middle}")[2]), csv_rows(export(stack, f"?device=dev-001&from={middle}")[2])]
    whole = csv_rows(export(stack, "?device=dev-001")[2])
    assert halves[0] + halves[1] == whole and len(whole) == 300


def test_device_text_cannot_become_a_spreadsheet_formula(stack: Stack) -> None:
    device = Device(stack.broker.port, "dev-003", "dev-003-password")
    payload = json.dumps({"v": 2, "device_id": "dev-003", "ts": time.time(), "seq": 1, "measurements": [
        {"type": "=HYPERLINK(\"http://x\")", "val": -1.5, "unit": "+cmd"}, {"type": "@SUM(A1)", "val": 2, "unit": "-"},
        {"type": "plain, \"quoted\"\nline", "val": 3}]}).encode()
    device.publish("telemetry", payload)
    device.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(csv_rows(export(stack, "?device=dev-003")[2])) < 3:
        time.sleep(0.2)
    rows = csv_rows(export(stack, "?device=dev-003")[2])
    assert {(r["type"], r["unit"], r["val"]) for r in rows} == {
        ("'=HYPERLINK(\"http://x\")", "'+cmd", "-1.5"), ("'@SUM(A1)", "'-", "2.0"), ("plain, \"quoted\"\nline", "", "3.0")}
    lines = [json.loads(line) for line in export(stack, "?device=dev-003&format=ndjson")[2].decode().splitlines()]
    assert {line["type"] for line in lines} == {"=HYPERLINK(\"http://x\")", "@SUM(A1)", "plain, \"quoted\"\nline"}


def test_ranges_are_served_within_the_retention_and_hostile_parameters_get_422(stack: Stack) -> None:
    for query in ("?format=xml", "?format=", "?device=a/b", "?device=%00", "?type=" + "t" * 65, "?from=1e400", "?to=NaN"):
        status, _, body = export(stack, query)
        assert (status, json.loads(body)["error"]) == (422, "invalid_parameter"), (query, body)
    old = time.time() - 366 * 86400  # enterprise keeps 365 days: what is older is not served, and the headers say so
    status, headers, body = export(stack, f"?from={old}")
    assert status == 200 and datetime.fromisoformat(headers["X-Export-From"]).timestamp() > old and csv_rows(body)
    for empty in (f"?from={stack.started + 10}&to={stack.started + 10}", f"?from={stack.started + 20}&to={stack.started}"):
        status, _, body = export(stack, empty)
        assert status == 200 and csv_rows(body) == [], empty
    assert export(stack, "?device=dev-002")[0] == 200


def test_a_client_that_stops_reading_loses_its_export_and_frees_its_place(
    database: str, broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Two clients start exports and read nothing: each holds a database connection and a transaction.
    After --export-stall-seconds both exports end, and the next export is served."""
    stack = start_stack(database, broker, write_licence(tmp_path / "licence", "enterprise"), tmp_path,
                        extra=["--export-stall-seconds", "2"])
    stalled: list[socket.socket] = []
    try:
        with psycopg.connect(database) as connection:  # far more than the sockets' buffers hold
            connection.execute(
                "INSERT INTO telemetry (device_id, msg_ts, seq, idx, ts, type, val, unit, received_at) "
                "SELECT 'bulk', now() - s * interval '1 ms', s, 0, now() - s * interval '1 ms', 'm0', s, 'C', now() "
                "FROM generate_series(1, 300000) s")
        for _ in range(2):
            client = socket.create_connection(("127.0.0.1", stack.api.port))
            client.sendall(f"GET /api/v1/export HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            assert client.recv(64).startswith(b"HTTP/1.1 200")  # then it reads no more
            stalled.append(client)
        assert export(stack, "?device=dev-001")[0] == 429, "two exports are streaming"
        wait_for(lambda: export(stack, "?device=dev-001")[0] == 200, timeout=30, what="the stalled exports to end")
        assert len(csv_rows(export(stack, "?device=dev-001")[2])) == 300
    finally:
        for client in stalled:
            client.close()
        stack.api.stop()
        stack.ingest.stop()
