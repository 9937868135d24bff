"""Alert rules (features.alerts) through the real API, judged by the real ingest, on Mosquitto and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import pytest

from conftest import wait_for
from dataplane import TOKEN, Device, Stack, readings


@pytest.fixture
def stack(api_stack: Callable[..., Stack]) -> Stack:
    return api_stack("professional", limits={"maxDevices": 500, "maxFleets": 20, "retentionDays": 30, "maxMessagesPerSecond": 1000,
                                             "maxAlertRules": 4})


def alerts(stack: Stack, query: str = "") -> list[dict]:
    status, body = stack.api.request("GET", f"/api/v1/alerts{query}", token=TOKEN)
    assert status == 200, body
    return body["alerts"]


def create_rule(stack: Stack, **rule: object) -> dict:
    status, body = stack.api.request("POST", "/api/v1/alert-rules", token=TOKEN, body=rule)
    assert status == 201, body
    return body


class Clock:
    """Message timestamps for one device: increasing, one second apart."""

    def __init__(self, device: Device) -> None:
        self.device, self.ts, self.seq = device, time.time() - 60, 1000

    def send(self, **values: float) -> float:
        self.ts, self.seq = self.ts + 1, self.seq + 1
        self.device.publish("telemetry", readings(self.device.device_id, self.ts, self.seq, **values))
        self.device.flush()
        return self.ts


def test_a_threshold_alert_fires_once_resolves_is_acknowledged_and_dies_with_its_rule(stack: Stack) -> None:
    rule = create_rule(stack, name="m0 high", type="m0", operator=">", threshold=100, deviceId="dev-001")
    assert rule["id"] > 0 and rule["forSeconds"] == 0 and rule["createdAt"]
    clock = Clock(Device(stack.broker.port, "dev-001", "dev-001-password"))

    def fired() -> list[dict]:  # the rule takes effect within seconds: until it does, hot readings go unseen
        clock.send(m0=150)
        return alerts(stack, "?state=firing")

    first = wait_for(fired, timeout=20, interval=0.5, what="the alert to fire")
    for value in (160, 170, 180):
        clock.send(m0=value)
    clock.send(other=1)  # a type the rule does not watch
    time.sleep(1.5)
    assert len(alerts(stack)) == 1, "a firing alert fired again"
    (alert,) = first
    assert (alert["ruleId"], alert["ruleName"], alert["deviceId"], alert["value"]) == (rule["id"], "m0 high", "dev-001", 150)
    wait_for(lambda: stack.ingest.metrics().get(f'iotenant_ingest_alerts_firing{{rule="{rule["id"]}"}}') == 1, timeout=10,
             what="the firing alert in ingest's metrics")

    resolved_at = clock.send(m0=99)
    resolved = wait_for(lambda: alerts(stack, "?state=resolved"), timeout=15, what="the alert to resolve")
    assert resolved[0]["id"] == alert["id"] and resolved[0]["resolvedValue"] == 99 and resolved[0]["resolvedAt"]
    assert abs(datetime.fromisoformat(resolved[0]["resolvedAt"]).timestamp() - resolved_at) < 0.01, "resolved at the measurement's time"
    assert alerts(stack, "?state=firing") == []

    status, acknowledged = stack.api.request("POST", f"/api/v1/alerts/{alert['id']}/acknowledge", token=TOKEN)
    assert status == 200 and acknowledged["acknowledgedAt"] and acknowledged["state"] == "resolved"
    again = stack.api.request("POST", f"/api/v1/alerts/{alert['id']}/acknowledge", token=TOKEN)[1]
    assert again["acknowledgedAt"] == acknowledged["acknowledgedAt"], "acknowledging twice moved the time"
    assert stack.api.request("POST", "/api/v1/alerts/987654/acknowledge", token=TOKEN)[1]["error"] == "alert_not_found"
    for bad in ("abc", "0", "-1", "99999999999999999999", "1%00"):
        assert stack.api.request("POST", f"/api/v1/alerts/{bad}/acknowledge", token=TOKEN)[0] == 422, bad

    clock.send(m0=200)
    second = wait_for(lambda: alerts(stack, "?state=firing"), timeout=15, what="a new alert after the first resolved")
    assert second[0]["id"] != alert["id"] and len(alerts(stack, "?device=dev-001")) == 2
    assert alerts(stack, "?device=dev-002") == []
    assert stack.api.request("DELETE", f"/api/v1/alert-rules/{rule['id']}", token=TOKEN)[0] == 204
    assert alerts(stack, "?state=firing") == [], "deleting a rule leaves its alert firing"
    assert stack.api.request("GET", "/api/v1/alert-rules", token=TOKEN)[1]["rules"] == []
    assert {a["ruleName"] for a in alerts(stack)} == {"m0 high"}, "the deleted rule's history went"
    clock.send(m0=300)
    time.sleep(3)
    assert alerts(stack, "?state=firing") == [], "a deleted rule fired"
    assert stack.api.request("DELETE", f"/api/v1/alert-rules/{rule['id']}", token=TOKEN)[1]["error"] == "alert_rule_not_found"


def test_for_duration_counts_by_the_measurements_time(stack: Stack) -> None:
    held = create_rule(stack, name="held", type="m5", operator=">=", threshold=10, forSeconds=30)
    create_rule(stack, name="canary", type="done", operator=">", threshold=0)
    time.sleep(2.5)  # both rules in force (rules are reloaded every 2 s)
    device = Device(stack.broker.port, "dev-002", "dev-002-password")
    start = time.time() - 120
    for offset in (0, 10, 20):
        device.publish("telemetry", readings("dev-002", start + offset, offset, m5=12))
    device.publish("telemetry", readings("dev-002", start + 29, 29, m5=10, done=1))  # judged in the same round as m5 at +29
    device.flush()
    wait_for(lambda: [a for a in alerts(stack) if a["ruleName"] == "canary"], timeout=15, what="the canary alert")
    assert [a for a in alerts(stack) if a["ruleId"] == held["id"]] == [], "fired before the condition held 30 s"
    device.publish("telemetry", readings("dev-002", start + 30, 30, m5=11))
    device.flush()
    fired = wait_for(lambda: [a for a in alerts(stack) if a["ruleId"] == held["id"]], timeout=15, what="the held alert")
    assert fired[0]["value"] == 11 and fired[0]["deviceId"] == "dev-002"


def test_a_silent_device_raises_an_alert_that_resolves_when_it_speaks(stack: Stack) -> None:
    rule = create_rule(stack, name="quiet", kind="silence", silenceSeconds=5, deviceId="dev-003")
    clock = Clock(Device(stack.broker.port, "dev-003", "dev-003-password"))
    clock.send(m0=1)
    spoke = time.monotonic()
    fired = wait_for(lambda: alerts(stack, "?state=firing&device=dev-003"), timeout=20, what="the silence alert")
    assert time.monotonic() - spoke >= 4.5 and fired[0]["ruleId"] == rule["id"] and fired[0]["value"] >= 5
    clock.send(m0=2)
    wait_for(lambda: alerts(stack, "?state=resolved&device=dev-003"), timeout=15, what="the silence alert to resolve")
    assert alerts(stack, "?state=firing") == []


def test_rules_are_bounded_by_the_licence_and_judged_as_hostile(stack: Stack) -> None:
    api = stack.api
    for n in range(4):
        create_rule(stack, name=f"r{n}", type="t", operator="<", threshold=n)
    status, refused = api.request("POST", "/api/v1/alert-rules", token=TOKEN, body={"name": "r5", "type": "t", "operator": "<", "threshold": 5})
    assert (status, refused["error"]) == (409, "alert_rule_limit") and "4" in refused["message"]
    listed = api.request("GET", "/api/v1/alert-rules", token=TOKEN)[1]
    assert listed["count"] == 4 and listed["limit"] == 4
    assert api.request("DELETE", f"/api/v1/alert-rules/{listed['rules'][0]['id']}", token=TOKEN)[0] == 204
    create_rule(stack, name="r5", type="t", operator="<", threshold=5)
    for body in ({"name": "x", "type": "t", "operator": "=", "threshold": 1}, {"name": "x", "type": "t", "operator": ">", "threshold": "1"},
                 {"name": "x", "kind": "silence", "silenceSeconds": 10**12}, {"name": "\ud800", "kind": "silence", "silenceSeconds": 60},
                 {"name": "x", "kind": "silence", "silenceSeconds": 60, "sql": "DROP TABLE alerts"}, [1]):
        status, answer = api.request("POST", "/api/v1/alert-rules", token=TOKEN, body=body)
        assert (status, answer["error"]) == (422, "invalid_body"), (body, answer)
    for query in ("?state=open", "?device=a/b", "?limit=0", "?device=%00"):
        assert api.request("GET", f"/api/v1/alerts{query}", token=TOKEN)[0] == 422, query
    for bad in ("abc", "0", "-1", "99999999999999999999", "1%00", "1e3"):
        assert api.request("DELETE", f"/api/v1/alert-rules/{bad}", token=TOKEN)[0] == 422, bad
    oversized = {"name": "x" * 100_000, "kind": "silence", "silenceSeconds": 60}
    assert api.request("POST", "/api/v1/alert-rules", token=TOKEN, body=oversized)[1]["error"] == "invalid_body"
    assert api.request("GET", "/api/v1/alert-rules", token=TOKEN)[1]["count"] == 4
