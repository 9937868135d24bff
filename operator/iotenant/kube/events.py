"""Kubernetes Events about iotenant's objects: what happened, visible in ``kubectl describe``."""

from __future__ import annotations

import logging

from kubernetes.client.exceptions import ApiException

from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.timestamps import rfc3339
from iotenant.vocabulary import meta

log = logging.getLogger("iotenant.events")

CLUSTER_SCOPED_EVENT_NAMESPACE = "default"  # where Events about cluster-scoped objects live


def post_event(api: ClusterAPI, involved: Manifest, event_type: str, reason: str, message: str) -> None:
    """Post one Event (``Normal`` or ``Warning``) about ``involved``; failing to post never fails the caller."""
    metadata = involved["metadata"]
    namespace = metadata.get("namespace") or CLUSTER_SCOPED_EVENT_NAMESPACE
    stamp = rfc3339()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", meta.API_VERSION),
            "kind": involved["kind"],
            "name": metadata["name"],
            "uid": metadata["uid"],
            "resourceVersion": metadata.get("resourceVersion", ""),
            **({"namespace": metadata["namespace"]} if metadata.get("namespace") else {}),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": meta.OPERATOR_NAME},
        "reportingComponent": meta.OPERATOR_NAME,
        "reportingInstance": meta.OPERATOR_NAME,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        api.create(event)
    except ApiException as error:
        log.warning("could not post event %s for %s: %s", reason, metadata["name"], error.reason)
