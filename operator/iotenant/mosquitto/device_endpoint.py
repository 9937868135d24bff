"""Where devices reach a tenant's broker: the in-cluster Service, a node port, a load balancer, or a name
the customer gave (``spec.broker.externalHost``). Pure: the spec, the in-cluster address and the live
``broker-devices`` Service in, one endpoint out. It goes into ``status.endpoints.mqtt`` and into every
device credential, so devices always hold the address the cluster really assigned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from iotenant.vocabulary.contract import MQTT_PORT, MQTTS_PORT

# The Service a NodePort or LoadBalancer exposure adds: device ports only, never the admin listener.
DEVICE_SERVICE = "broker-devices"
EXPOSED_TYPES = ("NodePort", "LoadBalancer")


@dataclass(frozen=True)
class DeviceEndpoint:
    scheme: str  # mqtt or mqtts
    host: str
    port: int
    # False while the cluster has not assigned the address yet (no load balancer ingress, no node port):
    # the endpoint is then the in-cluster one.
    assigned: bool = True

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class BrokerExposure:
    """What ``spec.broker`` asks for: how the broker is exposed and whether devices must use TLS."""

    service_type: str
    external_host: str | None
    tls_only: bool

    @classmethod
    def from_spec(cls, broker_spec: dict[str, Any]) -> "BrokerExposure":
        service = broker_spec.get("service") or {}
        tls = broker_spec.get("tls") or {}
        return cls(
            service_type=str(service.get("type") or "ClusterIP"),
            external_host=broker_spec.get("externalHost") or None,
            tls_only=bool(tls) and bool(tls.get("only")),
        )

    @property
    def exposed(self) -> bool:
        return self.service_type in EXPOSED_TYPES

    @property
    def port_name(self) -> str:
        return "mqtts" if self.tls_only else "mqtt"

    @property
    def port(self) -> int:
        return MQTTS_PORT if self.tls_only else MQTT_PORT


def _entries(value: Any) -> list[dict[str, Any]]:
    """The dict items of a list in a live object (anything else there is ignored, never trusted)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def _load_balancer_address(service: dict[str, Any]) -> str | None:
    for ingress in _entries(_field(_field(service.get("status"), "loadBalancer"), "ingress")):
        for address in (ingress.get("hostname"), ingress.get("ip")):
            if isinstance(address, str) and address:
                return address
    return None


def _node_port(service: dict[str, Any], port_name: str) -> int | None:
    for port in _entries(_field(service.get("spec"), "ports")):
        if port.get("name") == port_name and isinstance(port.get("nodePort"), int):
            return int(port["nodePort"])
    return None


def device_endpoint(exposure: BrokerExposure, in_cluster: tuple[str, int], device_service: dict[str, Any] | None) -> DeviceEndpoint:
    """The address devices use. ``in_cluster``: (host, plaintext port) of the broker Service inside the cluster."""
    scheme = exposure.port_name
    in_cluster_host, in_cluster_port = in_cluster
    fallback = DeviceEndpoint(scheme, in_cluster_host, MQTTS_PORT if exposure.tls_only else in_cluster_port)
    pending = replace(fallback, assigned=False)
    if exposure.service_type == "NodePort":
        node_port = _node_port(device_service or {}, exposure.port_name)
        if node_port is None or exposure.external_host is None:
            return pending
        return DeviceEndpoint(scheme, exposure.external_host, node_port)
    if exposure.service_type == "LoadBalancer":
        host = exposure.external_host or _load_balancer_address(device_service or {})
        return pending if host is None else DeviceEndpoint(scheme, host, exposure.port)
    if exposure.external_host is not None:
        return DeviceEndpoint(scheme, exposure.external_host, exposure.port)
    return fallback
