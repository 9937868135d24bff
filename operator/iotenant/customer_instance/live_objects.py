"""What a reconcile reads of its tenant, and where from: the operator's watch cache, never a list per tenant.

``TENANT_WATCHES`` names what the cache holds: every CustomerInstance (with the status just written),
every Namespace (a foreign ``customer-<name>`` must be seen to be refused), every DeviceFleet, and each
stack kind's objects labelled ``iotenant.io/customer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iotenant.kube.apply import ObjectKey, key_of
from iotenant.kube.client import Manifest
from iotenant.kube.kinds import CUSTOMER_INSTANCE, DEVICE_FLEET, NAMESPACE, NAMESPACED_KINDS
from iotenant.kube.watch_cache import WatchCache, Watched
from iotenant.render import meta
from iotenant.render.fleet import FLEET_LABEL

# Whose status a reconcile reads: workload readiness, a load balancer's address, a fleet's last report.
_STATUS_READ = frozenset({"Deployment", "StatefulSet", "Service"})

TENANT_WATCHES: tuple[Watched, ...] = (
    Watched(CUSTOMER_INSTANCE, keep_status=True),  # a reconcile starts from the instance as last written
    Watched(NAMESPACE),
    Watched(DEVICE_FLEET, keep_status=True),
    *(Watched(kind, meta.CUSTOMER, keep_status=kind.kind in _STATUS_READ) for kind in NAMESPACED_KINDS),
)


@dataclass
class LiveObjects:
    """The tenant's namespace as the cache holds it: the stack's objects, and the fleets' own (credentials, simulators)."""

    namespace_name: str
    stack: dict[ObjectKey, Manifest] = field(default_factory=dict)
    fleets: dict[ObjectKey, Manifest] = field(default_factory=dict)

    def secret(self, name: str) -> Manifest | None:
        return self.stack.get(("Secret", self.namespace_name, name))

    def workload(self, kind: str, name: str, objects: dict[ObjectKey, Manifest]) -> Manifest | None:
        return objects.get((kind, self.namespace_name, name))


def live_objects(cache: WatchCache, owner: meta.Owner, namespace: Manifest | None) -> LiveObjects:
    """The objects labelled for ``owner`` in its namespace (none while the namespace does not exist)."""
    live = LiveObjects(owner.namespace)
    if namespace is None:
        return live
    for kind in NAMESPACED_KINDS:
        for item in cache.in_namespace(kind, owner.namespace, {meta.CUSTOMER: owner.name}):
            (live.fleets if FLEET_LABEL in item["metadata"].get("labels", {}) else live.stack)[key_of(item)] = item
    live.stack[key_of(namespace)] = namespace
    return live
