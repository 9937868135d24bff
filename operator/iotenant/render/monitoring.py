"""Monitoring by licence tier: a dedicated Prometheus, or a ServiceMonitor (and the tenant's alert rules
as a PrometheusRule) for the shared one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from iotenant.render.builders import config_map, container, pod_template, resources, service, stateful_set
from iotenant.render.inputs import StackInput
from iotenant.render.stack_part import Peers, StackPart, Volume, WayIn, Workload
from iotenant.render.tenant_alerts import PROMETHEUS_RULE_CRD, RULES_FILE, prometheus_rule, rule_groups
from iotenant.vocabulary.meta import CUSTOMER, Component

Manifest = dict[str, Any]

PROMETHEUS_UID = 65534
PROMETHEUS_PORT = 9090
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
MONITORING_CRDS = (SERVICE_MONITOR_CRD, PROMETHEUS_RULE_CRD)
WORKLOAD = Workload("StatefulSet", "prometheus")


def prometheus_config(namespace: str) -> dict[str, Any]:
    """Scrape only this namespace: pods exposing a container port named ``metrics``."""
    return {
        "global": {"scrape_interval": "30s", "evaluation_interval": "30s", "external_labels": {"namespace": namespace}},
        "rule_files": [RULES_FILE],
        "scrape_configs": [
            {
                "job_name": "customer-pods",
                "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "target_label": "component"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                ],
            }
        ],
    }


def retention_size(storage_gb: int) -> str:
    """Leave 10 % of the volume free for the write-ahead log and compaction."""
    return f"{max(1, int(storage_gb * 0.9))}GB"


# What the dedicated Prometheus may do in its namespace: discover the pods it scrapes. The operator
# must hold these permissions itself to grant them (Kubernetes' RBAC escalation check).
PROMETHEUS_RULES = [{"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": ["get", "list", "watch"]}]


def prometheus(stack: StackInput) -> list[Manifest]:
    """The dedicated Prometheus, sized by the verified claims (nothing without them)."""
    if stack.claims is None:
        return []
    claims, owner = stack.claims, stack.owner
    namespace = owner.namespace
    labels_sa = owner.metadata("prometheus", Component.MONITORING)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": owner.metadata("prometheus", Component.MONITORING),
        "rules": PROMETHEUS_RULES,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": owner.metadata("prometheus", Component.MONITORING),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prometheus"},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}],
    }
    args = [
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        f"--storage.tsdb.retention.time={claims.monitoring.retentionDays}d",
        f"--storage.tsdb.retention.size={retention_size(claims.monitoring.storageGb)}",
        f"--web.listen-address=:{PROMETHEUS_PORT}",
    ]
    server = container(
        "prometheus",
        stack.settings.images.prometheus,
        args=args,
        ports=[{"name": "web", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"}],
        volumeMounts=[
            {"name": "config", "mountPath": "/etc/prometheus", "readOnly": True},
            {"name": "data", "mountPath": "/prometheus"},
        ],
        resources=resources(None, {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}),
        readinessProbe={"httpGet": {"path": "/-/ready", "port": "web"}, "periodSeconds": 10},
        livenessProbe={"httpGet": {"path": "/-/healthy", "port": "web"}, "periodSeconds": 30},
    )
    template = pod_template(
        owner,
        Component.MONITORING,
        PROMETHEUS_UID,
        [server],
        [{"name": "config", "configMap": {"name": "prometheus-config"}}],
        service_account="prometheus",
        pull_secrets=stack.settings.image_pull_secrets,
    )
    config_text = yaml.safe_dump(prometheus_config(namespace), sort_keys=True)
    rules_text = yaml.safe_dump({"groups": rule_groups(namespace, stack.settings.runbook_base_url)}, sort_keys=True)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": labels_sa, "automountServiceAccountToken": True},
        role,
        binding,
        config_map(owner, "prometheus-config", Component.MONITORING,
                   {"prometheus.yml": config_text, RULES_FILE: rules_text}),
        stateful_set(owner, WORKLOAD.name, Component.MONITORING, 1, template, f"{claims.monitoring.storageGb}Gi",
                     storage_class=stack.storage_classes.get(WORKLOAD.name)),
        service(owner, "prometheus", Component.MONITORING, [("web", PROMETHEUS_PORT)]),
    ]


def service_monitor(stack: StackInput) -> Manifest:
    owner = stack.owner
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": owner.metadata("iotenant", Component.MONITORING),
        "spec": {
            # Every Service of the tenant with a port named metrics (the others give no target), so a part
            # serving metrics is scraped without being named here.
            "selector": {"matchLabels": {CUSTOMER: owner.name}},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    }


def _tier(name: str) -> Callable[[StackInput], bool]:
    """Whether the verified claims sell tier ``name``; nothing without them: no tier is granted by default."""
    return lambda stack: stack.claims is not None and stack.claims.monitoring.tier == name


def shared(stack: StackInput) -> list[Manifest]:
    """The shared Prometheus' ServiceMonitor and the tenant's alert rules, each once its CRD is installed."""
    return ([service_monitor(stack)] if stack.service_monitor_crd_present else []) + (
        [prometheus_rule(stack.owner, stack.settings.runbook_base_url)] if stack.prometheus_rule_crd_present else [])


PROMETHEUS_PART = StackPart(
    name="prometheus",
    component=Component.MONITORING,
    render=prometheus,
    enabled=_tier("dedicated"),
    workload=WORKLOAD,
    volume=Volume(section=None),
    # Queries (Grafana, federation) from the monitoring namespace.
    ways_in=(WayIn("allow-prometheus-from-monitoring", (PROMETHEUS_PORT,), Peers(namespaces=("monitoring_namespace",))),),
    scrapes=True,
    egress=("apiserver",),
)
SHARED_MONITORING_PART = StackPart(name="shared-monitoring", component=Component.MONITORING, render=shared, enabled=_tier("shared"))
