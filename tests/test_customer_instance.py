"""CustomerInstance end to end: the operator against a real apiserver, controller-manager, scheduler and kwok."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conftest import (
    BILLING_ISSUER, OPERATOR_NAMESPACE, PROMETHEUS_RULE_CRD_FILE, PULL_SECRET, PULL_SECRET_CONFIG, RESYNC_SECONDS,
    SERVICE_MONITOR_CRD_FILE, BillingIssuer, Cluster, RunningOperator, wait_for,
)
from iotenant.licensing import keys as licence_keys, licence as licences
from iotenant.licensing.plans import load_catalogue
from stacks import running_parts

GROUP, VERSION, PLURAL = "iotenant.io", "v1alpha1", "customerinstances"
CATALOGUE = load_catalogue()
REPO = Path(__file__).resolve().parents[1]
OPERATOR_AGENT = "iotenant-operator/"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def create_instance(kube: Cluster, name: str, **spec: Any) -> dict:
    spec.setdefault("customerId", f"{name}-id")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CustomerInstance", "metadata": {"name": name}, "spec": spec}
    return kube.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)


def instance(kube: Cluster, name: str) -> dict:
    return kube.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)


def patch_instance(kube: Cluster, name: str, patch: dict) -> dict:
    return kube.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, patch)


def condition(body: dict, condition_type: str) -> dict:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == condition_type), {})


def wait_condition(kube: Cluster, name: str, condition_type: str, status: str, reason: str | None = None, timeout: float = 60) -> dict:
    def matches() -> dict | None:
        body = instance(kube, name)
        found = condition(body, condition_type)
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return body
        return None

    return wait_for(matches, timeout=timeout, what=f"{name}: {condition_type}={status} ({reason or 'any reason'})")


def wait_phase(kube: Cluster, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: (lambda b: b if b.get("status", {}).get("phase") == phase else None)(instance(kube, name)),
        timeout=timeout,
        what=f"{name}: phase {phase}",
    )


def exists(read) -> bool:  # type: ignore[no-untyped-def]
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def ready_instance(kube: Cluster, name: str, plan: str) -> dict:
    """The named instance of ``plan`` once Ready, created if this test runs alone."""
    if not exists(lambda: instance(kube, name)):
        create_instance(kube, name, plan=plan)
    return wait_phase(kube, name, "Ready", timeout=90)


def delete_instance(kube: Cluster, name: str) -> None:
    kube.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    wait_for(lambda: not exists(lambda: instance(kube, name)), timeout=60, what=f"CustomerInstance {name} to be gone")


def secret_value(kube: Cluster, namespace: str, name: str, key: str) -> str:
    return base64.b64decode(kube.core.read_namespaced_secret(name, namespace).data[key]).decode()


def published_jwks(kube: Cluster, namespace: str) -> dict:
    return json.loads(kube.core.read_namespaced_config_map("licence-keys", namespace).data["jwks.json"])


def billing_licence(kube: Cluster, name: str, token: str, namespace: str = "billing") -> dict:
    """Store a billing-issued token in a Secret and return a spec.licence.secretRef for it."""
    kube.kubectl("create", "namespace", namespace, check=False)
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"licence.jwt": token},
    }
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    return {"secretRef": {"name": name, "namespace": namespace}}


def billing_licence_bytes(kube: Cluster, name: str, value: bytes, namespace: str = "billing") -> dict:
    """A billing licence Secret whose licence.jwt holds these bytes (UTF-8 or not)."""
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "data": {"licence.jwt": base64.b64encode(value).decode()}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    return {"secretRef": {"name": name, "namespace": namespace}}


def operator_signing_key(kube: Cluster) -> licence_keys.SigningKey:
    from iotenant.licensing.signing_keys import SECRET_KEY, SECRET_NAME, KeyRing

    secret = kube.core.read_namespaced_secret(SECRET_NAME, OPERATOR_NAMESPACE)
    ring = KeyRing.from_json(base64.b64decode(secret.data[SECRET_KEY]).decode())
    return ring.keys[ring.active_kid]


def billing_token(billing: BillingIssuer, subject: str, plan: str = "professional", **overrides: Any) -> str:
    claims = CATALOGUE[plan].claims(subject, BILLING_ISSUER, 30 * 86400)
    payload = {**claims.to_payload(), **overrides}
    return licences.sign(licences._claims_from_payload(payload), billing.key)


# ----------------------------------------------------------------------------------------------------
# Monitoring CRD absent: shared tier is Degraded yet Ready. These run first, before the CRD exists.


def test_shared_tier_without_servicemonitor_crd_is_degraded_but_ready(kube: Cluster, operator: RunningOperator) -> None:
    assert kube.kubectl("get", "crd", "servicemonitors.monitoring.coreos.com", check=False).returncode != 0
    create_instance(kube, "early", plan="professional")
    result = kube.kubectl("wait", "--for=condition=Ready", "cust/early", "--timeout=90s", check=False)
    assert result.returncode == 0, result.stderr
    body = instance(kube, "early")
    assert body["status"]["phase"] == "Degraded"
    assert condition(body, "MonitoringReady")["reason"] == "MonitoringCRDMissing"
    assert condition(body, "Ready")["status"] == "True"


def test_servicemonitor_appears_once_the_crd_is_installed(kube: Cluster, operator: RunningOperator) -> None:
    kube.kubectl("apply", "--server-side", "-f", str(SERVICE_MONITOR_CRD_FILE))
    body = wait_phase(kube, "early", "Ready", timeout=60)
    assert condition(body, "MonitoringReady")["reason"] == "ServiceMonitorCreated"
    monitor = kube.custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", "customer-early", "servicemonitors", "iotenant")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["customer-early"]}
    # The tenant's alert rules follow as soon as their CRD exists too.
    assert not exists(lambda: kube.custom.get_namespaced_custom_object(
        "monitoring.coreos.com", "v1", "customer-early", "prometheusrules", "iotenant"))
    kube.kubectl("apply", "--server-side", "-f", str(PROMETHEUS_RULE_CRD_FILE))
    rule = wait_for(lambda: exists(lambda: kube.custom.get_namespaced_custom_object(
        "monitoring.coreos.com", "v1", "customer-early", "prometheusrules", "iotenant")), timeout=30, what="the tenant's PrometheusRule")
    assert rule


# ----------------------------------------------------------------------------------------------------
# Plans


@pytest.mark.parametrize("plan", ["starter", "professional", "enterprise"])
def test_each_plan_becomes_ready_with_a_verifiable_licence(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, plan: str) -> None:
    name = f"plan-{plan}"
    create_instance(kube, name, plan=plan)
    result = kube.kubectl("wait", "--for=condition=Ready", f"cust/{name}", "--timeout=90s", check=False)
    assert result.returncode == 0, result.stderr
    body = wait_phase(kube, name, "Ready")
    namespace = f"customer-{name}"
    status = body["status"]
    assert status["namespace"] == namespace
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert condition(body, "Reconciling")["status"] == "False"
    assert condition(body, "Stalled")["status"] == "False"
    assert status["endpoints"] == {"mqtt": f"mqtt://broker.{namespace}.svc:1883", "api": f"http://api.{namespace}.svc:8080"}

    token = secret_value(kube, namespace, "licence", "licence.jwt")
    for jwks_namespace in (namespace, OPERATOR_NAMESPACE):
        verified = licences.require_current(licences.verify(token, published_jwks(kube, jwks_namespace), f"{name}-id"))
    claims, expected = verified.claims, CATALOGUE[plan]
    assert (claims.plan, claims.limits, claims.features, claims.monitoring) == (
        plan, expected.limits, expected.features, expected.monitoring
    )
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": verified.key_id}
    assert status["licence"]["keyId"] == verified.key_id and status["licence"]["plan"] == plan
    assert status["licence"]["monitoringTier"] == expected.monitoring.tier
    assert status["devices"] == {"provisioned": 0, "limit": expected.limits.maxDevices}

    pods = kube.core.list_namespaced_pod(namespace).items
    components = sorted(p.metadata.labels["app.kubernetes.io/component"] for p in pods)
    assert components == sorted(part.component for part in running_parts(plan))
    assert all(p.status.phase == "Running" for p in pods)
    labels = kube.core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    listed = kube.kubectl("get", "deploy,sts,svc,cm,secret,netpol,quota,limits", "-n", namespace, "-o", "json").stdout
    for item in json.loads(listed)["items"]:
        item_labels = item["metadata"].get("labels", {})
        if item["kind"] == "ConfigMap" and item["metadata"]["name"] == "kube-root-ca.crt":
            continue
        assert item_labels.get("app.kubernetes.io/part-of") == "iotenant", item["metadata"]["name"]
        assert item_labels.get("app.kubernetes.io/managed-by") == "iotenant-operator"
        assert item_labels.get("iotenant.io/customer") == name
        assert item["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]


def test_every_pod_template_passes_pod_security_restricted(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    """Server-side dry-run of each workload's pod template as a bare Pod in an enforcing namespace."""
    ready_instance(kube, "plan-enterprise", "enterprise")
    templates = []
    for kind in ("deployments", "statefulsets"):
        listed = json.loads(kube.kubectl("get", kind, "-n", "customer-plan-enterprise", "-o", "json").stdout)["items"]
        for item in listed:
            template = item["spec"]["template"]
            claims = [t["metadata"]["name"] for t in item["spec"].get("volumeClaimTemplates", [])]
            template["spec"]["volumes"] = template["spec"].get("volumes", []) + [
                {"name": claim, "persistentVolumeClaim": {"claimName": f"{claim}-{item['metadata']['name']}-0"}} for claim in claims
            ]
            templates.append((item["metadata"]["name"], template))
    assert {name for name, _ in templates} == {part.workload.name for part in running_parts("enterprise") if part.workload}
    for name, template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"psa-{name}", "labels": template["metadata"]["labels"]}, "spec": template["spec"]}
        result = kube.kubectl("create", "--dry-run=server", "-n", "customer-plan-enterprise", "-f", "-", stdin=json.dumps(pod), check=False)
        assert result.returncode == 0 and "Warning" not in result.stderr, f"{name}: {result.stderr}"


