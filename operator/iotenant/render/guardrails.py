"""The customer namespace and its guard rails: Pod Security, quota, limits and network policies."""

from __future__ import annotations

from typing import Any

from iotenant.vocabulary import tenant_database
from iotenant.mosquitto.admin_tls import ADMIN_PORT
from iotenant.licensing.plans import Quota
from iotenant.vocabulary.contract import API_PORT, METRICS_PORT, MQTT_INTERNAL_PORT, MQTT_PORT, MQTTS_PORT
from iotenant.render.inputs import StackInput
from iotenant.vocabulary.meta import COMPONENT, Owner
from iotenant.settings import OperatorSettings

Manifest = dict[str, Any]

POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
QUOTA_NAME = "iotenant-quota"
MQTT_PORTS = (MQTT_PORT, MQTTS_PORT)
# The pods that use the broker's internal listener when devices take TLS only.
INTERNAL_MQTT_CLIENTS = ("ingest", "api", "simulator")


def namespace(owner: Owner) -> Manifest:
    metadata = owner.metadata(owner.namespace, namespaced=False)
    metadata["labels"].update(POD_SECURITY_LABELS)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def resource_quota(owner: Owner, quota: Quota) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": owner.metadata(QUOTA_NAME),
        "spec": {
            "hard": {
                "requests.cpu": quota.cpu,
                "limits.cpu": quota.limitsCpu,
                "requests.memory": quota.memory,
                "limits.memory": quota.limitsMemory,
                "requests.storage": quota.storage,
                "pods": str(quota.pods),
                "persistentvolumeclaims": str(quota.persistentVolumeClaims),
            }
        },
    }


def limit_range(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": owner.metadata("iotenant-limits"),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "defaultRequest": {"cpu": "50m", "memory": "64Mi"},
                    "default": {"cpu": "500m", "memory": "256Mi"},
                }
            ]
        },
    }


def _policy(owner: Owner, name: str, pod_selector: dict[str, str], spec: Manifest) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owner.metadata(name),
        "spec": {"podSelector": {"matchLabels": pod_selector} if pod_selector else {}, **spec},
    }


def _from_namespace(name: str) -> Manifest:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}


def _ports(*numbers: int) -> list[Manifest]:
    return [{"protocol": "TCP", "port": number} for number in numbers]


def _apiserver_egress(settings: OperatorSettings) -> Manifest:
    """Egress to the Kubernetes API server (service discovery of a dedicated Prometheus): its addresses and
    ports as configured or read (``kube.apiserver_endpoints``), any address on its ports when neither is known."""
    rule: Manifest = {"ports": _ports(*settings.apiserver_ports)}
    if settings.apiserver_cidrs:
        rule["to"] = [{"ipBlock": {"cidr": cidr}} for cidr in settings.apiserver_cidrs]
    return rule


def _dns_egress(settings: OperatorSettings) -> Manifest:
    """Egress to the cluster DNS as the operator's settings place it (kube-system:53 by default)."""
    peer = _from_namespace(settings.dns_namespace)
    if settings.dns_pod_selector:
        peer["podSelector"] = {"matchLabels": dict(item.split("=", 1) for item in settings.dns_pod_selector)}
    return {
        "to": [peer, *({"ipBlock": {"cidr": cidr}} for cidr in settings.dns_cidrs)],
        "ports": [{"protocol": protocol, "port": port} for port in settings.dns_ports for protocol in ("UDP", "TCP")],
    }


def _ingress(owner: Owner, name: str, pod_selector: dict[str, str], sources: list[Manifest] | None, *ports: int) -> Manifest:
    """A policy letting ``sources`` (None: anyone) reach ``ports`` of the selected pods."""
    rule: Manifest = {"ports": _ports(*ports)} if sources is None else {"from": sources, "ports": _ports(*ports)}
    return _policy(owner, name, pod_selector, {"policyTypes": ["Ingress"], "ingress": [rule]})


def _pods(*components: str) -> list[Manifest]:
    return [{"podSelector": {"matchLabels": {COMPONENT: component}}} for component in components]


def network_policies(stack: StackInput) -> list[Manifest]:
    """Default deny, then each way in or out the stack needs, and only those."""
    return [*_namespace_policies(stack), *_broker_policies(stack), *_service_policies(stack), *_monitoring_policies(stack)]


def _namespace_policies(stack: StackInput) -> list[Manifest]:
    """Nothing in or out, but the cluster DNS and the namespace's own pods."""
    owner = stack.owner
    return [
        _policy(owner, "default-deny", {}, {"policyTypes": ["Ingress", "Egress"]}),
        _policy(owner, "allow-egress-dns-and-namespace", {},
                {"policyTypes": ["Egress"], "egress": [_dns_egress(stack.settings), {"to": [{"podSelector": {}}]}]}),
    ]


def _broker_policies(stack: StackInput) -> list[Manifest]:
    """Devices reach MQTT (TLS only: 8883 alone), the operator the admin listener."""
    owner, broker = stack.owner, {COMPONENT: "broker"}
    device_ports = (MQTTS_PORT,) if stack.exposure.tls_only else MQTT_PORTS
    return [
        _ingress(owner, "allow-mqtt-from-devices", broker, None, *device_ports),
        _ingress(owner, "allow-broker-admin-from-operator", broker, [_from_namespace(stack.settings.namespace)], ADMIN_PORT),
    ]


def _service_policies(stack: StackInput) -> list[Manifest]:
    """The API from the ingress controller, the database from ingest and api alone, and (TLS only) the
    broker's internal listener from our own clients."""
    owner = stack.owner
    policies = [
        _ingress(owner, "allow-api-from-ingress", {COMPONENT: "api"}, [_from_namespace(stack.settings.ingress_namespace)], API_PORT),
        _ingress(owner, "allow-database-from-ingest-and-api", {COMPONENT: "database"}, _pods("ingest", "api"), tenant_database.PORT),
        _ingress(owner, "allow-metrics-scraping", {}, [_from_namespace(stack.settings.monitoring_namespace), *_pods("monitoring")],
                 METRICS_PORT),
    ]
    if stack.exposure.tls_only:
        policies.append(_ingress(owner, "allow-internal-mqtt-from-our-pods", {COMPONENT: "broker"}, _pods(*INTERNAL_MQTT_CLIENTS),
                                 MQTT_INTERNAL_PORT))
    return policies


def _monitoring_policies(stack: StackInput) -> list[Manifest]:
    """A dedicated Prometheus discovers its targets through the API server."""
    if stack.claims is None or stack.claims.monitoring.tier != "dedicated":
        return []
    return [_policy(stack.owner, "allow-prometheus-to-apiserver", {COMPONENT: "monitoring"},
                    {"policyTypes": ["Egress"], "egress": [_apiserver_egress(stack.settings)]})]
