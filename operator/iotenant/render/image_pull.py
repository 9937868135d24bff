"""Registry credentials for tenant pods: the operator's image pull Secrets, copied into each customer namespace.

The operator is configured with the names of ``kubernetes.io/dockerconfigjson`` Secrets in its own namespace
(``--image-pull-secrets``; the chart passes ``imagePullSecrets``). A pod can only use a pull Secret of its
own namespace, so each customer namespace gets a copy, named ``image-pull-<name>`` so that it can never take
the name of a Secret of the stack, and every pod the operator renders names them all.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from iotenant.vocabulary.meta import Owner

Manifest = dict[str, Any]
COPY_PREFIX = "image-pull-"

# The Secret types a kubelet pulls with, and the key each keeps its credentials under.
PULL_SECRET_KEYS = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}


@dataclass(frozen=True)
class PullSecret:
    """One pull Secret as read from the operator's namespace: its name, type and (base64) credentials."""

    name: str
    type: str
    credentials: str

    @classmethod
    def from_secret(cls, secret: Manifest) -> "PullSecret | None":
        """The pull Secret ``secret`` holds, None unless it is of a pull type with its key as a string."""
        secret_type = secret.get("type")
        key = PULL_SECRET_KEYS.get(secret_type) if isinstance(secret_type, str) else None
        value = (secret.get("data") or {}).get(key) if key else None
        if not isinstance(value, str) or not value or not _is_base64(value):
            return None  # a copy of it would be refused by the API server, and stop every tenant's reconcile
        return cls(secret["metadata"]["name"], secret_type, value)  # type: ignore[arg-type]


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def pull_secret_copies(owner: Owner, sources: tuple[PullSecret, ...]) -> list[Manifest]:
    """The customer namespace's copy of each pull Secret."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": owner.metadata(copy_name(source.name), None),
            "type": source.type,
            "data": {PULL_SECRET_KEYS[source.type]: source.credentials},
        }
        for source in sources
    ]


def copy_name(name: str) -> str:
    """The name of pull Secret ``name``'s copy in a customer namespace."""
    return COPY_PREFIX + name


def image_pull_secrets(names: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
    """The pod spec field naming the copies of pull Secrets ``names`` (nothing at all without names)."""
    return {"imagePullSecrets": [{"name": copy_name(name)} for name in names]} if names else {}
