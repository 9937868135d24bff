"""The customer namespace and its guard rails: Pod Security, quota, limits and network policies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iotenant.licensing.plans import Quota
from iotenant.render.inputs import StackInput
from iotenant.render.parts import enabled_parts
from iotenant.render.stack_part import StackPart, WayIn
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.contract import METRICS_PORT
from iotenant.vocabulary.meta import Owner

Manifest = dict[str, Any]

POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
QUOTA_NAME = "iotenant-quota"


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


def network_policies(stack: StackInput) -> list[Manifest]:
    """Default deny, then each way in or out that the stack's parts declare, and only those."""
    parts = enabled_parts(stack)
    policies = [*_namespace_policies(stack, parts)]
    for part in parts:
        for way in part.ways_in:
            if way.when(stack):
                policies.append(_ingress(stack.owner, way.policy, part.selector(), _sources(stack, parts, way), *way.ports))
        for destination in part.egress:
            policies.append(_policy(stack.owner, f"allow-{part.name}-to-{destination}",
                                    part.selector(), {"policyTypes": ["Egress"], "egress": [EGRESS[destination](stack.settings)]}))
    return policies


def _sources(stack: StackInput, parts: list[StackPart], way: WayIn) -> list[Manifest] | None:
    """Who ``way`` admits, as NetworkPolicy peers (None: anyone)."""
    if way.peers.anyone:
        return None
    sources = [_from_namespace(getattr(stack.settings, setting)) for setting in way.peers.namespaces]
    if way.peers.clients:
        sources += [{"podSelector": {"matchLabels": part.selector()}} for part in parts if way.policy in part.connects_to]
    return sources


def _namespace_policies(stack: StackInput, parts: list[StackPart]) -> list[Manifest]:
    """Nothing in or out, but the cluster DNS and the namespace's own pods; metrics from whoever scrapes."""
    owner = stack.owner
    scrapers = [{"podSelector": {"matchLabels": part.selector()}} for part in parts if part.scrapes]
    return [
        _policy(owner, "default-deny", {}, {"policyTypes": ["Ingress", "Egress"]}),
        _policy(owner, "allow-egress-dns-and-namespace", {},
                {"policyTypes": ["Egress"], "egress": [_dns_egress(stack.settings), {"to": [{"podSelector": {}}]}]}),
        _ingress(owner, "allow-metrics-scraping", {}, [_from_namespace(stack.settings.monitoring_namespace), *scrapers], METRICS_PORT),
    ]


# Ways out of the namespace a part may declare (``StackPart.egress``), by name.
EGRESS: dict[str, Callable[[OperatorSettings], Manifest]] = {"apiserver": _apiserver_egress}
