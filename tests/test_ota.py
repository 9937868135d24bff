"""OTA updates (features.ota): the real API sends start_ota, the real ingest stores progress, the simulator answers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import wait_for
from dataplane import TOKEN, Stack
from iotenant.mosquitto.identities import DeviceCredentials

SHA = "0123456789abcdef" * 4
UPDATE = {"version": "2.0.0", "url": "https://updates.example/fw/2.0.0.bin", "sha256": SHA}


@pytest.fixture
def stack(api_stack: Callable[..., Stack]) -> Stack:
    return api_stack("enterprise")


class ListeningDevice:
    """A device that keeps what arrives on its command topic."""

    def __init__(self, port: int, device_id: str) -> None:
        self.device_id, self.commands = device_id, []  # type: ignore[var-annotated]
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(device_id, f"{device_id}-password")
        self.client.on_connect = lambda c, *_: c.subscribe(f"iot/{device_id}/command", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, message: self.commands.append(json.loads(message.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def report(self, payload: bytes | dict) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(f"iot/{self.device_id}/ota/status", data, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def updates(stack: Stack, device_id: str) -> dict:
    status, body = stack.api.request("GET", f"/api/v1/devices/{device_id}/ota", token=TOKEN)
    assert status == 200, body
    return body


def test_an_update_reaches_the_device_and_its_progress_is_shown(stack: Stack) -> None:
    api, device = stack.api, ListeningDevice(stack.broker.port, "dev-001")
    try:
        status, sent = api.request("POST", "/api/v1/devices/dev-001/ota", token=TOKEN, body=UPDATE)
        assert status == 202 and sent["state"] == "sent" and sent["sha256"] == SHA
        command = wait_for(lambda: device.commands, timeout=10, what="start_ota to reach the device")[0]
        assert command["name"] == "start_ota" and command["cmd_id"] == sent["cmdId"] and command["args"] == UPDATE
        busy = api.request("POST", "/api/v1/devices/dev-001/ota", token=TOKEN, body=UPDATE)
        assert busy[0] == 409 and busy[1]["error"] == "ota_in_progress" and sent["cmdId"] in busy[1]["message"]

        device.report({"v": 2, "cmd_id": sent["cmdId"], "state": "downloading", "progress": 40})
        wait_for(lambda: updates(stack, "dev-001")["current"]["progress"] == 40, timeout=10, what="the progress")
        for hostile in (b"{", {"cmd_id": sent["cmdId"], "state": "pwned"}, {"cmd_id": sent["cmdId"], "state": "installing", "progress": 1000},
                        {"cmd_id": sent["cmdId"], "state": "succeeded", "device_id": "dev-002"}, {"state": "succeeded"}):
            device.report(hostile)
        device.report({"v": 2, "cmd_id": sent["cmdId"], "state": "succeeded", "version": "2.0.0"})
        shown = wait_for(lambda: updates(stack, "dev-001")["current"]["state"] == "succeeded" and updates(stack, "dev-001"),
                         timeout=10, what="the update to succeed")
        assert shown["current"]["progress"] == 100 and shown["current"]["reportedAt"]
        assert [r["state"] for r in shown["reports"]] == ["succeeded", "downloading"]
        metrics = stack.ingest.metrics()
        assert metrics['iotenant_ingest_rejected_total{reason="bad_ota_status"}'] == 3
        assert metrics['iotenant_ingest_rejected_total{reason="device_id_mismatch"}'] == 1
        assert metrics['iotenant_ingest_rejected_total{reason="invalid_json"}'] == 1
        commands = api.request("GET", "/api/v1/devices/dev-001/commands", token=TOKEN)[1]["commands"]
        assert commands[0]["name"] == "start_ota" and commands[0]["cmdId"] == sent["cmdId"]

        status, second = api.request("POST", "/api/v1/devices/dev-001/ota", token=TOKEN, body={**UPDATE, "version": "2.0.1"})
        assert status == 202 and [u["version"] for u in updates(stack, "dev-001")["updates"]] == ["2.0.1", "2.0.0"]
    finally:
        device.close()


def test_hostile_requests_and_devices_that_never_reported_are_refused(stack: Stack) -> None:
    api = stack.api
    for body in ({**UPDATE, "url": "http://updates.example/fw.bin"}, {**UPDATE, "url": "https://a:b@updates.example/fw.bin"},
                 {**UPDATE, "url": "file:///etc/passwd"}, {**UPDATE, "sha256": "z" * 64}, {**UPDATE, "version": "../../x"},
                 {**UPDATE, "extra": 1}, {"version": "1"}, [UPDATE], {**UPDATE, "url": "https://updates.example/\u0000"}):
        status, answer = api.request("POST", "/api/v1/devices/dev-001/ota", token=TOKEN, body=body)
        assert (status, answer["error"]) == (422, "invalid_body"), (body, answer)
    assert api.request("POST", "/api/v1/devices/ghost/ota", token=TOKEN, body=UPDATE)[1]["error"] == "device_not_found"
    assert api.request("GET", "/api/v1/devices/ghost/ota", token=TOKEN)[1]["error"] == "device_not_found"
    assert api.request("GET", "/api/v1/devices/a%2Fb/ota", token=TOKEN)[0] in (404, 422)
    assert updates(stack, "dev-002") == {"deviceId": "dev-002", "current": None, "updates": [], "reports": []}


def test_the_simulator_answers_commands_and_updates(stack: Stack, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dev-010").write_text(DeviceCredentials("dev-010", "dev-010-password", "127.0.0.1", stack.broker.port).url())
    simulator = subprocess.Popen(
        [sys.executable, "-m", "iotenant", "simulate", "--credentials-dir", str(credentials), "--interval", "0.5",
         "--ota-failure-probability", "0", "--metrics-port", "0", "--log-format", "text"],
        stdout=(tmp_path / "simulate.log").open("wb"), stderr=subprocess.STDOUT,
    )
    api = stack.api
    try:
        wait_for(lambda: api.request("GET", "/api/v1/devices/dev-010", token=TOKEN)[0] == 200, timeout=20, what="the simulated device")
        status, command = api.request("POST", "/api/v1/devices/dev-010/commands", token=TOKEN, body={"name": "blink"})
        assert status == 202
        wait_for(lambda: api.request("GET", "/api/v1/devices/dev-010/commands", token=TOKEN)[1]["commands"][0]["status"] == "done",
                 timeout=15, what="the simulator to acknowledge the command")
        status, sent = api.request("POST", "/api/v1/devices/dev-010/ota", token=TOKEN, body={**UPDATE, "version": "3.1.4"})
        assert status == 202
        wait_for(lambda: updates(stack, "dev-010")["current"]["state"] == "succeeded", timeout=30, what="the simulated update")
        states = [r["state"] for r in reversed(updates(stack, "dev-010")["reports"])]
        assert states[0] == "downloading" and states[-3:] == ["verifying", "installing", "succeeded"]
        wait_for(lambda: api.request("GET", "/api/v1/devices/dev-010", token=TOKEN)[1]["hello"]["fw"] == "3.1.4", timeout=10,
                 what="the device to announce its new firmware")
    finally:
        simulator.kill()
        simulator.wait()
