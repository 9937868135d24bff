"""The monitoring parts: the tier of the verified licence decides, a shared tier waits for its CRDs, and
no licence means no monitoring at all."""

from __future__ import annotations

import dataclasses

from iotenant.render import monitoring
from iotenant.render.parts import enabled_parts
from stacks import fixture_stack


def test_the_dedicated_prometheus_keeps_what_the_licence_buys() -> None:
    stack = fixture_stack("enterprise")
    objects = {(o["kind"], o["metadata"]["name"]): o for o in monitoring.prometheus(stack)}
    (server,) = objects[("StatefulSet", "prometheus")]["spec"]["template"]["spec"]["containers"]
    retention = stack.claims.monitoring if stack.claims else None
    assert retention and f"--storage.tsdb.retention.time={retention.retentionDays}d" in server["args"]
    assert f"--storage.tsdb.retention.size={monitoring.retention_size(retention.storageGb)}" in server["args"]


def test_the_shared_tier_renders_what_its_crds_allow_and_nothing_without_a_licence() -> None:
    stack = fixture_stack("starter")
    assert [o["kind"] for o in monitoring.shared(stack)] == ["ServiceMonitor", "PrometheusRule"]
    assert monitoring.shared(dataclasses.replace(stack, service_monitor_crd_present=False, prometheus_rule_crd_present=False)) == []
    unlicensed = dataclasses.replace(stack, claims=None)
    assert not {part.name for part in enabled_parts(unlicensed)} & {"prometheus", "shared-monitoring"}
    assert {part.name for part in enabled_parts(fixture_stack("enterprise"))} >= {"prometheus"}
