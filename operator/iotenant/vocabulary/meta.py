"""Names, labels and ownership shared by every object of a customer stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
NAME = "app.kubernetes.io/name"
CUSTOMER = "iotenant.io/customer"
RETAINED_FROM = "iotenant.io/retained-from"
# On what a DeviceFleet owns: keeps it out of the CustomerInstance's own set of objects.
FLEET = "iotenant.io/fleet"
OPERATOR_NAME = "iotenant-operator"


class Component:
    """The component label's values (fixed): what each part of a tenant is."""

    BROKER = "broker"
    DATABASE = "database"
    INGEST = "ingest"
    API = "api"
    MONITORING = "monitoring"
    SIMULATOR = "simulator"


API_VERSION = "iotenant.io/v1alpha1"


NAMESPACE_PREFIX = "customer-"


def namespace_for(instance_name: str) -> str:
    """The customer namespace: readable, and unique by construction."""
    return f"{NAMESPACE_PREFIX}{instance_name}"


def is_managed_namespace(namespace: dict[str, Any]) -> bool:
    """A customer namespace the operator made and manages (not a foreign ``customer-...``, not a retained one)."""
    metadata = namespace.get("metadata") or {}
    return str(metadata.get("name", "")).startswith(NAMESPACE_PREFIX) and (metadata.get("labels") or {}).get(MANAGED_BY) == OPERATOR_NAME


@dataclass(frozen=True)
class Owner:
    """The CustomerInstance that owns a stack."""

    name: str
    uid: str

    @property
    def namespace(self) -> str:
        return namespace_for(self.name)

    def labels(self, component: str | None = None) -> dict[str, str]:
        labels = {PART_OF: "iotenant", MANAGED_BY: OPERATOR_NAME, CUSTOMER: self.name}
        if component:
            labels[COMPONENT] = component
            labels[NAME] = component
        return labels

    def selector(self, component: str) -> dict[str, str]:
        return {CUSTOMER: self.name, COMPONENT: component}

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "CustomerInstance",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(self, name: str, component: str | None = None, namespaced: bool = True) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": name,
            "labels": self.labels(component),
            "ownerReferences": [self.reference()],
        }
        if namespaced:
            metadata["namespace"] = self.namespace
        return metadata
