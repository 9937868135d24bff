"""The customer namespace and its guard rails: Pod Security, quota, limits and network policies."""

from __future__ import annotations

from typing import Any

from iotenant import tenant_database
from iotenant.broker.admin_tls import ADMIN_PORT
from iotenant.licensing.plans import Quota
from iotenant.render.contract import API_PORT, METRICS_PORT, MQTT_INTERNAL_PORT, MQTT_PORT, MQTTS_PORT
from iotenant.render.inputs import StackInput
from iotenant.render.meta import COMPONENT, Owner
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
    """Egress to the Kubernetes API server (service discovery of a dedicated Prometheus): its addresses
    when the operator's settings name them, any address on its ports otherwise."""
    rule: Manifest = {"ports": _ports(443, 6443)}
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


def network_policies(stack: StackInput) -> list[Manifest]:
    owner, settings = stack.owner, stack.settings
    policies = [
        _policy(owner, "default-deny", {}, {"policyTypes": ["Ingress", "Egress"]}),
        _policy(
            owner,
            "allow-egress-dns-and-namespace",
            {},
            {
                "policyTypes": ["Egress"],
                "egress": [
                    _dns_egress(settings),
                    {"to": [{"podSelector": {}}]},
                ],
            },
        ),
        _policy(
            owner,
            "allow-mqtt-from-devices",
            {COMPONENT: "broker"},
            # TLS only: 8883 alone; the plaintext listener is then the internal one below.
            {"policyTypes": ["Ingress"], "ingress": [{"ports": _ports(*((MQTTS_PORT,) if stack.exposure.tls_only else MQTT_PORTS))}]},
        ),
        _policy(
            owner,
            "allow-broker-admin-from-operator",
            {COMPONENT: "broker"},
            {
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [_from_namespace(settings.namespace)], "ports": _ports(ADMIN_PORT)}],
            },
        ),
        _policy(
            owner,
            "allow-api-from-ingress",
            {COMPONENT: "api"},
            {
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [_from_namespace(settings.ingress_namespace)], "ports": _ports(API_PORT)}],
            },
        ),
        _policy(
            owner,
            "allow-database-from-ingest-and-api",
            {COMPONENT: "database"},
            {
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {COMPONENT: "ingest"}}},
                            {"podSelector": {"matchLabels": {COMPONENT: "api"}}},
                        ],
                        "ports": _ports(tenant_database.PORT),
                    }
                ],
            },
        ),
        _policy(
            owner,
            "allow-metrics-scraping",
            {},
            {
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            _from_namespace(settings.monitoring_namespace),
                            {"podSelector": {"matchLabels": {COMPONENT: "monitoring"}}},
                        ],
                        "ports": _ports(METRICS_PORT),
                    }
                ],
            },
        ),
    ]
    if stack.exposure.tls_only:
        policies.append(
            _policy(
                owner,
                "allow-internal-mqtt-from-our-pods",
                {COMPONENT: "broker"},
                {
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {COMPONENT: component}}} for component in INTERNAL_MQTT_CLIENTS],
                                 "ports": _ports(MQTT_INTERNAL_PORT)}],
                },
            )
        )
    if stack.claims is not None and stack.claims.monitoring.tier == "dedicated":
        policies.append(
            _policy(
                owner,
                "allow-prometheus-to-apiserver",
                {COMPONENT: "monitoring"},
                {"policyTypes": ["Egress"], "egress": [_apiserver_egress(settings)]},
            )
        )
    return policies
