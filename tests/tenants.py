"""A customer tenant whose broker really runs: the operator's generated Mosquitto setup on loopback.

Pods on the test cluster's fake nodes run nothing, so each tenant's broker runs here instead, from
the ConfigMap ``broker-config`` and the Secret ``broker-dynamic-security`` that the operator wrote;
the operator reaches it through its broker address file.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kubernetes.client.exceptions import ApiException

from conftest import Cluster, wait_for

from iotenant.broker_identities import DeviceCredentials
from iotenant.devcluster.mosquitto import MosquittoBroker, generated_broker_files, set_broker_address, start_tenant_broker

GROUP, VERSION = "iotenant.io", "v1alpha1"


def _read_secret(kube: Cluster, namespace: str, name: str) -> dict[str, str] | None:
    try:
        secret = kube.core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}


@dataclass
class Tenant:
    kube: Cluster
    name: str
    broker: MosquittoBroker
    addresses: Path

    @property
    def namespace(self) -> str:
        return f"customer-{self.name}"

    def instance(self) -> dict[str, Any]:
        return self.kube.custom.get_cluster_custom_object(GROUP, VERSION, "customerinstances", self.name)

    # ----------------------------------------------------------------------------- fleets

    def apply_fleet(self, name: str, devices: dict[str, Any], simulator: bool = False, interval: int = 60,
                    annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DeviceFleet",
            "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations or {}},
            "spec": {"deviceType": "sensor", "devices": devices, "telemetry": {"intervalSeconds": interval},
                     "simulator": {"enabled": simulator}},
        }
        self.kube.kubectl("apply", "--server-side", "--field-manager=fleet-tests", "--force-conflicts", "-f", "-",
                          stdin=json.dumps(body))
        return self.fleet(name)

    def fleet(self, name: str) -> dict[str, Any]:
        return self.kube.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "devicefleets", name)

    def delete_fleet(self, name: str) -> None:
        try:
            self.kube.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "devicefleets", name)
        except ApiException as error:
            if error.status != 404:
                raise

    def wait_fleet(self, name: str, status: str, reason: str | None = None, timeout: float = 60) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            body = self.fleet(name)
            ready = next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
            generation_seen = body.get("status", {}).get("observedGeneration") == body["metadata"]["generation"]
            if generation_seen and ready.get("status") == status and (reason is None or ready.get("reason") == reason):
                return body
            return None

        return wait_for(matches, timeout=timeout, what=f"fleet {name}: Ready={status} ({reason or 'any reason'})")

    def credentials(self, fleet: str) -> dict[str, DeviceCredentials]:
        """The fleet's Secret, each value parsed as a device's credentials."""
        values = _read_secret(self.kube, self.namespace, f"devicefleet-{fleet}-credentials")
        assert values is not None, f"Secret devicefleet-{fleet}-credentials does not exist"
        return {key: DeviceCredentials.from_url(value) for key, value in values.items()}

    def secret(self, name: str) -> dict[str, str] | None:
        return _read_secret(self.kube, self.namespace, name)

    def events(self, involved: str) -> list[str]:
        listed = self.kube.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={involved}")
        return [f"{event.type} {event.reason}" for event in listed.items]

    # ----------------------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        set_broker_address(self.addresses, self.namespace, None)
        self.broker.stop()


@dataclass
class GeneratedProcess:
    """A container the operator rendered, run here: its args and environment, its volumes as folders."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _volume_folder(tenant: Tenant, volume: dict[str, Any], folder: Path) -> Path:
    """A Secret or ConfigMap volume written out as files, the way the kubelet mounts it."""
    folder.mkdir(parents=True, exist_ok=True)
    if "secret" in volume:
        values = _read_secret(tenant.kube, tenant.namespace, volume["secret"]["secretName"]) or {}
        items = volume["secret"].get("items")
    elif "configMap" in volume:
        values = tenant.kube.core.read_namespaced_config_map(volume["configMap"]["name"], tenant.namespace).data or {}
        items = volume["configMap"].get("items")
    else:
        return folder  # emptyDir: an empty folder
    for key, path in ((item["key"], item["path"]) for item in items) if items else ((key, key) for key in values):
        (folder / path).write_text(values[key])
    return folder


def localise_database_url(rendered: str, local: str) -> str:
    """A rendered database URL (role and password as generated) aimed at this machine's database."""
    role = urlsplit(rendered)
    here = urlsplit(local)
    return urlunsplit((role.scheme, f"{role.username}:{role.password}@{here.hostname}:{here.port}", here.path, "", ""))


def run_generated(tenant: Tenant, kind: str, name: str, folder: Path, overrides: dict[str, str],
                  init_container: str | None = None) -> GeneratedProcess:
    """Run the first container (or the init container named) of the operator's ``kind``/``name`` as
    ``iotenant <args>`` on this machine.

    Environment values come from the manifest (``valueFrom`` Secrets are read from the cluster);
    mount paths in them point to local copies of the volumes; ``overrides`` replace what only exists
    in a cluster (service host names, ports).
    """
    manifest = json.loads(tenant.kube.kubectl("get", kind, name, "-n", tenant.namespace, "-o", "json").stdout)
    pod = manifest["spec"]["template"]["spec"]
    container = next(c for c in pod["initContainers"] if c["name"] == init_container) if init_container else pod["containers"][0]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = {
        mount["mountPath"]: _volume_folder(tenant, volumes[mount["name"]], folder / mount["name"])
        for mount in container.get("volumeMounts", [])
    }
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = item["value"]
            for mount_path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
                if value.startswith(mount_path + "/") or value == mount_path:
                    value = str(local) + value[len(mount_path):]
                    break
            env[item["name"]] = value
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = (_read_secret(tenant.kube, tenant.namespace, ref["name"]) or {})[ref["key"]]
    env.update(overrides)
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("IOTENANT_")}
    log = folder / f"{name}.log"
    process = subprocess.Popen([sys.executable, "-m", "iotenant", *container["args"]], env={**inherited, **env},
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return GeneratedProcess(process=process, env=env, log=log)


def start_tenant(kube: Cluster, addresses: Path, service_root: Path, name: str, plan: str) -> Tenant:
    """Create a CustomerInstance and run its broker from the configuration the operator generated."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CustomerInstance",
        "metadata": {"name": name},
        "spec": {"customerId": f"{name}-id", "plan": plan},
    }
    kube.custom.create_cluster_custom_object(GROUP, VERSION, "customerinstances", body)
    namespace = f"customer-{name}"
    files = wait_for(lambda: generated_broker_files(kube.core, namespace), timeout=60,
                     what=f"{namespace}: ConfigMap broker-config and Secret broker-dynamic-security")
    broker = start_tenant_broker(files, Path(tempfile.mkdtemp(prefix=f"broker-{name}-", dir=service_root)))
    set_broker_address(addresses, namespace, f"127.0.0.1:{broker.admin_port}")
    return Tenant(kube=kube, name=name, broker=broker, addresses=addresses)


def delete_tenant(tenant: Tenant) -> None:
    tenant.stop()
    try:
        tenant.kube.custom.delete_cluster_custom_object(GROUP, VERSION, "customerinstances", tenant.name)
    except ApiException as error:
        if error.status != 404:
            raise