def test_every_tenant_pod_pulls_with_the_operators_registry_credentials(kube: Cluster, operator: RunningOperator,
                                                                       servicemonitor_crd: None) -> None:
    """The chart's imagePullSecrets reach the tenant pods: a copy in the customer namespace, named by every pod."""
    name, namespace = "pulling", "customer-pulling"
    create_instance(kube, name, plan="enterprise")  # enterprise: the dedicated Prometheus' pods too
    wait_phase(kube, name, "Ready", timeout=90)
    copy = kube.core.read_namespaced_secret(f"image-pull-{PULL_SECRET}", namespace)  # never a stack Secret's name
    assert copy.type == "kubernetes.io/dockerconfigjson"
    assert json.loads(base64.b64decode(copy.data[".dockerconfigjson"])) == PULL_SECRET_CONFIG
    templates = {s.metadata.name: s.spec.template for s in kube.apps.list_namespaced_stateful_set(namespace).items}
    templates |= {d.metadata.name: d.spec.template for d in kube.apps.list_namespaced_deployment(namespace).items}
    assert set(templates) == {part.workload.name for part in running_parts("enterprise") if part.workload}
    for workload, template in templates.items():
        assert [s.name for s in template.spec.image_pull_secrets or []] == [f"image-pull-{PULL_SECRET}"], workload
    kube.core.delete_namespaced_secret(f"image-pull-{PULL_SECRET}", namespace)  # drift: the copy comes back
    wait_for(lambda: exists(lambda: kube.core.read_namespaced_secret(f"image-pull-{PULL_SECRET}", namespace)), timeout=30,
             what="the pull Secret's copy restored")
    delete_instance(kube, name)


