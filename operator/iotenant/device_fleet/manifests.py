"""What a DeviceFleet owns in its namespace: the credentials Secret and the optional simulator.

Both are owned by the fleet (garbage-collected with it) and carry the customer labels plus
``iotenant.io/fleet``, which keeps them out of the CustomerInstance's own set of objects.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from iotenant.device_fleet.admission import Fleet
from iotenant.mosquitto.identities import DeviceCredentials
from iotenant.render.builders import container, deployment, empty_dir, http_probe, pod_template
from iotenant.render.ingest_and_api import IOTENANT_UID
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.contract import DEVICE_CREDENTIALS_MOUNT, METRICS_PORT, MQTT_INTERNAL_PORT, Env, broker_host
from iotenant.vocabulary.meta import API_VERSION, FLEET, Component, Owner

Manifest = dict[str, Any]

ROTATED_FOR_ANNOTATION = "iotenant.io/rotated-for"
DEVICES_HASH_ANNOTATION = "iotenant.io/devices-hash"
# The API server refuses a Secret whose values add up to more than this.
SECRET_DATA_LIMIT = 1024 * 1024


def credentials_secret_name(fleet_name: str) -> str:
    return f"devicefleet-{fleet_name}-credentials"


def simulator_name(fleet_name: str) -> str:
    return f"simulator-{fleet_name}"


def _metadata(owner: Owner, fleet: Fleet, name: str, component: str) -> Manifest:
    return {
        "name": name,
        "namespace": fleet.namespace,
        "labels": {**owner.labels(component), FLEET: fleet.name},
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": "DeviceFleet",
                "name": fleet.name,
                "uid": fleet.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def credentials_data_size(credentials: list[DeviceCredentials]) -> int:
    return sum(len(item.url()) for item in credentials)


def credentials_secret(owner: Owner, fleet: Fleet, credentials: list[DeviceCredentials], rotated_for: str) -> Manifest:
    """One key per device id holding its ``mqtt://`` URL; the handled rotation request in an annotation."""
    metadata = _metadata(owner, fleet, credentials_secret_name(fleet.name), Component.BROKER)
    metadata["annotations"] = {ROTATED_FOR_ANNOTATION: rotated_for}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {item.device_id: base64.b64encode(item.url().encode()).decode() for item in credentials},
    }


def simulator_resources(devices: int) -> dict[str, Any]:
    """One simulator process holds a connection per device: measured 88 MiB resident for 10,000 devices
    (``bench/fleet_provisioning.py``), so the request is 64 MiB and 8 KiB a device; the limit leaves twice the room."""
    request_mib = 64 + (devices * 8 + 1023) // 1024
    return {
        "requests": {"cpu": "100m", "memory": f"{request_mib}Mi"},
        "limits": {"cpu": "1", "memory": f"{max(256, 2 * request_mib)}Mi"},
    }


def simulator(owner: Owner, fleet: Fleet, settings: OperatorSettings, rotated_for: str, internal_listener: bool = False) -> Manifest:
    """A Deployment playing every device of the fleet with its own credentials (``iotenant simulate``).

    ``internal_listener``: devices take TLS only, so the simulator (a pod of ours) connects to the
    broker's internal plaintext listener, which the namespace's policies open to our pods alone.

    The pod template carries a hash of the device ids and of the handled rotation request, so the
    simulator restarts with the current credentials whenever either changes.
    """
    env = [
        {"name": Env.CREDENTIALS_DIR, "value": DEVICE_CREDENTIALS_MOUNT},
        {"name": Env.TELEMETRY_INTERVAL_SECONDS, "value": str(fleet.interval_seconds)},
        {"name": Env.METRICS_PORT, "value": str(METRICS_PORT)},
        {"name": Env.LOG_FORMAT, "value": "json"},
    ]
    if internal_listener:
        env += [
            {"name": Env.MQTT_HOST, "value": broker_host(owner.namespace)},
            {"name": Env.MQTT_PORT, "value": str(MQTT_INTERNAL_PORT)},
            {"name": Env.MQTT_SCHEME, "value": "mqtt"},
        ]
    main = container(
        "simulator",
        settings.images.iotenant,
        args=["simulate"],
        env=env,
        ports=[{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        volumeMounts=[
            {"name": "credentials", "mountPath": DEVICE_CREDENTIALS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        resources=simulator_resources(len(fleet.devices)),
        readinessProbe=http_probe("/readyz", "metrics"),
        livenessProbe=http_probe("/healthz", "metrics"),
    )
    volumes = [
        {"name": "credentials", "secret": {"secretName": credentials_secret_name(fleet.name)}},
        empty_dir("tmp"),
    ]
    template = pod_template(owner, Component.SIMULATOR, IOTENANT_UID, [main], volumes, pull_secrets=settings.image_pull_secrets)
    template["metadata"]["labels"][FLEET] = fleet.name
    fingerprint = hashlib.sha256("\n".join([rotated_for, *fleet.devices]).encode()).hexdigest()[:16]
    template["metadata"]["annotations"] = {DEVICES_HASH_ANNOTATION: fingerprint}
    manifest = deployment(owner, simulator_name(fleet.name), Component.SIMULATOR, 1, template)
    manifest["metadata"] = _metadata(owner, fleet, simulator_name(fleet.name), Component.SIMULATOR)
    manifest["spec"]["selector"]["matchLabels"][FLEET] = fleet.name
    return manifest
