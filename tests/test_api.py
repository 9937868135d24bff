"""`iotenant api` against a database filled by `iotenant ingest`, with real Mosquitto and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import wait_for
from dataplane import TOKEN, Stack, start_stack, write_licence
from iotenant.mosquitto.identities import DeviceCredentials
from iotenant.vocabulary.contract import PROBE_TIMEOUT_SECONDS
from iotenant_testbed.mosquitto import MosquittoBroker
from real_services import PostgresServer


@pytest.fixture
def professional(api_stack: Callable[..., Stack]) -> Stack:
    return api_stack("professional")


def test_every_api_route_needs_the_bearer_token(professional: Stack) -> None:
    api = professional.api
    for path in ("/api/v1/devices", "/api/v1/devices/dev-001", "/api/v1/licence", "/api/v1/stats"):
        assert api.request("GET", path) == (401, {"error": "unauthorized", "message": "a valid bearer token is required"})
        assert api.request("GET", path, token="wrong")[0] == 401
        assert api.request("GET", path, token=TOKEN)[0] == 200
    # Health, readiness and metrics are on the metrics port only: the public port tells nobody the service's state.
    for endpoint in ("/healthz", "/readyz", "/metrics"):
        assert api.request("GET", endpoint)[0] == 404, endpoint
    assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{api.metrics_port}/readyz", timeout=5).read()) == {"status": "ready"}
    assert api.request("GET", "/openapi.json")[1]["paths"]["/api/v1/devices/{device_id}/telemetry"]["get"]["summary"]
    assert api.request("GET", "/nowhere") == (404, {"error": "not_found", "message": "Not Found"})
    assert api.request("GET", "/api/v1/nowhere", token=TOKEN) == (404, {"error": "not_found", "message": "Not Found"})


def test_devices_and_telemetry(professional: Stack) -> None:
    api, started = professional.api, professional.started
    status, body = api.request("GET", "/api/v1/devices", token=TOKEN)
    assert status == 200 and [d["id"] for d in body["devices"]] == ["dev-001", "dev-002"]
    status, device = api.request("GET", "/api/v1/devices/dev-001", token=TOKEN)
    assert status == 200 and device["online"] is True and device["hello"]["fw"] == "1.2.3"
    assert api.request("GET", "/api/v1/devices/ghost", token=TOKEN)[1]["error"] == "device_not_found"
    assert api.request("GET", "/api/v1/devices/-bad", token=TOKEN)[0] == 422

    status, last = api.request("GET", "/api/v1/devices/dev-001/telemetry/last", token=TOKEN)
    assert status == 200 and {m["type"]: m["seq"] for m in last["measurements"]} == {"m0": 149, "m1": 149}
    status, last_m1 = api.request("GET", "/api/v1/devices/dev-001/telemetry/last?type=m1", token=TOKEN)
    assert [m["val"] for m in last_m1["measurements"]] == [149 * 0.5 + 1]
    assert api.request("GET", "/api/v1/devices/dev-001/telemetry/last?type=nope", token=TOKEN)[1]["error"] == "no_telemetry"

    status, recent = api.request("GET", "/api/v1/devices/dev-001/telemetry?type=m0&limit=10", token=TOKEN)
    assert [m["seq"] for m in recent["measurements"]] == list(range(149, 139, -1))
    since, until = started + 10, started + 20  # from included, to excluded: the one range convention of the API
    status, window = api.request("GET", f"/api/v1/devices/dev-001/telemetry?type=m0&from={since}&to={until}", token=TOKEN)
    assert [m["seq"] for m in window["measurements"]] == list(range(19, 9, -1))
    assert api.request("GET", f"/api/v1/devices/dev-001/telemetry?from={since}&to={since}", token=TOKEN)[1]["measurements"] == []
    assert api.request("GET", "/api/v1/devices/dev-001/telemetry?limit=0", token=TOKEN)[1]["error"] == "invalid_parameter"
    assert api.request("GET", "/api/v1/devices/dev-001/telemetry?limit=5000", token=TOKEN)[0] == 422
    assert api.request("GET", f"/api/v1/devices/dev-001/telemetry?from={until}&to={since}", token=TOKEN)[1]["measurements"] == []
    assert api.request("GET", "/api/v1/devices/dev-001/telemetry?from=yesterday", token=TOKEN)[0] == 422


def test_commands_reach_the_device_and_its_ack_is_shown(professional: Stack) -> None:
    api, broker = professional.api, professional.broker
    received: list[dict] = []
    subscribed = threading.Event()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-001", protocol=mqtt.MQTTv311)
    device.username_pw_set("dev-001", "dev-001-password")
    device.on_connect = lambda c, *_: c.subscribe("iot/dev-001/command", qos=1)
    device.on_subscribe = lambda *_: subscribed.set()
    device.on_message = lambda _c, _u, message: received.append(json.loads(message.payload))
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    assert subscribed.wait(10)

    status, sent = api.request("POST", "/api/v1/devices/dev-001/commands", token=TOKEN, body={"name": "reboot", "args": {"delay": 5}})
    assert status == 202 and sent["status"] == "sent"
    wait_for(lambda: received, timeout=10, what="the command to reach the device")
    assert received[0]["cmd_id"] == sent["cmdId"] and received[0]["name"] == "reboot" and received[0]["args"] == {"delay": 5}
    ack = {"v": 2, "device_id": "dev-001", "cmd_id": sent["cmdId"], "status": "done", "result": {"ok": True}}
    device.publish("iot/dev-001/command/ack", json.dumps(ack), qos=1).wait_for_publish(5)

    def acknowledged() -> dict | None:
        commands = api.request("GET", "/api/v1/devices/dev-001/commands", token=TOKEN)[1]["commands"]
        return commands[0] if commands and commands[0]["status"] == "done" else None

    shown = wait_for(acknowledged, timeout=15, what="the acknowledgement to be shown")
    assert shown["result"] == {"ok": True} and shown["ackedAt"]
    again = api.request("POST", "/api/v1/devices/dev-001/commands", token=TOKEN, body={"name": "x", "cmd_id": sent["cmdId"]})
    assert again[0] == 409 and again[1]["error"] == "command_exists"
    assert api.request("POST", "/api/v1/devices/dev-001/commands", token=TOKEN, body={"args": {}})[0] == 422
    assert api.request("POST", "/api/v1/devices/ghost/commands", token=TOKEN, body={"name": "x"})[0] == 404
    device.loop_stop()
    device.disconnect()


def test_licence_and_stats(professional: Stack) -> None:
    api = professional.api
    status, licence = api.request("GET", "/api/v1/licence", token=TOKEN)
    assert status == 200 and licence["plan"] == "professional" and licence["features"]["commands"] is True
    assert licence["limits"]["maxDevices"] == 500
    status, stats = api.request("GET", "/api/v1/stats", token=TOKEN)
    assert status == 200 and stats["devices"] == 2 and stats["measurements"] == 301 and stats["deviceLimit"] == 500
    assert stats["countedAt"].endswith("Z")

    # Counting reads every measurement: a burst of requests takes the counts from the database once.
    def counts_taken() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{api.metrics_port}/metrics", timeout=5).read().decode()
        return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("iotenant_api_tenant_counts_total "))

    before = counts_taken()
    burst = [api.request("GET", "/api/v1/stats", token=TOKEN) for _ in range(20)]
    assert all(status == 200 and answer == stats for status, answer in burst)
    assert counts_taken() - before == 0


FEATURE_ROUTES = [
    ("POST", "/api/v1/devices/dev-001/commands", {"name": "reboot"}), ("GET", "/api/v1/devices/dev-001/commands", None),
    ("GET", "/api/v1/alert-rules", None), ("POST", "/api/v1/alert-rules", {"name": "r", "kind": "silence", "silenceSeconds": 60}),
    ("DELETE", "/api/v1/alert-rules/1", None), ("GET", "/api/v1/alerts", None), ("POST", "/api/v1/alerts/1/acknowledge", None),
    ("GET", "/api/v1/export", None), ("POST", "/api/v1/devices/dev-001/ota", {"version": "1", "url": "https://u.example/f", "sha256": "a" * 64}),
    ("GET", "/api/v1/devices/dev-001/ota", None),
]


def test_every_feature_route_is_refused_without_its_claim(database: str, broker: MosquittoBroker, tmp_path: Path) -> None:
    roomy = {"maxDevices": 25, "maxFleets": 2, "retentionDays": 7, "maxMessagesPerSecond": 10000}  # no rate limit in the way
    stack = start_stack(database, broker, write_licence(tmp_path / "licence", "starter", limits=roomy), tmp_path)
    try:
        for method, path, body in FEATURE_ROUTES:
            status, error = stack.api.request(method, path, token=TOKEN, body=body)
            assert (status, error["error"]) == (403, "feature_not_licensed"), (method, path, error)
        assert stack.api.request("GET", "/api/v1/devices", token=TOKEN)[0] == 200
        documented = stack.api.request("GET", "/openapi.json")[1]["paths"]
        for method, path, _body in FEATURE_ROUTES:
            template = path.replace("dev-001", "{device_id}").replace("rules/1", "rules/{rule_id}").replace("alerts/1", "alerts/{alert_id}")
            assert method.lower() in documented[template], (method, template)
    finally:
        stack.api.stop()
        stack.ingest.stop()


def test_too_many_requests_get_429(database: str, broker: MosquittoBroker, tmp_path: Path) -> None:
    stack = start_stack(database, broker, write_licence(tmp_path / "licence", "professional"), tmp_path,
                        extra=["--requests-per-second", "5"])
    try:
        statuses = [stack.api.request("GET", "/api/v1/devices", token=TOKEN)[0] for _ in range(30)]
        assert statuses.count(429) >= 20 and statuses[0] == 200
        assert stack.api.request("GET", "/api/v1/devices", token=TOKEN)[1]["error"] == "rate_limited"
        time.sleep(1.2)
        guesses = [stack.api.request("GET", "/api/v1/devices", token=f"guess-{n}")[0] for n in range(30)]
        assert guesses.count(429) >= 20, "token guesses are not throttled before authentication"
        # Requests without the token, all from one address (as behind an Ingress), do not use up the
        # rate of the token's holders at that address.
        assert stack.api.request("GET", "/api/v1/devices", token=TOKEN)[0] == 200
    finally:
        stack.api.stop()
        stack.ingest.stop()


HOSTILE_PARAMETERS = [
    "/api/v1/devices?limit=%D9%A1%D9%A0",  # Arabic-Indic digits: str.isdigit() and int() take them, we do not
    "/api/v1/devices?limit=%C2%B2",  # superscript two: isdigit() yes, int() raises
    "/api/v1/devices?limit=99999999999999999999999999",
    "/api/v1/devices/dev-001/telemetry?from=%D9%A1%D9%A2%D9%A3",
    "/api/v1/devices/dev-001/telemetry?from=1e400",
    "/api/v1/devices/dev-001/telemetry?from=" + "9" * 400,
    "/api/v1/devices/dev-001/telemetry?from=-99999999999999",
    "/api/v1/devices/dev-001/telemetry?to=2024-02-30T00:00:00Z",
    "/api/v1/devices/dev-001/telemetry?to=2024-01-01T00:00:00%2B24:00",
    "/api/v1/devices/dev-001/telemetry?from=NaN",
    "/api/v1/devices/dev-001/telemetry?type=a%00b",
    "/api/v1/devices/dev-001/telemetry/last?type=",
    "/api/v1/devices/dev-001/telemetry?type=" + "x" * 65,
    "/api/v1/devices/dev-001%0A",
    "/api/v1/devices/dev-001%0A/telemetry",
]


def test_hostile_parameters_get_422_and_the_next_request_works(professional: Stack) -> None:
    api = professional.api
    for path in HOSTILE_PARAMETERS:
        status, body = api.request("GET", path, token=TOKEN)
        assert (status, body["error"]) == (422, "invalid_parameter"), (path, body)
        assert api.request("GET", "/api/v1/devices/dev-001/telemetry?limit=1", token=TOKEN)[0] == 200
    # Valid RFC 3339 at the calendar's ends, their offsets past it: clamped to where data lies, never an error.
    for edge, count in (("to=0001-01-01T00:00:00%2B23:59", 0), ("from=9999-12-31T23:59:59-23:59", 0), ("from=0001-01-01T00:00:00Z&limit=3", 3)):
        status, body = api.request("GET", f"/api/v1/devices/dev-001/telemetry?{edge}", token=TOKEN)
        assert (status, body["count"]) == (200, count), (edge, body)


def test_hostile_command_bodies_get_422(professional: Stack) -> None:
    api = professional.api
    bodies = [
        {"name": "a\u0000"}, {"name": "x", "args": {"k": "\ud800"}}, {"name": "x", "args": {"k": float("inf")}},
        {"name": "x", "cmd_id": 7}, {"name": "x", "cmd_id": "a/b"}, {"name": "x", "cmd_id": "c" * 65},
        {"name": "x", "args": []}, {"name": 5}, [1, 2],
    ]
    for body in bodies:
        status, answer = api.request("POST", "/api/v1/devices/dev-001/commands", token=TOKEN, body=body)
        assert (status, answer["error"]) == (422, "invalid_body"), (body, answer)
    raw = [b'{"name": "x", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"\xff\xfe", b'{"name": "x", "args": {"n": 1' + b"0" * 500 + b"}}",
           b'{"name": "x", "args": {"n": NaN}}']
    for payload in raw:
        request = urllib.request.Request(f"http://127.0.0.1:{api.port}/api/v1/devices/dev-001/commands", data=payload, method="POST",
                                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"accepted {payload[:40]!r}")
        except urllib.error.HTTPError as error:
            assert (error.code, json.loads(error.read())["error"]) == (422, "invalid_body"), payload[:40]
    assert api.request("GET", "/api/v1/devices/dev-001/commands", token=TOKEN)[0] == 200


def test_database_down_gives_503_and_recovers(professional: Stack, postgres: PostgresServer) -> None:
    api = professional.api
    postgres.stop()
    try:
        status, error = api.request("GET", "/api/v1/devices", token=TOKEN)
        assert (status, error["error"]) == (503, "database_unavailable")
        assert "Traceback" not in json.dumps(error)
        # The kubelet gives /readyz PROBE_TIMEOUT_SECONDS: it hears "not ready" and why, not a timeout,
        # also once the pool has no connection left to try.
        for _ in range(3):
            with pytest.raises(urllib.error.HTTPError) as not_ready:
                urllib.request.urlopen(f"http://127.0.0.1:{api.metrics_port}/readyz", timeout=PROBE_TIMEOUT_SECONDS)
            assert not_ready.value.code == 503 and "database" in json.loads(not_ready.value.read())["detail"]
    finally:
        postgres.start()
    wait_for(lambda: api.request("GET", "/api/v1/devices", token=TOKEN)[0] == 200, timeout=30, what="the API to recover")


def test_simulated_devices_are_stored_and_their_last_will_marks_them_offline(
    database: str, broker: MosquittoBroker, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for device in ("dev-010", "dev-011", "dev-012"):
        (credentials / device).write_text(DeviceCredentials(device, f"{device}-password", "127.0.0.1", broker.port).url())
    stack = start_stack(database, broker, write_licence(tmp_path / "licence", "professional"), tmp_path)
    simulator = subprocess.Popen(
        [sys.executable, "-m", "iotenant", "simulate", "--credentials-dir", str(credentials), "--interval", "0.1",
         "--keepalive", "2", "--reboot-probability", "0.05", "--metrics-port", "0", "--log-format", "text"],
        stdout=(tmp_path / "simulate.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        def online() -> bool:
            devices = stack.api.request("GET", "/api/v1/devices", token=TOKEN)[1]["devices"]
            simulated = [d for d in devices if d["id"] in ("dev-010", "dev-011", "dev-012")]
            return len(simulated) == 3 and all(d["online"] for d in simulated)

        wait_for(online, timeout=20, what="the simulated devices to be online")
        wait_for(lambda: len(stack.api.request("GET", "/api/v1/devices/dev-011/telemetry?limit=30", token=TOKEN)[1]["measurements"]) == 30,
                 timeout=20, what="simulated telemetry")
        simulator.kill()  # no goodbye: the broker publishes each device's last will after 1.5 keepalives
        simulator.wait()
        wait_for(lambda: not stack.api.request("GET", "/api/v1/devices/dev-010", token=TOKEN)[1]["online"], timeout=20,
                 what="the last will to mark dev-010 offline")
        assert stack.ingest.metrics()["iotenant_ingest_duplicate_total"] == 0
    finally:
        if simulator.poll() is None:
            simulator.kill()
        stack.api.stop()
        stack.ingest.stop()


def test_a_simulated_device_the_broker_refuses_retries_and_the_others_go_on(
    api_stack: Callable[..., Stack], broker: MosquittoBroker, tmp_path: Path
) -> None:
    stack = api_stack("professional")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dev-020").write_text(DeviceCredentials("dev-020", "dev-020-password", "127.0.0.1", broker.port).url())
    (credentials / "dev-021").write_text(DeviceCredentials("dev-021", "not-its-password", "127.0.0.1", broker.port).url())
    log = tmp_path / "simulate.log"
    simulator = subprocess.Popen(
        [sys.executable, "-m", "iotenant", "simulate", "--credentials-dir", str(credentials), "--interval", "0.2",
         "--metrics-port", "0", "--log-format", "text"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: log.read_text().count("dev-021: connection refused") >= 3, timeout=30, what="three refused attempts")
        assert simulator.poll() is None, log.read_text()[-2000:]
        wait_for(lambda: len(stack.api.request("GET", "/api/v1/devices/dev-020/telemetry?limit=20", token=TOKEN)[1].get("measurements", [])) == 20,
                 timeout=20, what="the admitted device's telemetry")
    finally:
        simulator.kill()
        simulator.wait()