def test_enterprise_gets_a_dedicated_prometheus_from_its_claims(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, tmp_path: Path) -> None:
    body = ready_instance(kube, "plan-enterprise", "enterprise")
    assert condition(body, "MonitoringReady")["reason"] == "PrometheusReady"
    namespace = "customer-plan-enterprise"
    monitoring = CATALOGUE["enterprise"].monitoring
    prometheus = kube.apps.read_namespaced_stateful_set("prometheus", namespace)
    args = prometheus.spec.template.spec.containers[0].args
    assert f"--storage.tsdb.retention.time={monitoring.retentionDays}d" in args
    assert f"--storage.tsdb.retention.size={int(monitoring.storageGb * 0.9)}GB" in args
    assert prometheus.spec.volume_claim_templates[0].spec.resources.requests["storage"] == f"{monitoring.storageGb}Gi"
    files = kube.core.read_namespaced_config_map("prometheus-config", namespace).data
    config_text = files["prometheus.yml"]
    config = yaml.safe_load(config_text)
    assert config["scrape_configs"][0]["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": [namespace]}}]
    assert config["rule_files"] == ["tenant-rules.yml"]  # the same tenant alerts the shared tier gets as a PrometheusRule
    (tmp_path / "prometheus.yml").write_text(config_text)
    (tmp_path / "tenant-rules.yml").write_text(files["tenant-rules.yml"])
    promtool = subprocess.run([str(kube.binaries.path("promtool")), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    role = kube.kubectl("get", "role", "prometheus", "-n", namespace, "-o", "json").stdout
    assert json.loads(role)["rules"][0]["verbs"] == ["get", "list", "watch"]
    assert not exists(lambda: kube.custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "servicemonitors", "iotenant"))
    # Its way to the API server names the server's own endpoints, as the cluster publishes them, and nothing else.
    endpoints = client.DiscoveryV1Api(kube.api).read_namespaced_endpoint_slice("kubernetes", "default")
    egress = kube.networking.read_namespaced_network_policy("allow-prometheus-to-apiserver", namespace).spec.egress
    assert [peer.ip_block.cidr for rule in egress for peer in rule.to] == [f"{a}/32" for e in endpoints.endpoints for a in e.addresses]
    assert [port.port for rule in egress for port in rule.ports] == [p.port for p in endpoints.ports]


def test_replicas_of_ingest_and_api_spread_over_nodes(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "spread", "customer-spread"
    create_instance(kube, name, plan="starter", ingest={"replicas": 2}, api={"replicas": 2})
    wait_phase(kube, name, "Ready", timeout=90)
    for workload in (kube.apps.read_namespaced_stateful_set("ingest", namespace), kube.apps.read_namespaced_deployment("api", namespace)):
        (spread,) = workload.spec.template.spec.topology_spread_constraints
        assert (spread.topology_key, spread.max_skew, spread.when_unsatisfiable) == ("kubernetes.io/hostname", 1, "ScheduleAnyway")
        assert spread.label_selector.match_labels.items() <= workload.spec.template.metadata.labels.items()
    patch_instance(kube, name, {"spec": {"api": {"replicas": 1}}})
    wait_for(lambda: not kube.apps.read_namespaced_deployment("api", namespace).spec.template.spec.topology_spread_constraints,
             timeout=30, what="one api replica without a spread")
    delete_instance(kube, name)


def test_volumes_use_the_storage_class_the_spec_names_which_cannot_change(kube: Cluster, operator: RunningOperator) -> None:
    name, namespace = "classy", "customer-classy"
    create_instance(kube, name, plan="starter", database={"storageClassName": "fast-ssd"})
    wait_for(lambda: exists(lambda: kube.apps.read_namespaced_stateful_set("database", namespace)), timeout=60,
             what="the database StatefulSet")
    database = kube.apps.read_namespaced_stateful_set("database", namespace)
    assert database.spec.volume_claim_templates[0].spec.storage_class_name == "fast-ssd"
    broker = kube.apps.read_namespaced_stateful_set("broker", namespace)
    assert broker.spec.volume_claim_templates[0].spec.storage_class_name is None  # the cluster's default class
    for change in ({"database": {"storageClassName": "slow-hdd"}}, {"database": {"storageClassName": None}},
                   {"broker": {"storageClassName": "fast-ssd"}}):
        with pytest.raises(ApiException) as refused:
            patch_instance(kube, name, {"spec": change})
        assert refused.value.status == 422 and "storageClassName cannot be added, changed or removed" in refused.value.body
    delete_instance(kube, name)


def test_volumes_grow_where_their_class_allows_without_a_restart_and_never_shrink(kube: Cluster, operator: RunningOperator,
                                                                                 servicemonitor_crd: None) -> None:
    """A StatefulSet's volume claim template cannot change: the operator grows the claims and replaces the
    StatefulSet around its running pods; a class without expansion keeps the size and says why."""
    expandable = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "expandable"},
                  "provisioner": "kubernetes.io/host-path", "allowVolumeExpansion": True, "volumeBindingMode": "Immediate"}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(expandable))
    name, namespace = "growing", "customer-growing"
    create_instance(kube, name, plan="starter", database={"storageClassName": "expandable", "storage": "1Gi"})
    wait_phase(kube, name, "Ready", timeout=90)
    claim = "data-database-0"
    wait_for(lambda: kube.core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound", timeout=60,
             what=f"{claim} bound")
    pod = kube.core.read_namespaced_pod("database-0", namespace).metadata.uid

    patch_instance(kube, name, {"spec": {"database": {"storage": "2Gi"}}})
    def template_size(workload: str) -> str | None:  # None while the StatefulSet is being replaced
        try:
            stateful_set = kube.apps.read_namespaced_stateful_set(workload, namespace)
        except ApiException as error:
            assert error.status == 404, error
            return None
        return stateful_set.spec.volume_claim_templates[0].spec.resources.requests["storage"]

    wait_for(lambda: template_size("database") == "2Gi", timeout=60, what="the database StatefulSet asking 2Gi")
    assert kube.core.read_namespaced_persistent_volume_claim(claim, namespace).spec.resources.requests["storage"] == "2Gi"
    assert kube.core.read_namespaced_pod("database-0", namespace).metadata.uid == pod, "the database pod kept running"
    owners = kube.core.read_namespaced_pod("database-0", namespace).metadata.owner_references
    new_uid = kube.apps.read_namespaced_stateful_set("database", namespace).metadata.uid
    wait_for(lambda: [o.uid for o in kube.core.read_namespaced_pod("database-0", namespace).metadata.owner_references or []] == [new_uid],
             timeout=30, what=f"the new StatefulSet adopting database-0 (owners {owners})")
    assert condition(instance(kube, name), "Ready")["status"] == "True"
    reasons = [e.reason for e in kube.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items]
    assert "Provisioning" not in reasons, f"the replaced StatefulSet's running pod was reported not ready: {reasons}"

    with pytest.raises(ApiException) as refused:
        patch_instance(kube, name, {"spec": {"database": {"storage": "1Gi"}}})
    assert refused.value.status == 422 and "storage can grow, never shrink" in refused.value.body

    # The broker's volume is in the default class, which does not allow expansion.
    patch_instance(kube, name, {"spec": {"broker": {"storage": "3Gi"}}})

    def refusal() -> str | None:
        events = kube.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
        return next((e.message for e in events if e.reason == "VolumeExpansionRefused"), None)

    message = wait_for(refusal, timeout=60, what="a VolumeExpansionRefused Event")
    assert "data-broker-0 cannot grow to 3Gi" in message and "must support resize" in message, message
    assert template_size("broker") == "1Gi"
    time.sleep(RESYNC_SECONDS + 1)
    events = kube.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
    assert [e.reason for e in events].count("VolumeExpansionRefused") == 1, "the refusal is told once, not at every resync"
    assert instance(kube, name)["status"]["phase"] == "Ready"
    delete_instance(kube, name)
    kube.kubectl("delete", "storageclass", "expandable")


