"""A deleted CustomerInstance: its namespace goes with it (Delete), or stays, released (Retain)."""

from __future__ import annotations

from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from iotenant.kube.apply import controlled_by
from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.render.operator_access import SECRET_READER_BINDING
from iotenant.vocabulary import meta
from iotenant.vocabulary.kinds import NAMESPACE, NAMESPACED_KINDS, PVC, ROLE_BINDING


def finalize(api: ClusterAPI, body: Manifest, post_event: Callable[[Manifest, str, str, str], None]) -> None:
    """Delete: the namespace goes (with everything in it). Retain: keep it, labelled, unowned, unmanaged."""
    metadata, spec = body["metadata"], body.get("spec") or {}
    name, uid = metadata["name"], metadata["uid"]
    namespace_name = meta.namespace_for(name)
    namespace = api.get(NAMESPACE, namespace_name)
    if namespace is None or not controlled_by(namespace, uid):
        return  # already gone, or never ours: nothing to do, nothing to wait for
    if spec.get("deletionPolicy", "Delete") == "Delete":
        api.delete(NAMESPACE, namespace_name)
        post_event(body, "Normal", "NamespaceDeleted", f"namespace {namespace_name} and its data are being deleted")
        return
    release = {"metadata": {"ownerReferences": None, "labels": {meta.RETAINED_FROM: name, meta.MANAGED_BY: None}}}
    for kind in (*NAMESPACED_KINDS, PVC):
        try:
            items = api.list(kind, namespace_name, f"{meta.CUSTOMER}={name}")
        except ApiException as error:
            if error.status == 404:
                continue
            raise
        for item in items:
            if (kind, item["metadata"]["name"]) != (ROLE_BINDING, SECRET_READER_BINDING):
                api.merge_patch(kind, item["metadata"]["name"], namespace_name, release)
    # No longer managed, no longer read: the operator's access goes before the namespace leaves its fence.
    api.delete(ROLE_BINDING, SECRET_READER_BINDING, namespace_name)
    api.merge_patch(NAMESPACE, namespace_name, None, release)
    post_event(body, "Normal", "NamespaceRetained", f"namespace {namespace_name} and its volumes are kept, no longer managed")
