"""Each device's credentials in its fleet's Secret: kept, new for new devices, all new on a rotation request."""

from __future__ import annotations

import base64

from iotenant.device_fleet import manifests as fleet_objects
from iotenant.device_fleet.admission import Fleet
from iotenant.kube.client import Manifest
from iotenant.mosquitto.device_endpoint import DeviceEndpoint
from iotenant.mosquitto.identities import DeviceCredentials, new_password


def fleet_credentials(
    fleet: Fleet, live: Manifest | None, endpoint: DeviceEndpoint
) -> tuple[list[DeviceCredentials], str, bool]:
    """Each device's credentials: kept from the live Secret, new for new devices, all new on rotation;
    every one names ``endpoint`` (its address follows what the cluster assigned, the password stays)."""
    request = fleet.rotation_request
    handled = ((live or {}).get("metadata", {}).get("annotations") or {}).get(fleet_objects.ROTATED_FOR_ANNOTATION, "")
    rotated = live is not None and handled != request
    passwords: dict[str, str] = {}
    if live is not None and not rotated:
        for device_id, value in (live.get("data") or {}).items():
            try:
                passwords[device_id] = DeviceCredentials.from_url(base64.b64decode(value).decode()).password
            except ValueError:
                continue  # edited by hand into something unusable: a new password heals it
    credentials = [DeviceCredentials(d, passwords.get(d) or new_password(), endpoint.host, endpoint.port, endpoint.scheme)
                   for d in fleet.devices]
    return credentials, request, rotated
