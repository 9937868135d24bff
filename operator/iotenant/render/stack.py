"""A whole customer stack, in the order it is applied."""

from __future__ import annotations

from typing import Any

from iotenant.render import guardrails, licence, monitoring, operator_access
from iotenant.render.cert_manager import CERTIFICATE_CRD
from iotenant.render.image_pull import pull_secret_copies
from iotenant.render.inputs import StackInput
from iotenant.render.parts import enabled_parts

Manifest = dict[str, Any]
# Other projects' CRDs the stack uses when they are installed (the operator watches them come and go).
OPTIONAL_CRDS = (*monitoring.MONITORING_CRDS, CERTIFICATE_CRD)


def render_customer_stack(stack: StackInput) -> list[Manifest]:
    """Every object of the customer namespace, from the spec and the verified claims only: the namespace and
    its guard rails, the licence, then each part the licence enables."""
    objects = namespace_objects(stack)
    for part in enabled_parts(stack):
        if part.render is not None:
            objects += part.render(stack)
    return objects


def namespace_objects(stack: StackInput) -> list[Manifest]:
    """What the namespace holds before any part: itself, its guard rails, the pull Secrets and the licence."""
    objects: list[Manifest] = [guardrails.namespace(stack.owner), *operator_access.secret_reader_binding(stack.owner, stack.settings)]
    if stack.quota is not None:
        objects.append(guardrails.resource_quota(stack.owner, stack.quota))
    objects.append(guardrails.limit_range(stack.owner))
    objects += guardrails.network_policies(stack)
    objects += pull_secret_copies(stack.owner, stack.pull_secrets)
    objects += licence.licence_objects(stack)
    return objects
