"""Growing a tenant's volumes when its spec asks for more storage.

A StatefulSet's volume claim templates cannot change; its claims can grow where their StorageClass allows
volume expansion. So a larger ``storage`` is brought about in one reconcile:

1. every claim of the StatefulSet is asked for the new size (the cluster's resize controller and the
   volume's driver do the rest, online where the driver can);
2. the StatefulSet is deleted with its pods orphaned: they keep running and keep their volumes;
3. once it is gone, it is applied anew with the new template; the reconcile waits (bounded) until the new
   StatefulSet has adopted the pods and counts them ready, so the status never reports a running broker or
   database as not ready because its StatefulSet was replaced.

A claim whose class refuses to grow leaves the StatefulSet as it is (a ``VolumeExpansionRefused`` Event
says why, once per refusal) and the rest of the stack converges around it. A smaller size is never
applied: the schema refuses shrinking ``storage``, and a size the licence lowered (a dedicated
Prometheus after a plan change) leaves the volume as it is.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from kubernetes.client.exceptions import ApiException

from iotenant.kube.apply import ObjectKey, apply_if_changed, key_of, quantity
from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.vocabulary import meta
from iotenant.vocabulary.kinds import PVC, STATEFUL_SET

# The resize admission's refusals: the class does not allow expansion (403), the claim cannot take it (422).
REFUSALS = (403, 422)
# How long the garbage collector may take to orphan a StatefulSet's pods and let it go.
REPLACEMENT_TIMEOUT_SECONDS = 30.0
_REPLACEMENT_POLL_SECONDS = 0.1


def claim_size(stateful_set: Manifest) -> str | None:
    """The storage each pod's volume claim asks for, None for a StatefulSet without volumes."""
    templates = stateful_set.get("spec", {}).get("volumeClaimTemplates") or []
    return templates[0]["spec"]["resources"]["requests"]["storage"] if templates else None


def with_claim_size(stateful_set: Manifest, size: str) -> Manifest:
    """``stateful_set`` (a desired manifest, left unchanged) with its volume claim template asking for ``size``."""
    changed = copy.deepcopy(stateful_set)
    changed["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = size
    return changed


def bytes_of(size: str) -> Decimal:
    """A volume size in bytes (the schema's pattern makes every size a quantity)."""
    value = quantity(size)
    if value is None:
        raise ValueError(f"not a quantity: {size!r}")
    return value


@dataclass
class VolumeGrowth:
    """What this reconcile applies: ``desired`` with sizes that cannot be applied replaced by the live ones,
    ``live`` with the StatefulSets just replaced as they are now, ``refusals`` why a StatefulSet's volumes
    cannot grow."""

    desired: list[Manifest]
    live: dict[ObjectKey, Manifest]
    refusals: dict[str, str] = field(default_factory=dict)


def grow_volumes(api: ClusterAPI, owner: meta.Owner, desired: list[Manifest], live: dict[ObjectKey, Manifest]) -> VolumeGrowth:
    """Bring each StatefulSet's volumes to the size ``desired`` asks for, as the module says."""
    growth = VolumeGrowth(desired=[], live=dict(live))
    for manifest in desired:
        key = key_of(manifest)
        current = live.get(key) if manifest["kind"] == STATEFUL_SET.kind else None
        wanted, has = (claim_size(manifest), claim_size(current)) if current is not None else (None, None)
        if current is None or wanted is None or has is None or wanted == has:
            growth.desired.append(manifest)
            continue
        refusal = "" if bytes_of(wanted) <= bytes_of(has) else _grow_claims(api, owner, manifest, wanted)
        if refusal is None:
            growth.live[key] = _replaced(api, manifest, owner.namespace)
            growth.desired.append(manifest)
        else:
            if refusal:
                growth.refusals[manifest["metadata"]["name"]] = refusal
            growth.desired.append(with_claim_size(manifest, has))  # volumes never shrink; 1Gi stays 1Gi, not 1024Mi
    return growth


def _selector(stateful_set: Manifest) -> str:
    """The label selector of a StatefulSet's pods, which their volume claims carry too."""
    labels = stateful_set["spec"]["selector"]["matchLabels"]
    return ",".join(f"{name}={value}" for name, value in sorted(labels.items()))


def _grow_claims(api: ClusterAPI, owner: meta.Owner, stateful_set: Manifest, size: str) -> str | None:
    """Ask each claim of ``stateful_set`` (its pods' volumes, by label) for ``size``; the API server's refusal, if any."""
    for claim in api.list(PVC, owner.namespace, _selector(stateful_set)):
        requested = claim.get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
        if requested is not None and bytes_of(requested) >= bytes_of(size):
            continue
        try:
            api.merge_patch(PVC, claim["metadata"]["name"], owner.namespace, {"spec": {"resources": {"requests": {"storage": size}}}})
        except ApiException as error:
            if error.status not in REFUSALS:
                raise  # the API server in trouble is no answer about the class: the reconcile fails and is retried
            return f"volume {claim['metadata']['name']} cannot grow to {size}: {_message(error)}"[:900]
    return None


def _message(error: ApiException) -> str:
    """What the API server said (its Status message), or its raw answer."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.body)
    except (ValueError, AttributeError):
        return str(error.body or error.reason)


def _replaced(api: ClusterAPI, manifest: Manifest, namespace: str) -> Manifest:
    """Replace StatefulSet ``manifest`` around its running pods, as the module says; the new one as last seen."""
    name, selector = manifest["metadata"]["name"], _selector(manifest)

    def found() -> Manifest | None:
        return next((item for item in api.list(STATEFUL_SET, namespace, selector) if item["metadata"]["name"] == name), None)

    api.delete(STATEFUL_SET, name, namespace, propagation="Orphan")
    deadline = time.monotonic() + REPLACEMENT_TIMEOUT_SECONDS
    while found() is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"StatefulSet {name} was deleted (pods orphaned) to take its larger volumes, "
                               f"and is still there after {REPLACEMENT_TIMEOUT_SECONDS:.0f} s")
        time.sleep(_REPLACEMENT_POLL_SECONDS)
    latest = apply_if_changed(api, manifest, None)
    assert latest is not None
    while not _counts_its_pods(latest) and time.monotonic() < deadline:
        time.sleep(_REPLACEMENT_POLL_SECONDS)
        latest = found() or latest
    return latest


def _counts_its_pods(stateful_set: Manifest) -> bool:
    """Whether the StatefulSet's controller has observed it and counts as many ready pods as it wants."""
    status, wanted = stateful_set.get("status") or {}, int(stateful_set["spec"].get("replicas", 1))
    observed = int(status.get("observedGeneration", 0)) >= int(stateful_set["metadata"].get("generation", 1))
    return observed and int(status.get("readyReplicas", 0) or 0) >= wanted


def announce_refusals(growth: VolumeGrowth, announced: dict[str, str], warn: Callable[[str], None]) -> dict[str, str]:
    """Warn once about each new refusal; the refusals still standing, to compare with next time."""
    for name, message in growth.refusals.items():
        if announced.get(name) != message:
            warn(message)
    return dict(growth.refusals)
