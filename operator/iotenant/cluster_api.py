"""A thin, typed layer over the official Kubernetes client's REST transport.

Objects are plain dicts (as they travel on the wire). Every write the operator makes goes through
``apply`` (server-side apply, one field manager), ``patch_status``, ``delete`` or ``create``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from iotenant import __version__

FIELD_MANAGER = "iotenant-operator"
USER_AGENT = f"iotenant-operator/{__version__}"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ResourceKind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def collection_path(self, namespace: str | None) -> str:
        root = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.kind} is namespaced: a namespace is required")
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"

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
        ResourceKind("rbac.authorization.k8s.io/v1", "Role", "roles", True),
        ResourceKind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
        ResourceKind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", True),
        ResourceKind("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules", True),
        ResourceKind("coordination.k8s.io/v1", "Lease", "leases", True),
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


def kind_of_manifest(manifest: Manifest) -> ResourceKind:
    return kind_of(manifest["apiVersion"], manifest["kind"])


class ClusterAPI:
    """Requests to one Kubernetes API server with one identity; safe to share between threads."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client

    @classmethod
    def from_environment(cls) -> "ClusterAPI":
        """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
        try:
            config.load_incluster_config()
            configuration = client.Configuration.get_default_copy()
        except config.ConfigException:
            configuration = client.Configuration()
            config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        api_client = client.ApiClient(configuration)
        api_client.user_agent = USER_AGENT
        return cls(api_client)

    def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Manifest:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        prepared = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*prepared, _request_timeout=timeout)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else {}

    def get(self, kind: ResourceKind, name: str, namespace: str | None = None) -> Manifest | None:
        try:
            return self._request("GET", kind.object_path(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: ResourceKind, namespace: str | None = None, label_selector: str | None = None) -> list[Manifest]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return list(self._request("GET", kind.collection_path(namespace), query=query).get("items", []))

    def apply(self, manifest: Manifest, force: bool = True) -> Manifest:
        """Server-side apply ``manifest`` as the operator's one field manager."""
        kind = kind_of_manifest(manifest)
        metadata = manifest["metadata"]
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        return self._request(
            "PATCH",
            kind.object_path(metadata["name"], metadata.get("namespace")),
            query=query,
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def create(self, manifest: Manifest) -> Manifest:
        kind = kind_of_manifest(manifest)
        return self._request("POST", kind.collection_path(manifest["metadata"].get("namespace")), body=manifest)

    def replace(self, kind: ResourceKind, name: str, namespace: str | None, manifest: Manifest) -> Manifest:
        """PUT: with metadata.resourceVersion set, fails with 409 if the object changed meanwhile."""
        return self._request("PUT", kind.object_path(name, namespace), body=manifest)

    def merge_patch(self, kind: ResourceKind, name: str, namespace: str | None, patch: Manifest) -> Manifest:
        return self._request(
            "PATCH", kind.object_path(name, namespace), body=patch, content_type="application/merge-patch+json"
        )

    def patch_status(self, kind: ResourceKind, name: str, namespace: str | None, status: Manifest) -> Manifest:
        return self._request(
            "PATCH",
            kind.object_path(name, namespace) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: ResourceKind, name: str, namespace: str | None = None, propagation: str = "Background") -> bool:
        """Delete an object; False when it was already gone."""
        try:
            self._request(
                "DELETE",
                kind.object_path(name, namespace),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
