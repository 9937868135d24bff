"""Generic builders of Kubernetes objects for a customer stack: Secrets, ConfigMaps, Services, pods,
StatefulSets and Deployments, each labelled and owned by the CustomerInstance."""

from __future__ import annotations

import base64
from typing import Any

from iotenant.render.image_pull import image_pull_secrets
from iotenant.render.pod_security import container_security_context, pod_security_context
from iotenant.vocabulary.contract import PROBE_TIMEOUT_SECONDS
from iotenant.vocabulary.meta import Owner

Manifest = dict[str, Any]

# Resources of a small container when the spec names none.
SMALL = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def secret(owner: Owner, name: str, component: str | None, values: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(name, component),
        "type": "Opaque",
        "data": {key: b64(value) for key, value in values.items()},
    }


def config_map(owner: Owner, name: str, component: str | None, values: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": owner.metadata(name, component), "data": values}


def service(owner: Owner, name: str, component: str, ports: list[tuple[str, int]]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(name, component),
        "spec": {
            "type": "ClusterIP",
            "selector": owner.selector(component),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"} for port_name, port in ports],
        },
    }


def pod_template(
    owner: Owner,
    component: str,
    user_id: int,
    containers: list[Manifest],
    volumes: list[Manifest],
    init_containers: list[Manifest] | None = None,
    service_account: str | None = None,
    pull_secrets: tuple[str, ...] = (),
) -> Manifest:
    spec: Manifest = {
        **image_pull_secrets(pull_secrets),
        "securityContext": pod_security_context(user_id),
        "automountServiceAccountToken": service_account is not None,
        "enableServiceLinks": False,
        "containers": containers,
        "volumes": volumes,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"metadata": {"labels": owner.labels(component)}, "spec": spec}


def spread_over_nodes(owner: Owner, component: str) -> list[Manifest]:
    """Replicas of a component on different nodes where the cluster allows (one node must not hold them all);
    soft, so a one-node cluster still runs them."""
    return [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": owner.selector(component)}}]


def container(name: str, image: str, **fields: Any) -> Manifest:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": container_security_context(read_only_root=fields.pop("read_only_root", True)),
        **fields,
    }


def http_probe(path: str, port: str) -> Manifest:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "timeoutSeconds": PROBE_TIMEOUT_SECONDS, "failureThreshold": 3}


def empty_dir(name: str) -> Manifest:
    return {"name": name, "emptyDir": {}}


def stateful_set(
    owner: Owner, name: str, component: str, replicas: int, template: Manifest, storage: str | None, mount_path_volume: str = "data",
    storage_class: str | None = None,
) -> Manifest:
    """A StatefulSet: stable pod names, and a volume per pod when ``storage`` is given (in ``storage_class``,
    or the cluster's default class)."""
    spec: Manifest = {
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": owner.selector(component)},
        "podManagementPolicy": "OrderedReady" if storage else "Parallel",
        "template": template,
    }
    if storage:
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain", "whenScaled": "Retain"}
        spec["volumeClaimTemplates"] = [
            {
                "metadata": {"name": mount_path_volume, "labels": owner.labels(component)},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}},
                         **({"storageClassName": storage_class} if storage_class else {})},
            }
        ]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": owner.metadata(name, component), "spec": spec}


def deployment(owner: Owner, name: str, component: str, replicas: int, template: Manifest) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.metadata(name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": owner.selector(component)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        },
    }



def resources(spec: dict[str, Any] | None, default: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Container resources: the user's values over the component's defaults."""
    spec = spec or {}
    merged: dict[str, Any] = {}
    for section in ("requests", "limits"):
        values = {**default.get(section, {}), **{k: str(v) for k, v in (spec.get(section) or {}).items()}}
        if values:
            merged[section] = values
    return merged
