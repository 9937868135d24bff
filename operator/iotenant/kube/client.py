"""A thin, typed layer over the official Kubernetes client's REST transport.

Objects are plain dicts (as they travel on the wire). Every write the operator makes goes through
``apply`` (server-side apply, one field manager), ``patch_status``, ``delete`` or ``create``.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from iotenant import __version__
from iotenant.kube.kinds import ResourceKind, kind_of_manifest

FIELD_MANAGER = "iotenant-operator"
USER_AGENT = f"iotenant-operator/{__version__}"

Manifest = dict[str, Any]


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
