"""The one status writer: a status is patched only when it differs, and its changes become Events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.kube.events import post_event
from iotenant.vocabulary.kinds import ResourceKind

# An Event a status change deserves: (type Normal|Warning, reason, message).
EventNote = tuple[str, str, str]


def no_events(_previous: dict[str, Any], _status: dict[str, Any]) -> list[EventNote]:
    return []


def write_status(api: ClusterAPI, kind: ResourceKind, body: Manifest, status: dict[str, Any],
                 events: Callable[[dict[str, Any], dict[str, Any]], list[EventNote]] = no_events) -> bool:
    """Patch ``status`` (the fields given) when any differs from ``body``'s; post the Events that
    ``events(previous, status)`` names. Returns whether a patch was sent."""
    previous = body.get("status") or {}
    if all(previous.get(key) == value for key, value in status.items()):
        return False
    metadata = body["metadata"]
    api.patch_status(kind, metadata["name"], metadata.get("namespace"), status)
    involved = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
    for event_type, reason, message in events(previous, status):
        post_event(api, involved, event_type, reason, message)
    return True
