"""A thin, typed layer over the official Kubernetes client's REST transport.

Objects are plain dicts (as they travel on the wire). Every write the operator makes goes through
``apply`` (server-side apply, one field manager), ``patch_status``, ``delete`` or ``create``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from iotenant import __version__
from iotenant.vocabulary.kinds import ResourceKind, kind_of_manifest

FIELD_MANAGER = "iotenant-operator"
USER_AGENT = f"iotenant-operator/{__version__}"

Manifest = dict[str, Any]
API_REQUESTS = Counter("iotenant_operator_api_requests_total",
                       "Requests to the API server by verb (get, list, watch, apply, create, update, patch, delete) and kind",
                       ["verb", "kind"])
# Told of every write that succeeded: (kind, the object the server returned or None when deleted, name, namespace).
WriteObserver = Callable[[ResourceKind, "Manifest | None", str, "str | None"], None]


class ClusterAPI:
    """Requests to one Kubernetes API server with one identity; safe to share between threads."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client
        self._observers: list[WriteObserver] = []

    def observe_writes(self, observer: WriteObserver) -> None:
        """Call ``observer`` after each successful write through this client (a watch cache records them)."""
        self._observers.append(observer)

    def _wrote(self, kind: ResourceKind, written: Manifest | None, name: str, namespace: str | None) -> None:
        for observer in self._observers:
            observer(kind, written, name, namespace)

    @classmethod
    def from_environment(cls, connections: int = 32) -> "ClusterAPI":
        """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config. ``connections``: how many
        requests may be under way at once without opening (and then discarding) extra connections."""
        try:
            config.load_incluster_config()
            configuration = client.Configuration.get_default_copy()
        except config.ConfigException:
            configuration = client.Configuration()
            config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = connections
        api_client = client.ApiClient(configuration)
        api_client.user_agent = USER_AGENT
        return cls(api_client)

    def with_own_connections(self, connections: int) -> "ClusterAPI":
        """The same server and identity over a pool of its own (long-lived watches keep theirs apart)."""
        configuration = self._api.configuration
        own = type(configuration)()
        own.__dict__.update({key: value for key, value in configuration.__dict__.items() if key != "logger"})
        own.connection_pool_maxsize = connections
        api_client = client.ApiClient(own)
        api_client.user_agent = self._api.user_agent
        return ClusterAPI(api_client)

    def _send(
        self,
        verb: str,
        kind: ResourceKind,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = 30.0,
    ) -> Any:
        """Count (by verb and kind) and send one request; the response, its body not yet read. Raises
        ApiException unless the server answered 2xx."""
        API_REQUESTS.labels(verb, kind.kind).inc()
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
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException(http_resp=response)
        return response

    def _request(self, verb: str, kind: ResourceKind, method: str, path: str, query: list[tuple[str, str]] | None = None,
                 body: Any = None, content_type: str = "application/json", timeout: float = 30.0) -> Manifest:
        response = self._send(verb, kind, method, path, query, body, content_type, timeout)
        response.read()
        return json.loads(response.data) if response.data else {}

    def get(self, kind: ResourceKind, name: str, namespace: str | None = None) -> Manifest | None:
        try:
            return self._request("get", kind, "GET", kind.object_path(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: ResourceKind, namespace: str | None = None, label_selector: str | None = None) -> list[Manifest]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return list(self._request("list", kind, "GET", kind.collection_path(namespace), query=query).get("items", []))

    def list_page(self, kind: ResourceKind, label_selector: str | None, limit: int, continue_token: str | None,
                  namespace: str | None = None) -> Manifest:
        """One page of a list across the cluster, or in ``namespace`` (the whole list document: items and
        metadata.resourceVersion/continue)."""
        query = [("limit", str(limit))]
        query += [("labelSelector", label_selector)] if label_selector else []
        query += [("continue", continue_token)] if continue_token else []
        path = kind.collection_path(namespace) if namespace else kind.cluster_wide_path()
        return self._request("list", kind, "GET", path, query=query, timeout=120.0)

    def watch(self, kind: ResourceKind, label_selector: str | None, resource_version: str, timeout_seconds: int,
              namespace: str | None = None) -> Iterator[Manifest]:
        """Watch events ({type, object}) across the cluster, or in ``namespace``, from ``resource_version``, with
        bookmarks, until the server ends the watch after ``timeout_seconds``. Raises ApiException for a refused
        watch (410: too old)."""
        query = [("watch", "1"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version),
                 ("timeoutSeconds", str(timeout_seconds))]
        query += [("labelSelector", label_selector)] if label_selector else []
        path = kind.collection_path(namespace) if namespace else kind.cluster_wide_path()
        stream = self._send("watch", kind, "GET", path, query, timeout=(10.0, timeout_seconds + 30.0)).response
        try:
            pending = b""
            for chunk in stream.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            stream.release_conn()

    def apply(self, manifest: Manifest, force: bool = True) -> Manifest:
        """Server-side apply ``manifest`` as the operator's one field manager."""
        kind = kind_of_manifest(manifest)
        metadata = manifest["metadata"]
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        applied = self._request(
            "apply",
            kind,
            "PATCH",
            kind.object_path(metadata["name"], metadata.get("namespace")),
            query=query,
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        self._wrote(kind, applied, metadata["name"], metadata.get("namespace"))
        return applied

    def create(self, manifest: Manifest) -> Manifest:
        kind = kind_of_manifest(manifest)
        created = self._request("create", kind, "POST", kind.collection_path(manifest["metadata"].get("namespace")), body=manifest)
        self._wrote(kind, created, created.get("metadata", {}).get("name", ""), manifest["metadata"].get("namespace"))
        return created

    def replace(self, kind: ResourceKind, name: str, namespace: str | None, manifest: Manifest) -> Manifest:
        """PUT: with metadata.resourceVersion set, fails with 409 if the object changed meanwhile."""
        replaced = self._request("update", kind, "PUT", kind.object_path(name, namespace), body=manifest)
        self._wrote(kind, replaced, name, namespace)
        return replaced

    def merge_patch(self, kind: ResourceKind, name: str, namespace: str | None, patch: Manifest) -> Manifest:
        patched = self._request(
            "patch", kind, "PATCH", kind.object_path(name, namespace), body=patch, content_type="application/merge-patch+json"
        )
        self._wrote(kind, patched, name, namespace)
        return patched

    def patch_status(self, kind: ResourceKind, name: str, namespace: str | None, status: Manifest) -> Manifest:
        patched = self._request(
            "patch_status",
            kind,
            "PATCH",
            kind.object_path(name, namespace) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        self._wrote(kind, patched, name, namespace)
        return patched

    def delete(self, kind: ResourceKind, name: str, namespace: str | None = None, propagation: str = "Background") -> bool:
        """Delete an object; False when it was already gone."""
        try:
            self._request(
                "delete",
                kind,
                "DELETE",
                kind.object_path(name, namespace),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
        except ApiException as error:
            if error.status == 404:
                self._wrote(kind, None, name, namespace)
                return False
            raise
        self._wrote(kind, None, name, namespace)
        return True

