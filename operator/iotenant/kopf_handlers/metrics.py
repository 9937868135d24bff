"""The operator's own metrics (reconciles, objects written, instances by phase, signing keys)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PHASES = ("Pending", "Provisioning", "Ready", "Degraded", "Suspended", "Failed", "Terminating")

RECONCILES = Counter("iotenant_operator_reconciles_total", "Reconciles of CustomerInstances by outcome", ["result"])
RECONCILE_SECONDS = Histogram(
    "iotenant_operator_reconcile_seconds", "Time of one CustomerInstance reconcile, once it has a reconcile thread",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_WAIT_SECONDS = Histogram(
    "iotenant_operator_reconcile_wait_seconds", "Time a CustomerInstance due for a reconcile waited for a reconcile thread",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
OBJECTS_APPLIED = Counter("iotenant_operator_objects_applied_total", "Objects applied (server-side) because they differed")
OBJECTS_PRUNED = Counter("iotenant_operator_objects_pruned_total", "Stale objects deleted")
INSTANCES_BY_PHASE = Gauge("iotenant_operator_instances", "CustomerInstances by phase", ["phase"])
SIGNING_KEYS = Gauge("iotenant_operator_signing_keys", "Licence signing keys in the key ring")


def count_phases(phases: dict[str, str]) -> None:
    """``phases``: each instance's last phase, by uid."""
    counts: dict[str, int] = {}
    for phase in phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase in PHASES:
        INSTANCES_BY_PHASE.labels(phase).set(counts.get(phase, 0))
