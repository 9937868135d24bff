"""The one registry of the Kubernetes kinds iotenant reads and writes, by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResourceKind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        """The API group ("" for the core group)."""
        return self.api_version.rsplit("/", 1)[0] if "/" in self.api_version else ""

    @property
    def _root(self) -> str:
        return f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"

    def collection_path(self, namespace: str | None) -> str:
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.kind} is namespaced: a namespace is required")
            return f"{self._root}/namespaces/{namespace}/{self.plural}"
        return f"{self._root}/{self.plural}"

    def cluster_wide_path(self) -> str:
        """Every object of this kind, across all namespaces (what a cluster-wide list or watch reads)."""
        return f"{self._root}/{self.plural}"

    def object_path(self, name: str, namespace: str | None) -> str:
        return f"{self.collection_path(namespace)}/{name}"


KINDS: dict[tuple[str, str], ResourceKind] = {
    (k.api_version, k.kind): k
    for k in (
        ResourceKind("v1", "Namespace", "namespaces", False),
        ResourceKind("v1", "Secret", "secrets", True),
        ResourceKind("v1", "ConfigMap", "configmaps", True),
        ResourceKind("v1", "Service", "services", True),
        ResourceKind("v1", "ServiceAccount", "serviceaccounts", True),
        ResourceKind("v1", "PersistentVolumeClaim", "persistentvolumeclaims", True),
        ResourceKind("v1", "ResourceQuota", "resourcequotas", True),
        ResourceKind("v1", "LimitRange", "limitranges", True),
        ResourceKind("v1", "Pod", "pods", True),
        ResourceKind("v1", "Event", "events", True),
        ResourceKind("apps/v1", "Deployment", "deployments", True),
        ResourceKind("apps/v1", "StatefulSet", "statefulsets", True),
        ResourceKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True),
        ResourceKind("networking.k8s.io/v1", "Ingress", "ingresses", True),
        ResourceKind("cert-manager.io/v1", "Certificate", "certificates", True),
        ResourceKind("rbac.authorization.k8s.io/v1", "Role", "roles", True),
        ResourceKind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
        ResourceKind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", True),
        ResourceKind("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules", True),
        ResourceKind("coordination.k8s.io/v1", "Lease", "leases", True),
        ResourceKind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", True),
        ResourceKind("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
        ResourceKind("iotenant.io/v1alpha1", "CustomerInstance", "customerinstances", False),
        ResourceKind("iotenant.io/v1alpha1", "DeviceFleet", "devicefleets", True),
    )
}


def kind_of(api_version: str, kind: str) -> ResourceKind:
    try:
        return KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"iotenant does not manage {kind} ({api_version})") from None


def kind_of_manifest(manifest: dict[str, Any]) -> ResourceKind:
    return kind_of(manifest["apiVersion"], manifest["kind"])


NAMESPACE = kind_of("v1", "Namespace")
SECRET = kind_of("v1", "Secret")
CONFIG_MAP = kind_of("v1", "ConfigMap")
PVC = kind_of("v1", "PersistentVolumeClaim")
DEPLOYMENT = kind_of("apps/v1", "Deployment")
STATEFUL_SET = kind_of("apps/v1", "StatefulSet")
ROLE_BINDING = kind_of("rbac.authorization.k8s.io/v1", "RoleBinding")
LEASE = kind_of("coordination.k8s.io/v1", "Lease")
ENDPOINT_SLICE = kind_of("discovery.k8s.io/v1", "EndpointSlice")
CRD = kind_of("apiextensions.k8s.io/v1", "CustomResourceDefinition")
CUSTOMER_INSTANCE = kind_of("iotenant.io/v1alpha1", "CustomerInstance")
DEVICE_FLEET = kind_of("iotenant.io/v1alpha1", "DeviceFleet")

# Kinds a customer stack may contain, listed to find drift and stale objects.
NAMESPACED_KINDS: tuple[ResourceKind, ...] = tuple(
    kind_of(api_version, kind)
    for api_version, kind in (
        ("v1", "Secret"),
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("v1", "ServiceAccount"),
        ("v1", "ResourceQuota"),
        ("v1", "LimitRange"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("networking.k8s.io/v1", "Ingress"),
        ("cert-manager.io/v1", "Certificate"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    )
)
