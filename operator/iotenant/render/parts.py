"""Every part of a customer stack, in the order it is applied: the one list that the stack, the
NetworkPolicies, the workloads Ready waits for and the volumes' classes are derived from."""

from __future__ import annotations

from iotenant.render import broker, database, ingest_and_api, monitoring
from iotenant.render.inputs import StackInput
from iotenant.render.stack_part import StackPart, Workload
from iotenant.vocabulary.meta import Component

# A DeviceFleet's simulator: rendered per fleet (``device_fleet.manifests``), a client of the broker.
SIMULATOR_PART = StackPart(name="simulator", component=Component.SIMULATOR, render=None, connects_to=(broker.INTERNAL_MQTT,))

PARTS: tuple[StackPart, ...] = (
    broker.PART,
    database.PART,
    ingest_and_api.INGEST_PART,
    ingest_and_api.API_PART,
    monitoring.PROMETHEUS_PART,
    monitoring.SHARED_MONITORING_PART,
    SIMULATOR_PART,
)


def enabled_parts(stack: StackInput) -> list[StackPart]:
    """The parts this stack has: what its licence, tier and plan enable."""
    return [part for part in PARTS if part.enabled(stack)]


def required_workloads(stack: StackInput | None = None) -> tuple[Workload, ...]:
    """What Ready waits for: every required part's workload available (of the parts ``stack`` has, when given)."""
    chosen = PARTS if stack is None else enabled_parts(stack)
    return tuple(part.workload for part in chosen if part.required and part.workload is not None)


def volumes() -> dict[str, str | None]:
    """Each StatefulSet with a persistent volume, and the spec section whose storageClassName chooses its class."""
    return {part.workload.name: part.volume.section for part in PARTS if part.volume is not None and part.workload is not None}
