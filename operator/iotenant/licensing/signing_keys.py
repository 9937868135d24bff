"""The operator's licence signing keys: a key ring in a Secret in the operator namespace.

The ring has one active key (it signs new licences) and may keep older keys while some licence
still uses them. Rotation adds a key and makes it active; every licence is then re-signed; an old
key is retired (dropped from the ring and from the published JWKS) once no licence uses it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kubernetes.client.exceptions import ApiException

from iotenant.kube.client import ClusterAPI
from iotenant.licensing.keys import SigningKey, jwks
from iotenant.vocabulary.contract import JWKS_CONFIG_MAP, JWKS_KEY
from iotenant.vocabulary.kinds import NAMESPACE, SECRET
from iotenant.vocabulary.meta import MANAGED_BY, OPERATOR_NAME, PART_OF

SECRET_NAME = "iotenant-licence-signing-keys"
SECRET_KEY = "keyring.json"


class SigningKeysUnavailable(RuntimeError):
    """The key ring cannot be read or created; the message says what to fix."""


@dataclass(frozen=True)
class KeyRing:
    active_kid: str
    keys: dict[str, SigningKey] = field(default_factory=dict)

    @classmethod
    def new(cls) -> "KeyRing":
        key = SigningKey.generate()
        return cls(active_kid=key.kid, keys={key.kid: key})

    @property
    def active(self) -> SigningKey:
        return self.keys[self.active_kid]

    @cached_property
    def public_jwks(self) -> dict[str, Any]:
        """Computed once per ring: every reconcile verifies with it."""
        return jwks([key.jwk for key in self.keys.values()])

    def rotated(self) -> "KeyRing":
        key = SigningKey.generate()
        return KeyRing(active_kid=key.kid, keys={**self.keys, key.kid: key})

    def retired(self, kids_in_use: set[str]) -> "KeyRing":
        """The ring without keys that are neither active nor used by any licence."""
        keep = {kid: key for kid, key in self.keys.items() if kid == self.active_kid or kid in kids_in_use}
        return KeyRing(active_kid=self.active_kid, keys=keep)

    def to_json(self) -> str:
        return json.dumps(
            {
                "active": self.active_kid,
                "keys": [
                    {"kid": kid, "createdAt": key.created_at, "privateKeyPem": key.to_pem().decode()}
                    for kid, key in sorted(self.keys.items())
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "KeyRing":
        document = json.loads(text)
        keys = {}
        for entry in document["keys"]:
            key = SigningKey.from_pem(entry["privateKeyPem"].encode(), created_at=int(entry["createdAt"]))
            if key.kid != entry["kid"]:
                raise SigningKeysUnavailable(f"key ring entry {entry['kid']} does not match its key (thumbprint {key.kid})")
            keys[key.kid] = key
        if document["active"] not in keys:
            raise SigningKeysUnavailable(f"the active key {document['active']} is not in the key ring")
        return cls(active_kid=document["active"], keys=keys)


def _secret_manifest(namespace: str, ring: KeyRing, resource_version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": SECRET_NAME,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "iotenant", "app.kubernetes.io/managed-by": "iotenant-operator"},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {SECRET_KEY: base64.b64encode(ring.to_json().encode()).decode()},
    }


def _ring_from_secret(secret: dict[str, Any]) -> KeyRing:
    try:
        return KeyRing.from_json(base64.b64decode(secret["data"][SECRET_KEY]).decode())
    except (KeyError, ValueError) as error:
        raise SigningKeysUnavailable(
            f"Secret {secret['metadata']['namespace']}/{SECRET_NAME} has no valid {SECRET_KEY}: {error}"
        ) from error


def read(api: ClusterAPI, namespace: str, known: tuple[KeyRing, str] | None = None) -> tuple[KeyRing, str] | None:
    """The key ring and its Secret's resourceVersion, or None if there is no ring yet.

    ``known`` is returned as it is when the Secret has not changed since: no keys are parsed again.
    """
    secret = api.get(SECRET, SECRET_NAME, namespace)
    if secret is None:
        return None
    version = secret["metadata"]["resourceVersion"]
    if known is not None and known[1] == version:
        return known
    return _ring_from_secret(secret), version


def load_or_create(api: ClusterAPI, namespace: str, create: bool = True) -> tuple[KeyRing, str]:
    """The ring and its Secret's resourceVersion, created on first start unless ``create`` is false;
    two replicas starting at once end with the same ring."""
    if api.get(NAMESPACE, namespace) is None:
        raise SigningKeysUnavailable(
            f"the operator namespace {namespace!r} does not exist: create it (kubectl create namespace {namespace}) "
            "or pass --namespace / IOTENANT_NAMESPACE"
        )
    existing = read(api, namespace)
    if existing is not None:
        return existing
    if not create:
        raise SigningKeysUnavailable(
            f"Secret {namespace}/{SECRET_NAME} (key {SECRET_KEY}) does not exist and creating it is turned off: "
            "restore it from a backup, or start with --create-signing-keys=true"
        )
    try:
        api.create(_secret_manifest(namespace, KeyRing.new()))
    except ApiException as error:
        if error.status != 409:
            raise
    found = read(api, namespace)
    assert found is not None
    return found


def replace(api: ClusterAPI, namespace: str, ring: KeyRing, resource_version: str) -> str:
    """Write the ring, failing with 409 if someone else changed it since ``resource_version``; the new version."""
    manifest = _secret_manifest(namespace, ring, resource_version)
    return str(api.replace(SECRET, SECRET_NAME, namespace, manifest)["metadata"]["resourceVersion"])


def rotate(api: ClusterAPI, namespace: str) -> tuple[str, str]:
    """Add a key and make it active; returns (old kid, new kid). The operator then re-signs every licence."""
    found = read(api, namespace)
    if found is None:
        raise SigningKeysUnavailable(f"no key ring in namespace {namespace!r}: start the operator once first")
    ring, version = found
    new = ring.rotated()
    replace(api, namespace, new, version)
    return ring.active_kid, new.active_kid


def jwks_config_map(namespace: str, document: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": JWKS_CONFIG_MAP,
            "namespace": namespace,
            "labels": {PART_OF: "iotenant", MANAGED_BY: OPERATOR_NAME},
        },
        "data": {JWKS_KEY: json.dumps(document, sort_keys=True)},
    }
