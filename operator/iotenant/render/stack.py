"""A whole customer stack, in the order it is applied."""

from __future__ import annotations

from typing import Any

from iotenant.render import guardrails, monitoring, workloads
from iotenant.render.inputs import StackInput

Manifest = dict[str, Any]


def render_customer_stack(stack: StackInput) -> list[Manifest]:
    """Every object of the customer namespace, from the spec and the verified claims only."""
    objects: list[Manifest] = [guardrails.namespace(stack.owner)]
    if stack.quota is not None:
        objects.append(guardrails.resource_quota(stack.owner, stack.quota))
    objects.append(guardrails.limit_range(stack.owner))
    objects += guardrails.network_policies(stack)
    objects += workloads.licence_objects(stack)
    objects += workloads.broker(stack)
    objects += workloads.database(stack)
    objects += workloads.ingest(stack)
    objects += workloads.api(stack)
    objects += monitoring.monitoring(stack)
    return objects
