"""Least privilege, proven: every rule the chart grants the operator was used by the test suite.

The operator under test runs with the chart's ServiceAccount (conftest: operator_kubeconfig), and
the test cluster's audit policy records every request of that account. This module runs after the
CustomerInstance, DeviceFleet and HA tests (file order); run alone it finds the rules unused and
says so.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, SECRET_READER_ROLE, Cluster, RunningOperator, is_operator_rbac, render_chart, wait_for
from test_customer_instance import condition, create_instance, delete_instance, instance

from iotenant_testbed.binaries import Binaries
from iotenant.render.guardrails import POD_SECURITY_LABELS
from iotenant.render.monitoring import PROMETHEUS_RULES
from iotenant.render.operator_access import SECRET_READER_BINDING

# Held so that the operator may grant them to the dedicated Prometheus (RBAC escalation check):
# proven by the operator creating that Role (and the enterprise tests passing), not by use.
DELEGATED = {(g, r, v) for rule in PROMETHEUS_RULES for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
# Checked when the operator binds its secret reader in a customer namespace (no request of its own in the audit log).
BIND = ("rbac.authorization.k8s.io", "clusterroles", "bind")


def granted(binaries: Binaries) -> set[tuple[str, str, str]]:
    rules = set()
    for role in render_chart(binaries):
        if role["kind"] in ("ClusterRole", "Role") and is_operator_rbac(role):
            for rule in role["rules"]:
                rules |= {(group, resource, verb) for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    return rules


def used(kube: Cluster) -> set[tuple[str, str, str]]:
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
    seen = set()
    for line in kube.audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("user", {}).get("username") != user or "objectRef" not in entry:
            continue
        ref = entry["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        seen.add((ref.get("apiGroup", ""), resource, entry["verb"]))
        if entry["verb"] == "patch" and entry.get("responseStatus", {}).get("code") == 201:
            seen.add((ref.get("apiGroup", ""), resource, "create"))  # a server-side apply that created the object
    return seen


def test_every_granted_permission_was_used_by_the_operator(kube: Cluster, binaries: Binaries, operator: RunningOperator) -> None:
    unused = sorted(granted(binaries) - used(kube) - DELEGATED - {BIND})
    assert unused == [], (
        f"granted but never used by the operator in this run: {unused}. Run the whole suite (the CustomerInstance, "
        "DeviceFleet and HA tests use them); a rule that stays unused should go."
    )


def test_the_permissions_held_for_prometheus_were_granted_by_the_operator(kube: Cluster, binaries: Binaries, operator: RunningOperator) -> None:
    assert DELEGATED <= granted(binaries), "the operator could not create the dedicated Prometheus' Role"
    assert ("rbac.authorization.k8s.io", "roles", "patch") in used(kube), "no dedicated Prometheus Role was created in this run"


def test_the_admission_fence_refuses_the_operator_outside_customer_namespaces(kube: Cluster, operator_kubeconfig: Path) -> None:
    """The ClusterRole alone would let the operator's token write Secrets and RoleBindings anywhere; the fence does not."""
    def as_operator(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(kube.binaries.path("kubectl")), "--kubeconfig", str(operator_kubeconfig), *args],
                              input=stdin, capture_output=True, text=True, timeout=60)

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted", "namespace": "default"}, "stringData": {"k": "v"}}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "planted", "namespace": "kube-system"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "iotenant-operator"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "kube-system"}]}
    for manifest in (secret, binding):
        result = as_operator("apply", "--server-side", "--field-manager=iotenant-operator", "-f", "-", stdin=json.dumps(manifest))
        assert result.returncode != 0, f"the operator's token wrote {manifest['kind']} {manifest['metadata']['namespace']}/planted"
        assert "only in namespaces managed by iotenant" in result.stderr, result.stderr
    assert kube.kubectl("get", "secret", "planted", "-n", "default", check=False).returncode != 0
    # Its own namespace stays writable (the signing key ring, the JWKS).
    own = {**secret, "metadata": {"name": "fence-probe", "namespace": OPERATOR_NAMESPACE}}
    assert as_operator("apply", "--server-side", "--field-manager=iotenant-operator", "-f", "-", stdin=json.dumps(own)).returncode == 0
    kube.kubectl("delete", "secret", "fence-probe", "-n", OPERATOR_NAMESPACE)