def test_a_change_that_restarts_pods_waits_for_the_maintenance_window(kube: Cluster, operator: RunningOperator,
                                                                     servicemonitor_crd: None) -> None:
    """Outside its window a tenant's pods keep running as they are; the status says what waits and until when."""
    def hhmm(moment: datetime) -> str:
        return moment.strftime("%H:%M")

    now = datetime.now(timezone.utc)
    name, namespace = "windowed", "customer-windowed"
    create_instance(kube, name, plan="starter", maintenance={"start": hhmm(now + timedelta(hours=3)), "durationMinutes": 15})
    wait_phase(kube, name, "Ready", timeout=90)

    def api_cpu() -> str:
        return kube.apps.read_namespaced_deployment("api", namespace).spec.template.spec.containers[0].resources.limits["cpu"]

    before = api_cpu()
    patch_instance(kube, name, {"spec": {"api": {"resources": {"limits": {"cpu": "700m"}}}}})
    waiting = wait_for(lambda: (instance(kube, name).get("status") or {}).get("maintenance"), timeout=30, what="status.maintenance")
    opening = datetime.fromisoformat(waiting["nextWindow"].replace("Z", "+00:00"))
    assert waiting["pendingRestarts"] == ["api"] and timedelta(hours=2, minutes=58) < opening - now <= timedelta(hours=3), waiting
    time.sleep(RESYNC_SECONDS + 1)
    assert api_cpu() == before, "the api's pods keep running as they were"
    body = instance(kube, name)
    assert body["status"]["phase"] == "Ready" and body["status"]["observedGeneration"] == body["metadata"]["generation"]
    events = kube.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
    assert [e.reason for e in events].count("RestartDeferred") == 1, "told once, not at every resync"

    patch_instance(kube, name, {"spec": {"maintenance": {"start": hhmm(now - timedelta(minutes=1)), "durationMinutes": 60}}})
    wait_for(lambda: api_cpu() == "700m", timeout=30, what="the api restarted with its change inside the window")
    wait_for(lambda: "maintenance" not in instance(kube, name)["status"], timeout=30, what="status.maintenance removed")
    delete_instance(kube, name)


