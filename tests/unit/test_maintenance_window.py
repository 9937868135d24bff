"""Maintenance windows: when one is open, and which changes wait for it."""

from __future__ import annotations

from datetime import datetime, timezone

from iotenant.customer_instance.maintenance_window import MaintenanceWindow, defer_restarts, plan_restarts
from iotenant.kube.apply import key_of
from iotenant.render.broker import ADMIN_TLS_ANNOTATION
from iotenant.render.builders import deployment
from iotenant.vocabulary import meta

OWNER = meta.Owner("acme", "00000000-0000-0000-0000-000000000001")
SUNDAY_LATE = MaintenanceWindow.from_spec({"days": ["Sun"], "start": "23:00", "durationMinutes": 120})


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_a_window_opens_on_its_days_and_may_run_past_midnight() -> None:
    assert SUNDAY_LATE is not None
    assert SUNDAY_LATE.is_open(at("2026-12-06T23:30:00"))  # a Sunday
    assert SUNDAY_LATE.is_open(at("2026-12-07T00:59:59")), "into Monday"
    assert not SUNDAY_LATE.is_open(at("2026-12-07T01:00:00"))
    assert not SUNDAY_LATE.is_open(at("2026-12-07T23:30:00")), "Monday's 23:00 is no window"
    assert SUNDAY_LATE.next_opening(at("2026-12-07T09:00:00")) == at("2026-12-13T23:00:00")
    every_day = MaintenanceWindow.from_spec({"start": "02:00", "durationMinutes": 15})
    assert every_day is not None and every_day.next_opening(at("2026-12-07T02:20:00")) == at("2026-12-08T02:00:00")
    running, changed = workload("iotenant:1"), workload("iotenant:2")
    sunday = {"days": ["Sun"], "start": "23:00", "durationMinutes": 120}
    monday = at("2026-12-07T09:00:00")
    assert MaintenanceWindow.from_spec(None) is None and plan_restarts(None, monday, False, [changed], {key_of(running): running}).desired
    assert plan_restarts(sunday, monday, True, [changed], {key_of(running): running}).desired, "an urgent fix does not wait"
    waiting = plan_restarts(sunday, monday, False, [changed], {key_of(running): running})
    assert waiting.status() == {"maintenance": {"pendingRestarts": ["api"], "nextWindow": "2026-12-13T23:00:00Z"}}
    assert plan_restarts(sunday, at("2026-12-06T23:30:00"), False, [changed], {}).status() == {"maintenance": None}


def workload(image: str, replicas: int = 1, admin_tls: str = "a") -> dict:
    template = {"metadata": {"labels": OWNER.labels("api"), "annotations": {ADMIN_TLS_ANNOTATION: admin_tls}},
                "spec": {"containers": [{"name": "api", "image": image}]}}
    return deployment(OWNER, "api", "api", replicas, template)


def test_only_a_running_workloads_template_change_waits() -> None:
    running = workload("iotenant:1")
    live = {key_of(running): running}
    waits = defer_restarts([workload("iotenant:2")], live)
    assert waits.desired == [] and waits.live == {} and waits.waiting == {key_of(running): running}, "neither applied nor pruned"
    assert defer_restarts([workload("iotenant:1")], live).waiting == {}, "no change, nothing waits"
    scaled = defer_restarts([workload("iotenant:2", replicas=0)], live)
    assert scaled.waiting == {} and len(scaled.desired) == 1, "suspension applies at once, the new template with it"
    repaired = defer_restarts([workload("iotenant:1", admin_tls="b")], live)
    assert repaired.waiting == {}, "new broker certificates are a repair that cannot wait"
    assert defer_restarts([workload("iotenant:2")], {}).desired, "a workload not made yet is made at once"
