"""Converge a namespace to a desired set of objects: apply what differs, prune what is stale, write nothing else.

A desired object is applied (server-side apply) when it is missing, when the desired manifest
changed since it was last applied (a hash in an annotation), or when the live object no longer
contains a desired field (someone edited it by hand). Objects this owner controls that are no longer
desired are deleted. A resync where nothing differs writes nothing (and, with the live objects from
the operator's watch cache, reads nothing from the API server either).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.vocabulary.kinds import kind_of_manifest

DESIRED_HASH = "iotenant.io/desired-hash"

ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


def key_of(manifest: Manifest) -> ObjectKey:
    metadata = manifest["metadata"]
    return (manifest["kind"], metadata.get("namespace", ""), metadata["name"])


def desired_hash(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def quantity(value: object) -> Decimal | None:
    """The numeric value of a Kubernetes quantity such as 500m or 2Gi, or None."""
    match = _QUANTITY.match(str(value))
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


def contains(live: object, desired: object) -> bool:
    """True when every desired field is present in ``live`` with an equal value (quantities by value)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    if live == desired:
        return True
    if isinstance(desired, (str, int)) and isinstance(live, (str, int)) and not isinstance(desired, bool):
        left, right = quantity(live), quantity(desired)
        return left is not None and left == right
    return False


def with_hash(manifest: Manifest) -> Manifest:
    annotated = json.loads(json.dumps(manifest))
    annotated["metadata"].setdefault("annotations", {})[DESIRED_HASH] = desired_hash(manifest)
    return annotated


def needs_apply(desired: Manifest, live: Manifest | None) -> bool:
    if live is None:
        return True
    if live["metadata"].get("annotations", {}).get(DESIRED_HASH) != desired["metadata"]["annotations"][DESIRED_HASH]:
        return True
    return not contains(live, desired)


def apply_if_changed(api: ClusterAPI, manifest: Manifest, live: Manifest | None) -> Manifest | None:
    """The one way iotenant writes an object: server-side apply of ``manifest`` (with its hash) when it
    differs from ``live``; returns the applied object, or None when nothing was written."""
    annotated = with_hash(manifest)
    return api.apply(annotated) if needs_apply(annotated, live) else None


def controlled_by(manifest: Manifest, owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in manifest["metadata"].get("ownerReferences", []))


@dataclass
class Convergence:
    applied: list[ObjectKey] = field(default_factory=list)
    pruned: list[ObjectKey] = field(default_factory=list)
    objects: dict[ObjectKey, Manifest] = field(default_factory=dict)


def converge(api: ClusterAPI, desired: list[Manifest], live: dict[ObjectKey, Manifest], owner_uid: str) -> Convergence:
    """Apply the desired objects that differ and delete the stale ones this owner controls."""
    result = Convergence(objects=dict(live))
    wanted = set()
    for manifest in desired:
        key = key_of(manifest)
        wanted.add(key)
        applied = apply_if_changed(api, manifest, live.get(key))
        if applied is not None:
            result.objects[key] = applied
            result.applied.append(key)
    for key, manifest in live.items():
        if key not in wanted and controlled_by(manifest, owner_uid):
            metadata = manifest["metadata"]
            api.delete(kind_of_manifest(manifest), metadata["name"], metadata.get("namespace"))
            result.objects.pop(key, None)
            result.pruned.append(key)
    return result