def test_the_fence_keeps_the_operator_to_the_namespaces_it_manages(kube: Cluster, operator_kubeconfig: Path) -> None:
    """A stolen operator token cannot adopt a namespace by labelling it, relax a customer namespace's Pod
    Security, create namespaces of its choosing or delete one it does not manage; its own work still passes."""
    def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(kube.binaries.path("kubectl")), "--kubeconfig", str(operator_kubeconfig), *args],
                              capture_output=True, text=True, timeout=60)

    def refused(result: subprocess.CompletedProcess[str], rule: str) -> bool:
        return result.returncode != 0 and rule in result.stderr

    managed = {"app.kubernetes.io/managed-by": "iotenant-operator", **POD_SECURITY_LABELS}
    probe = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "customer-fence-probe", "labels": managed}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(probe))
    try:
        adopt = as_operator("label", "namespace", "kube-system", "app.kubernetes.io/managed-by=iotenant-operator")
        assert refused(adopt, "only namespaces managed by iotenant"), adopt.stderr
        assert "app.kubernetes.io/managed-by" not in (kube.core.read_namespace("kube-system").metadata.labels or {})
        relax = as_operator("label", "--overwrite", "namespace", "customer-fence-probe", "pod-security.kubernetes.io/enforce=privileged")
        assert refused(relax, "only with Pod Security restricted"), relax.stderr
        planted = as_operator("create", "namespace", "planted")
        assert refused(planted, "may create only customer-<name> namespaces"), planted.stderr
        kube.kubectl("create", "namespace", "fence-foreign", check=False)  # deletable, unlike default and kube-system
        deleted = as_operator("delete", "namespace", "fence-foreign", "--wait=false")
        assert refused(deleted, "only namespaces managed by iotenant"), deleted.stderr
        assert kube.core.read_namespace("fence-foreign").status.phase == "Active"
        # What the operator does stays possible: labelling and deleting a namespace it manages.
        assert as_operator("label", "namespace", "customer-fence-probe", "iotenant.io/probe=1").returncode == 0
        assert as_operator("delete", "namespace", "customer-fence-probe", "--wait=false").returncode == 0
    finally:
        kube.kubectl("delete", "namespace", "customer-fence-probe", "fence-foreign", "--wait=false", check=False)


def test_the_operator_reads_secrets_only_in_customer_namespaces_its_own_and_billing(
        kube: Cluster, operator_kubeconfig: Path, operator: RunningOperator) -> None:
    """A stolen operator token lists no Secret of kube-system or of any other application; the operator
    itself reads a customer namespace's Secrets through the RoleBinding it made there, and only while it
    manages that namespace."""
    def as_operator(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(kube.binaries.path("kubectl")), "--kubeconfig", str(operator_kubeconfig), *args],
                              input=stdin, capture_output=True, text=True, timeout=60)

    for args in (("get", "secrets", "--all-namespaces"), ("get", "secrets", "-n", "kube-system"), ("get", "secrets", "-n", "default"),
                 ("get", "secrets", "-n", "billing"), ("get", "secrets", "-n", OPERATOR_NAMESPACE)):
        result = as_operator(*args)
        assert result.returncode != 0 and "forbidden" in result.stderr.lower(), f"{' '.join(args)}: {result.stdout or result.stderr}"
    kube.kubectl("create", "namespace", "secret-probe", check=False)
    kube.kubectl("create", "secret", "generic", "probe", "-n", "secret-probe", "--from-literal=k=v", check=False)
    try:
        refused = as_operator("get", "secret", "probe", "-n", "secret-probe")
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stdout
    finally:
        kube.kubectl("delete", "namespace", "secret-probe", "--wait=false", check=False)
    # Where the operator manages a tenant it made its RoleBinding, and reads through it; once the tenant is
    # released (deletionPolicy Retain), the binding goes and the namespace's Secrets are no longer readable.
    name, namespace = "secret-reader", "customer-secret-reader"
    create_instance(kube, name, plan="starter", deletionPolicy="Retain")
    try:
        wait_for(lambda: condition(instance(kube, name), "Ready").get("status") == "True", timeout=90, what=f"{name}: Ready")
        binding = json.loads(kube.kubectl("get", "rolebinding", SECRET_READER_BINDING, "-n", namespace, "-o", "json").stdout)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SECRET_READER_ROLE}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}]
        listed = as_operator("get", "secrets", "-n", namespace, "-o", "name")
        assert listed.returncode == 0 and "secret/licence" in listed.stdout, listed.stderr
        # It binds its secret reader and nothing else: binding cluster-admin there is an escalation.
        planted = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "planted-reader", "namespace": namespace},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}]}
        escalation = as_operator("create", "-f", "-", stdin=json.dumps(planted))
        assert escalation.returncode != 0 and "attempting to grant RBAC permissions not currently held" in escalation.stderr, escalation.stderr
        delete_instance(kube, name)
        assert kube.kubectl("get", "rolebinding", SECRET_READER_BINDING, "-n", namespace, check=False).returncode != 0
        released = as_operator("get", "secrets", "-n", namespace)
        assert released.returncode != 0 and "forbidden" in released.stderr.lower(), released.stdout
        assert kube.core.read_namespaced_secret("licence", namespace) is not None, "a retained namespace keeps its Secrets"
    finally:
        kube.kubectl("delete", "customerinstance", name, "--wait=false", check=False)
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
