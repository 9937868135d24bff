"""What a reconcile reads of its tenant, and where from: the operator's watch cache, never a list per tenant.

``TENANT_WATCHES`` names what the cache holds: every CustomerInstance (with the status just written),
every Namespace (a foreign ``customer-<name>`` must be seen to be refused), every DeviceFleet, and each
stack kind's objects labelled ``iotenant.io/customer``. Secrets are held namespace by namespace, in the
namespaces the operator manages (``meta.is_managed_namespace``): it reads Secrets nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from iotenant.kube.apply import ObjectKey, key_of, with_hash
from iotenant.kube.client import Manifest
from iotenant.kube.watch_cache import WatchCache, Watched
from iotenant.licensing.plans import Plan
from iotenant.mosquitto.addresses import split_address
from iotenant.mosquitto.admin_tls import AdminTLS
from iotenant.mosquitto.device_endpoint import BrokerExposure, device_endpoint
from iotenant.render.inputs import GeneratedSecrets, StackInput
from iotenant.render.stack import render_customer_stack
from iotenant.settings import OperatorSettings
from iotenant.vocabulary import meta
from iotenant.vocabulary.kinds import CUSTOMER_INSTANCE, DEVICE_FLEET, NAMESPACE, NAMESPACED_KINDS, SECRET
from iotenant.vocabulary.meta import FLEET

# Whose status a reconcile reads: workload readiness, a load balancer's address, a fleet's last report.
_STATUS_READ = frozenset({"Deployment", "StatefulSet", "Service"})

TENANT_WATCHES: tuple[Watched, ...] = (
    Watched(CUSTOMER_INSTANCE, keep_status=True),  # a reconcile starts from the instance as last written
    Watched(NAMESPACE),
    # Fleets outside customer namespaces are only told so (from the event itself), never held.
    Watched(DEVICE_FLEET, keep_status=True, namespace_prefix=meta.NAMESPACE_PREFIX),
    *(Watched(kind, meta.CUSTOMER, keep_status=kind.kind in _STATUS_READ, per_namespace=kind == SECRET) for kind in NAMESPACED_KINDS),
)
# The plan whose rendered tenant the cache compresses with.
DICTIONARY_PLAN = "starter"


@dataclass
class LiveObjects:
    """The tenant's namespace as the cache holds it: the stack's objects, and the fleets' own (credentials, simulators)."""

    namespace_name: str
    stack: dict[ObjectKey, Manifest] = field(default_factory=dict)
    fleets: dict[ObjectKey, Manifest] = field(default_factory=dict)
    namespace_exists: bool = False  # False: nothing is there yet, and nothing there may be read yet

    def secret(self, name: str) -> Manifest | None:
        return self.stack.get(("Secret", self.namespace_name, name))

    def workload(self, kind: str, name: str, objects: dict[ObjectKey, Manifest]) -> Manifest | None:
        return objects.get((kind, self.namespace_name, name))


def live_objects(cache: WatchCache, owner: meta.Owner, namespace: Manifest | None) -> LiveObjects:
    """The objects labelled for ``owner`` in its namespace (none while the namespace does not exist). Raises
    ``NotListedYet`` while the cache has not yet listed the namespace's Secrets."""
    live = LiveObjects(owner.namespace)
    if namespace is None:
        return live
    for kind in NAMESPACED_KINDS:
        for item in cache.in_namespace(kind, owner.namespace, {meta.CUSTOMER: owner.name}):
            (live.fleets if FLEET in item["metadata"].get("labels", {}) else live.stack)[key_of(item)] = item
    live.stack[key_of(namespace)] = namespace
    live.namespace_exists = True
    return live


def cache_dictionary(settings: OperatorSettings, catalogue: dict[str, Plan]) -> bytes:
    """What the watch cache's objects look like, to compress them with: the JSON of one rendered tenant
    (of the plan most tenants have, starter when the catalogue has it), its generated values empty: a
    password shares nothing with another."""
    plan = catalogue.get(DICTIONARY_PLAN) or next(iter(catalogue.values()))
    owner = meta.Owner("sample", "00000000-0000-0000-0000-000000000000")
    in_cluster = split_address(settings.device_broker_address(owner.namespace, owner.name))
    empty_tls = AdminTLS("", "", "", "", "")
    stack = StackInput(
        owner=owner, spec={"customerId": "sample", "plan": plan.name}, settings=settings,
        secrets=GeneratedSecrets("", "", "", "", empty_tls, "", "", ""),
        claims=plan.claims("sample", settings.issuer, 0, now=0), licence_token="", jwks={"keys": []}, quota=plan.quota,
        serving=True, service_monitor_crd_present=True, broker_limits=plan.broker,
        device_endpoint=device_endpoint(BrokerExposure.from_spec({}), in_cluster, None),
    )
    return "".join(json.dumps(with_hash(manifest), separators=(",", ":")) for manifest in render_customer_stack(stack)).encode()