def test_professional_gets_a_service_monitor(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    ready_instance(kube, "plan-professional", "professional")
    monitor = kube.custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", "customer-plan-professional", "servicemonitors", "iotenant")
    assert monitor["spec"]["selector"]["matchLabels"] == {"iotenant.io/customer": "plan-professional"}
    assert not exists(lambda: kube.apps.read_namespaced_stateful_set("prometheus", "customer-plan-professional"))


# ----------------------------------------------------------------------------------------------------
# Plan changes


def _monitoring_objects(kube: Cluster, namespace: str) -> set[str]:
    listed = json.loads(
        kube.kubectl("get", "sts,svc,cm,sa,role,rolebinding,servicemonitors", "-n", namespace, "-l", "app.kubernetes.io/component=monitoring", "-o", "json").stdout
    )["items"]
    return {f"{item['kind']}/{item['metadata']['name']}" for item in listed}


def test_upgrade_and_downgrade_converge_with_nothing_stale(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "mover", "customer-mover"
    create_instance(kube, name, plan="starter")
    first = wait_phase(kube, name, "Ready")
    assert _monitoring_objects(kube, namespace) == {"ServiceMonitor/iotenant"}

    patch_instance(kube, name, {"spec": {"plan": "enterprise"}})
    upgraded = wait_for(
        lambda: (lambda b: b if b["status"].get("licence", {}).get("plan") == "enterprise" and b["status"]["phase"] == "Ready" else None)(instance(kube, name)),
        timeout=90, what="the upgrade to enterprise",
    )
    assert upgraded["status"]["licence"]["id"] != first["status"]["licence"]["id"]
    assert upgraded["status"]["observedGeneration"] == upgraded["metadata"]["generation"] == 2
    assert _monitoring_objects(kube, namespace) == {
        "StatefulSet/prometheus", "Service/prometheus", "ConfigMap/prometheus-config",
        "ServiceAccount/prometheus", "Role/prometheus", "RoleBinding/prometheus",
    }
    quota = kube.core.read_namespaced_resource_quota("iotenant-quota", namespace)
    assert quota.spec.hard["requests.cpu"] == CATALOGUE["enterprise"].quota.cpu

    patch_instance(kube, name, {"spec": {"plan": "starter"}})
    wait_for(
        lambda: (lambda b: b if b["status"].get("licence", {}).get("plan") == "starter" and b["status"]["phase"] == "Ready" else None)(instance(kube, name)),
        timeout=90, what="the downgrade to starter",
    )
    wait_for(lambda: _monitoring_objects(kube, namespace) == {"ServiceMonitor/iotenant"}, timeout=30, what="stale Prometheus objects to be pruned")
    token = secret_value(kube, namespace, "licence", "licence.jwt")
    assert licences.verify(token, published_jwks(kube, namespace), "mover-id").claims.plan == "starter"


# ----------------------------------------------------------------------------------------------------
# Drift, resync writes, pause


def test_drift_is_corrected_within_the_resync_interval(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "drifty", "customer-drifty"
    create_instance(kube, name, plan="starter")
    wait_phase(kube, name, "Ready")
    password = secret_value(kube, namespace, "database-credentials", "password")

    kube.apps.delete_namespaced_deployment("api", namespace)
    kube.apps.patch_namespaced_stateful_set("ingest", namespace, {"spec": {"replicas": 5}})
    rendered = kube.core.read_namespaced_config_map("broker-config", namespace).data["mosquitto.conf"]
    kube.core.patch_namespaced_config_map("broker-config", namespace, {"data": {"mosquitto.conf": rendered + "allow_anonymous true\n"}})
    kube.kubectl("delete", "networkpolicy", "default-deny", "-n", namespace)
    started = time.monotonic()

    def healed() -> bool:
        try:
            api = kube.apps.read_namespaced_deployment("api", namespace)
        except ApiException:
            return False
        ingest = kube.apps.read_namespaced_stateful_set("ingest", namespace)
        conf = kube.core.read_namespaced_config_map("broker-config", namespace).data["mosquitto.conf"]
        policy = kube.kubectl("get", "networkpolicy", "default-deny", "-n", namespace, check=False).returncode == 0
        return api.spec.replicas == 1 and ingest.spec.replicas == 1 and conf == rendered and policy

    wait_for(healed, timeout=RESYNC_SECONDS * 3, what="the operator to undo every drift")
    print(f"drift healed in {time.monotonic() - started:.1f} s (resync interval {RESYNC_SECONDS} s)")
    assert secret_value(kube, namespace, "database-credentials", "password") == password


def operator_writes(kube: Cluster, since: str) -> list[str]:
    """Write requests the operator sent since an RFC 3339 time, from the apiserver's audit log."""
    writes = []
    for line in kube.audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("userAgent", "").startswith(OPERATOR_AGENT) or entry.get("userAgent", "").startswith("kopf/"):
            # Lease renewals (leader election) are the only writes expected while nothing changes.
            if entry["requestReceivedTimestamp"] > since and entry["verb"] in WRITE_VERBS and entry["objectRef"].get("resource") != "leases":
                ref = entry["objectRef"]
                writes.append(f"{entry['verb']} {ref.get('resource')}/{ref.get('subresource', '')} {ref.get('namespace', '')}/{ref.get('name', '')}")
    return writes


def test_a_no_op_resync_makes_zero_writes(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name = "quiet"
    create_instance(kube, name, plan="enterprise")
    wait_phase(kube, name, "Ready")
    def settled() -> bool:
        items = kube.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        return all(condition(i, "Reconciling").get("status") == "False" for i in items)

    wait_for(settled, timeout=90, what="every instance to settle (Reconciling=False)")
    time.sleep(RESYNC_SECONDS)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    reconciles_before = _metric(operator, "iotenant_operator_reconciles_total", 'result="ok"')
    time.sleep(RESYNC_SECONDS * 3 + 1)
    reconciles = _metric(operator, "iotenant_operator_reconciles_total", 'result="ok"') - reconciles_before
    instances = len(kube.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"])
    assert reconciles >= instances * 2, f"only {reconciles} reconciles of {instances} instances in the window"
    assert operator_writes(kube, since) == []
    print(f"{reconciles:.0f} resync reconciles of {instances} instances made 0 writes")


def _metric(operator: RunningOperator, name: str, labels: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_pause_stops_reconciliation_and_resume_catches_up(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "pausable", "customer-pausable"
    create_instance(kube, name, plan="starter")
    wait_phase(kube, name, "Ready")
    patch_instance(kube, name, {"metadata": {"annotations": {"iotenant.io/paused": "true"}}})
    acted_on = wait_condition(kube, name, "Paused", "True")["metadata"]["generation"]
    patch_instance(kube, name, {"spec": {"displayName": "changed while paused"}})
    kube.apps.delete_namespaced_deployment("api", namespace)
    time.sleep(RESYNC_SECONDS * 2)
    assert not exists(lambda: kube.apps.read_namespaced_deployment("api", namespace))
    events = kube.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
    assert "Paused" in {event.reason for event in events}
    paused = instance(kube, name)
    assert paused["metadata"]["generation"] == acted_on + 1
    assert paused["status"]["observedGeneration"] == acted_on, "a paused instance claims a generation it never acted on"
    assert {c["observedGeneration"] for c in paused["status"]["conditions"]} == {acted_on}

    patch_instance(kube, name, {"metadata": {"annotations": {"iotenant.io/paused": None}}})
    wait_for(lambda: exists(lambda: kube.apps.read_namespaced_deployment("api", namespace)), timeout=30, what="api to be recreated")
    body = wait_phase(kube, name, "Ready")
    assert condition(body, "Paused") == {}


def test_suspension_scales_serving_workloads_to_zero_and_keeps_data(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "sleepy", "customer-sleepy"
    create_instance(kube, name, plan="starter")
    wait_phase(kube, name, "Ready")
    patch_instance(kube, name, {"spec": {"suspended": True}})
    body = wait_phase(kube, name, "Suspended")
    assert condition(body, "Ready")["status"] == "False"
    wait_for(lambda: kube.apps.read_namespaced_stateful_set("broker", namespace).spec.replicas == 0, what="broker scaled to zero")
    assert kube.apps.read_namespaced_stateful_set("ingest", namespace).spec.replicas == 0
    assert kube.apps.read_namespaced_deployment("api", namespace).spec.replicas == 0
    assert kube.apps.read_namespaced_stateful_set("database", namespace).spec.replicas == 1
    assert kube.core.read_namespaced_persistent_volume_claim("data-database-0", namespace).status.phase == "Bound"
    patch_instance(kube, name, {"spec": {"suspended": False}})
    wait_phase(kube, name, "Ready", timeout=90)


# ----------------------------------------------------------------------------------------------------
# Billing-issued licences


@pytest.mark.parametrize(
    "case,reason",
    [
        ("tampered", licences.BAD_SIGNATURE),
        ("wrong-sub", licences.WRONG_SUBJECT),
        ("wrong-aud", licences.WRONG_AUDIENCE),
        ("not-yet-valid", licences.NOT_YET_VALID),
        ("unknown-key", licences.UNKNOWN_KEY),
        ("missing", licences.MISSING),
        ("wrong-issuer", licences.WRONG_ISSUER),
        ("issued-in-future", licences.ISSUED_IN_FUTURE),
        ("operator-key", licences.UNKNOWN_KEY),
        ("weak-key", licences.WEAK_KEY),
        ("ec-key", licences.MALFORMED),
        ("kid-of-ec-key", licences.UNKNOWN_KEY),
        ("not-utf8", licences.MALFORMED),
        ("garbage", licences.MALFORMED),
    ],
)
def test_an_untrustworthy_billing_licence_gives_no_service(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, billing: BillingIssuer, case: str, reason: str) -> None:
    name = f"bad-{case}"
    subject = f"{name}-id"
    now = int(time.time())
    if case == "tampered":
        header, payload, signature = billing_token(billing, subject, plan="starter").split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["plan"], claims["monitoring"] = "enterprise", {"tier": "dedicated", "retentionDays": 30, "storageGb": 50}
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{header}.{forged}.{signature}"
    elif case == "wrong-sub":
        token = billing_token(billing, "someone-else")
    elif case == "wrong-aud":
        token = billing_token(billing, subject, aud="another-product")
    elif case == "not-yet-valid":
        token = billing_token(billing, subject, nbf=now + 7 * 86400, iat=now)
    elif case == "unknown-key":
        token = licences.sign(CATALOGUE["professional"].claims(subject, "rogue", 86400), licence_keys.SigningKey.generate())
    elif case == "wrong-issuer":  # signed by the billing key, claiming to come from elsewhere
        token = billing_token(billing, subject, iss="another-billing-system")
    elif case == "issued-in-future":
        token = billing_token(billing, subject, iat=now + 7 * 86400)
    elif case == "operator-key":  # the operator's own keys verify only the licences it issues
        token = licences.sign(CATALOGUE["enterprise"].claims(subject, BILLING_ISSUER, 86400), operator_signing_key(kube))
    elif case == "weak-key":
        token = licences.sign(CATALOGUE["enterprise"].claims(subject, BILLING_ISSUER, 86400), billing.weak_key)
    elif case == "ec-key":
        from cryptography.hazmat.primitives.asymmetric import ec

        payload = CATALOGUE["enterprise"].claims(subject, BILLING_ISSUER, 86400).to_payload()
        token = jwt.encode(payload, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "billing-ec"})
    elif case == "kid-of-ec-key":
        payload = CATALOGUE["enterprise"].claims(subject, BILLING_ISSUER, 86400).to_payload()
        token = jwt.encode(payload, billing.key.private_key, algorithm="RS256", headers={"kid": "billing-ec"})
    elif case == "garbage":
        token = "%%%." + "A" * 5000 + ".\u0000"
    else:
        token = ""
    if case == "not-utf8":
        secret_ref = billing_licence_bytes(kube, f"{name}-licence", b"\xff\xfe" + billing_token(billing, subject).encode())
    else:
        secret_ref = billing_licence(kube, f"{name}-licence", token)
    create_instance(kube, name, customerId=subject, licence=secret_ref)
    body = wait_condition(kube, name, "LicenceValid", "False", reason=reason)
    assert condition(body, "Ready")["status"] == "False"
    assert "licence" not in body["status"]
    namespace = f"customer-{name}"
    assert not exists(lambda: kube.core.read_namespaced_secret("licence", namespace))
    assert kube.apps.read_namespaced_stateful_set("ingest", namespace).spec.replicas == 0
    assert kube.apps.read_namespaced_deployment("api", namespace).spec.replicas == 0
    assert not exists(lambda: kube.apps.read_namespaced_stateful_set("prometheus", namespace))
    if reason not in (licences.NOT_YET_VALID, licences.MISSING):
        assert condition(body, "Stalled")["status"] == "True"
        assert body["status"]["phase"] == "Failed"


def test_a_billing_licence_is_read_only_from_a_trusted_namespace_and_the_answer_reveals_nothing(
    kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, billing: BillingIssuer
) -> None:
    """Anyone who may create a CustomerInstance must not learn, through its status, what Secrets exist elsewhere."""
    real = billing_licence(kube, "probe-real", billing_token(billing, "probe-a-id"), namespace="default")
    create_instance(kube, "probe-a", customerId="probe-a-id", licence=real)
    create_instance(kube, "probe-b", customerId="probe-b-id", licence={"secretRef": {"name": "no-such-secret", "namespace": "kube-system"}})
    answers = []
    for name in ("probe-a", "probe-b"):
        body = wait_condition(kube, name, "LicenceValid", "False", reason="UntrustedLicenceSource")
        assert condition(body, "Stalled")["status"] == "True" and "licence" not in body["status"]
        answers.append({kind: (condition(body, kind)["reason"], condition(body, kind)["message"]) for kind in ("Ready", "LicenceValid")})
    assert answers[0] == answers[1], answers
    assert "billing" in answers[0]["LicenceValid"][1]
    assert kube.apps.read_namespaced_stateful_set("ingest", "customer-probe-a").spec.replicas == 0
    delete_instance(kube, "probe-a")
    delete_instance(kube, "probe-b")


def test_one_customer_id_one_instance_the_younger_is_refused(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    create_instance(kube, "first-of-two", customerId="shared-id", plan="starter")
    wait_phase(kube, "first-of-two", "Ready")
    create_instance(kube, "second-of-two", customerId="shared-id", plan="enterprise")
    body = wait_condition(kube, "second-of-two", "Ready", "False", reason="DuplicateCustomerId")
    assert body["status"]["phase"] == "Failed" and condition(body, "Stalled")["status"] == "True"
    assert "first-of-two" in condition(body, "Ready")["message"]
    assert not exists(lambda: kube.core.read_namespace("customer-second-of-two")), "a duplicate got a namespace"
    assert instance(kube, "first-of-two")["status"]["phase"] == "Ready"
    delete_instance(kube, "first-of-two")
    wait_phase(kube, "second-of-two", "Ready", timeout=120)  # the customerId is free: the remaining one serves
    delete_instance(kube, "second-of-two")


def test_undecodable_managed_secrets_never_stop_enforcement(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "garbled", "customer-garbled"
    create_instance(kube, name, plan="starter")
    wait_phase(kube, name, "Ready")
    garbage = base64.b64encode(b"\xff\xfe\x00").decode()
    kube.core.patch_namespaced_secret("api-token", namespace, {"data": {"token": garbage}})
    kube.core.patch_namespaced_secret("broker-service-credentials", namespace, {"data": {"ingest-password": garbage}})
    kube.core.patch_namespaced_secret("licence", namespace, {"data": {"licence.jwt": garbage}})
    kube.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"suspended": True}})
    wait_phase(kube, name, "Suspended", timeout=RESYNC_SECONDS * 4)
    wait_for(lambda: kube.apps.read_namespaced_stateful_set("ingest", namespace).spec.replicas == 0, what="ingest scaled to zero")
    for secret, key in (("api-token", "token"), ("broker-service-credentials", "ingest-password"), ("licence", "licence.jwt")):
        wait_for(lambda: secret_value_or_none(kube, namespace, secret, key), timeout=RESYNC_SECONDS * 3,
                 what=f"Secret {secret} to hold text again")
    delete_instance(kube, name)


def secret_value_or_none(kube: Cluster, namespace: str, name: str, key: str) -> str | None:
    try:
        return secret_value(kube, namespace, name, key)
    except UnicodeDecodeError:
        return None


def test_a_valid_billing_licence_decides_plan_and_tier(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, billing: BillingIssuer) -> None:
    name = "billed"
    secret_ref = billing_licence(kube, "billed-licence", billing_token(billing, "billed-id", plan="enterprise"))
    create_instance(kube, name, licence=secret_ref)
    body = wait_phase(kube, name, "Ready", timeout=90)
    assert body["status"]["licence"]["plan"] == "enterprise"
    assert body["status"]["licence"]["issuer"] == BILLING_ISSUER
    assert exists(lambda: kube.apps.read_namespaced_stateful_set("prometheus", "customer-billed"))
    jwks = published_jwks(kube, "customer-billed")
    assert billing.key.kid in {key["kid"] for key in jwks["keys"]}


def test_a_licence_that_turns_untrustworthy_withdraws_it_and_stops_service(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, billing: BillingIssuer) -> None:
    name, namespace = "turned", "customer-turned"
    create_instance(kube, name, licence=billing_licence(kube, "turned-licence", billing_token(billing, "turned-id")))
    wait_phase(kube, name, "Ready", timeout=90)
    assert exists(lambda: kube.core.read_namespaced_secret("licence", namespace))
    assert exists(lambda: kube.core.read_namespaced_resource_quota("iotenant-quota", namespace))

    header, payload, signature = billing_token(billing, "turned-id", plan="enterprise").split(".")
    tampered = ".".join([header, payload, signature[:-6] + ("AAAAAA" if not signature.endswith("AAAAAA") else "BBBBBB")])
    billing_licence(kube, "turned-licence", tampered)
    body = wait_condition(kube, name, "LicenceValid", "False", licences.BAD_SIGNATURE, timeout=RESYNC_SECONDS * 4)
    assert body["status"]["phase"] == "Failed"
    # Fail closed: the workloads no longer find a licence to verify, and nothing serves.
    wait_for(lambda: not exists(lambda: kube.core.read_namespaced_secret("licence", namespace)), what="the licence Secret to be withdrawn")
    wait_for(lambda: kube.apps.read_namespaced_stateful_set("ingest", namespace).spec.replicas == 0, what="ingest scaled to zero")
    assert not exists(lambda: kube.core.read_namespaced_resource_quota("iotenant-quota", namespace)), "no plan, no plan quota"
    delete_instance(kube, name)


def test_an_expired_billing_licence_degrades_then_suspends_after_grace(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, billing: BillingIssuer) -> None:
    now = int(time.time())
    recent = billing_token(billing, "lapsed-id", nbf=now - 30 * 86400, iat=now - 30 * 86400, exp=now - 3600)
    create_instance(kube, "lapsed", licence=billing_licence(kube, "lapsed-licence", recent))
    body = wait_phase(kube, "lapsed", "Degraded", timeout=90)
    assert condition(body, "LicenceValid")["reason"] == "Expired"
    assert condition(body, "Ready")["status"] == "False"
    assert kube.apps.read_namespaced_stateful_set("ingest", "customer-lapsed").spec.replicas == 1

    long_ago = billing_token(billing, "lapsed-id", nbf=now - 60 * 86400, iat=now - 60 * 86400, exp=now - 2 * 86400)
    billing_licence(kube, "lapsed-licence", long_ago)
    body = wait_phase(kube, "lapsed", "Suspended", timeout=RESYNC_SECONDS * 4)
    assert condition(body, "LicenceValid")["reason"] == "Expired"
    wait_for(lambda: kube.apps.read_namespaced_stateful_set("ingest", "customer-lapsed").spec.replicas == 0, what="ingest scaled to zero")
    assert kube.apps.read_namespaced_stateful_set("database", "customer-lapsed").spec.replicas == 1


# ----------------------------------------------------------------------------------------------------
# Renewal and key rotation


def _signing_ring(kube: Cluster):  # type: ignore[no-untyped-def]
    from iotenant.licensing.signing_keys import SECRET_KEY, SECRET_NAME, KeyRing

    data = kube.core.read_namespaced_secret(SECRET_NAME, OPERATOR_NAMESPACE).data[SECRET_KEY]
    return KeyRing.from_json(base64.b64decode(data).decode())


def test_a_licence_is_renewed_before_twenty_percent_of_validity_remains(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "renewing", "customer-renewing"
    create_instance(kube, name, plan="starter", licence={"validityDays": 10})
    first = wait_phase(kube, name, "Ready")
    now = time.time()
    old = CATALOGUE["starter"].claims(f"{name}-id", "iotenant-operator", 10 * 86400, now=now - 9 * 86400)
    kube.core.patch_namespaced_secret(
        "licence", namespace, {"data": {"licence.jwt": base64.b64encode(licences.sign(old, _signing_ring(kube).active).encode()).decode()}}
    )
    renewed = wait_for(
        lambda: (lambda b: b if b["status"]["licence"]["id"] not in (first["status"]["licence"]["id"], old.jti) else None)(instance(kube, name)),
        timeout=RESYNC_SECONDS * 4, what="the licence to be renewed",
    )
    claims = licences.verify(secret_value(kube, namespace, "licence", "licence.jwt"), published_jwks(kube, namespace), f"{name}-id").claims
    assert claims.remaining_fraction(time.time()) > 0.99
    assert renewed["status"]["licence"]["id"] == claims.jti


def test_rotate_key_resigns_every_licence_and_retires_the_old_key(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    ready_instance(kube, "plan-starter", "starter")
    old_kid = _signing_ring(kube).active_kid
    result = subprocess.run([sys.executable, "-m", "iotenant", "licence", "rotate-key", "--namespace", OPERATOR_NAMESPACE],
                            capture_output=True, text=True, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)})
    assert result.returncode == 0, result.stderr
    new_kid = _signing_ring(kube).active_kid
    assert new_kid != old_kid

    def all_resigned() -> bool:
        items = kube.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        issued = [i for i in items if "secretRef" not in i["spec"].get("licence", {}) and "licence" in i.get("status", {})]
        return bool(issued) and all(i["status"]["licence"]["keyId"] == new_kid for i in issued)

    wait_for(all_resigned, timeout=60, what="every operator-issued licence to be re-signed with the new key")
    wait_for(lambda: set(_signing_ring(kube).keys) == {new_kid}, timeout=60, what="the old key to be retired")
    wait_for(lambda: {k["kid"] for k in published_jwks(kube, OPERATOR_NAMESPACE)["keys"]} == {new_kid}, timeout=30, what="the JWKS to drop the old key")
    token = secret_value(kube, "customer-plan-starter", "licence", "licence.jwt")
    assert licences.verify(token, published_jwks(kube, "customer-plan-starter"), "plan-starter-id").key_id == new_kid


def test_licence_inspect_verifies_against_the_cluster_jwks(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    ready_instance(kube, "plan-enterprise", "enterprise")
    token = secret_value(kube, "customer-plan-enterprise", "licence", "licence.jwt")
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    inspect = subprocess.run([sys.executable, "-m", "iotenant", "licence", "inspect", "--namespace", OPERATOR_NAMESPACE, token],
                             capture_output=True, text=True, env=env)
    assert inspect.returncode == 0, inspect.stderr
    described = json.loads(inspect.stdout)
    assert described["plan"] == "enterprise" and described["monitoringTier"] == "dedicated" and described["valid"]
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = subprocess.run([sys.executable, "-m", "iotenant", "licence", "verify", "--namespace", OPERATOR_NAMESPACE, tampered],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("invalid licence: BadSignature")


# ----------------------------------------------------------------------------------------------------
# Deletion and conflicts


def test_delete_policy_removes_the_namespace_and_everything_in_it(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "goner", "customer-goner"
    create_instance(kube, name, plan="enterprise")
    wait_phase(kube, name, "Ready")
    delete_instance(kube, name)
    wait_for(lambda: not exists(lambda: kube.core.read_namespace(namespace)), timeout=90, what="the namespace to be deleted")
    leftovers = [pv.metadata.name for pv in kube.core.list_persistent_volume().items if pv.spec.claim_ref and pv.spec.claim_ref.namespace == namespace and pv.status.phase == "Bound"]
    assert leftovers == []


def test_retain_policy_keeps_the_namespace_labelled_and_unmanaged(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    name, namespace = "keeper", "customer-keeper"
    create_instance(kube, name, plan="starter", deletionPolicy="Retain")
    wait_phase(kube, name, "Ready")
    delete_instance(kube, name)
    time.sleep(3)  # give the garbage collector a chance to (wrongly) act
    retained = kube.core.read_namespace(namespace)
    assert retained.status.phase == "Active"
    assert retained.metadata.labels["iotenant.io/retained-from"] == name
    assert not retained.metadata.owner_references
    pvc = kube.core.read_namespaced_persistent_volume_claim("data-database-0", namespace)
    assert pvc.metadata.labels["iotenant.io/retained-from"] == name
    database = kube.apps.read_namespaced_stateful_set("database", namespace)
    assert not database.metadata.owner_references


def test_a_foreign_namespace_is_never_adopted(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None) -> None:
    kube.kubectl("create", "namespace", "customer-squatter")
    kube.kubectl("label", "namespace", "customer-squatter", "team=someone-else")
    create_instance(kube, "squatter", plan="starter")
    body = wait_condition(kube, "squatter", "Ready", "False", reason="NamespaceConflict")
    assert body["status"]["phase"] == "Failed"
    assert condition(body, "Stalled")["status"] == "True"
    namespace = kube.core.read_namespace("customer-squatter")
    assert not namespace.metadata.owner_references
    assert "app.kubernetes.io/part-of" not in namespace.metadata.labels
    fleet = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceFleet", "metadata": {"name": "squatted", "namespace": "customer-squatter"},
             "spec": {"deviceType": "sensor", "devices": {"ids": ["sq-1"]}}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(fleet))

    def refused() -> bool:
        found = kube.custom.get_namespaced_custom_object(GROUP, VERSION, "customer-squatter", "devicefleets", "squatted")
        return condition(found, "Ready").get("reason") == "NotInCustomerNamespace"

    wait_for(refused, timeout=30, what="the fleet in the foreign namespace to be refused")
    assert kube.core.list_namespaced_secret("customer-squatter").items == []
    delete_instance(kube, "squatter")
    assert kube.core.read_namespace("customer-squatter").status.phase == "Active"


def test_a_new_instance_is_told_by_its_status_and_later_transitions_by_events(kube: Cluster, operator: RunningOperator,
                                                                               servicemonitor_crd: None) -> None:
    def reasons() -> list[str]:
        return [event.reason for event in kube.core.list_namespaced_event("default", field_selector="involvedObject.name=transitions").items]

    body = ready_instance(kube, "transitions", "starter")
    assert body["status"]["licence"]["id"] in condition(body, "Ready")["message"], "Ready names the licence"
    assert reasons() == [], "a new instance on its way to Ready: its status tells it, no Event is written"
    patch_instance(kube, "transitions", {"spec": {"plan": "professional"}})
    wait_for(lambda: "LicenceReissued" in reasons(), timeout=30, what="a LicenceReissued Event for the plan change")
    patch_instance(kube, "transitions", {"spec": {"suspended": True}})
    wait_phase(kube, "transitions", "Suspended")
    patch_instance(kube, "transitions", {"spec": {"suspended": False}})
    wait_phase(kube, "transitions", "Ready", timeout=90)
    wait_for(lambda: {"Suspended", "Ready"} <= set(reasons()), timeout=30, what="Events for the later transitions")
    delete_instance(kube, "transitions")
