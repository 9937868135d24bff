"""A customer tenant whose broker really runs: the operator's generated Mosquitto setup on loopback.

Pods on the test cluster's fake nodes run nothing, so each tenant's broker runs here instead, from
the ConfigMap ``broker-config`` and the Secret ``broker-dynamic-security`` that the operator wrote;
the operator reaches it through its broker address file.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from conftest import Cluster, wait_for
from iotenant.mosquitto.identities import DeviceCredentials
from iotenant_testbed.local_pods import LocalProcess, read_secret, run_container
from iotenant_testbed.mosquitto import MosquittoBroker, generated_broker_files, set_broker_address, start_tenant_broker

GROUP, VERSION = "iotenant.io", "v1alpha1"


def _read_secret(kube: Cluster, namespace: str, name: str) -> dict[str, str] | None:
    return read_secret(kube.core, namespace, name)


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


def run_generated(tenant: Tenant, kind: str, name: str, folder: Path, overrides: dict[str, str],
                  init_container: str | None = None) -> LocalProcess:
    """Run the first container (or the init container named) of the tenant's ``kind``/``name`` here."""
    return run_container(tenant.kube.core, tenant.kube.apps, tenant.namespace, kind, name, folder, overrides, init_container)


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
