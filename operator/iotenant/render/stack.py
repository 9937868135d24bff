"""A whole customer stack, in the order it is applied."""

from __future__ import annotations

from typing import Any

from iotenant.render import broker, database, guardrails, ingest_and_api, licence, monitoring, operator_access
from iotenant.render.cert_manager import CERTIFICATE_CRD
from iotenant.render.image_pull import pull_secret_copies
from iotenant.render.inputs import StackInput

Manifest = dict[str, Any]
# Other projects' CRDs the stack uses when they are installed (the operator watches them come and go).
OPTIONAL_CRDS = (*monitoring.MONITORING_CRDS, CERTIFICATE_CRD)


def render_customer_stack(stack: StackInput) -> list[Manifest]:
    """Every object of the customer namespace, from the spec and the verified claims only."""
    objects: list[Manifest] = [guardrails.namespace(stack.owner), *operator_access.secret_reader_binding(stack.owner, stack.settings)]
    if stack.quota is not None:
        objects.append(guardrails.resource_quota(stack.owner, stack.quota))
    objects.append(guardrails.limit_range(stack.owner))
    objects += guardrails.network_policies(stack)
    objects += pull_secret_copies(stack.owner, stack.pull_secrets)
    objects += licence.licence_objects(stack)
    objects += broker.broker(stack)
    objects += database.database(stack)
    objects += ingest_and_api.ingest(stack)
    objects += ingest_and_api.api(stack)
    objects += monitoring.monitoring(stack)
    return objects
