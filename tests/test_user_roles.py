"""Roles for people and systems, from the chart, on the real apiserver: a billing system with only its
roles creates a customer with the example program; namespace viewers see DeviceFleets through the
built-in view role, and only holders of iotenant-edit change them (aggregation by the real
controller-manager)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import BILLING_ISSUER, REPO, BillingIssuer, Cluster, RunningOperator, render_chart, token_kubeconfig, wait_for
from iotenant.licensing import licence as licences
from iotenant_testbed.binaries import Binaries
from iotenant.licensing.plans import load_catalogue

USER_ROLES = ("iotenant-view", "iotenant-edit", "iotenant-billing")


def install_user_roles(kube: Cluster, binaries: Binaries) -> None:
    kube.kubectl("create", "namespace", "billing", check=False)
    roles = [o for o in render_chart(binaries, "--set", "installCRDs=false") if o["metadata"]["name"] in USER_ROLES]
    assert {(o["kind"], o["metadata"]["name"]) for o in roles} == {
        ("ClusterRole", "iotenant-view"), ("ClusterRole", "iotenant-edit"), ("ClusterRole", "iotenant-billing"), ("Role", "iotenant-billing")}
    kube.kubectl("apply", "--server-side", "--field-manager=iotenant-tests", "-f", "-", stdin=yaml.safe_dump_all(roles))


def test_a_billing_system_with_only_its_roles_creates_a_customer(
    kube: Cluster, binaries: Binaries, operator: RunningOperator, billing: BillingIssuer, tmp_path: Path
) -> None:
    install_user_roles(kube, binaries)
    kube.kubectl("create", "serviceaccount", "billing-bot", "-n", "billing", check=False)
    kube.kubectl("create", "clusterrolebinding", "billing-bot", "--clusterrole=iotenant-billing",
                 "--serviceaccount=billing:billing-bot", check=False)
    kube.kubectl("create", "rolebinding", "billing-bot", "-n", "billing", "--role=iotenant-billing",
                 "--serviceaccount=billing:billing-bot", check=False)
    kubeconfig = token_kubeconfig(kube, "billing-bot", "billing", tmp_path)
    claims = load_catalogue()["professional"].claims("bot-customer-7", BILLING_ISSUER, 30 * 86400)
    licence_file = tmp_path / "licence.jwt"
    licence_file.write_text(licences.sign(claims, billing.key))

    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "billing" / "create_customer.py"), "--name", "bot-customer",
         "--customer-id", "bot-customer-7", "--licence", str(licence_file), "--kubeconfig", str(kubeconfig), "--timeout", "120"],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    assert "bot-customer: Ready, plan professional" in result.stdout
    assert "mqtt: mqtt://broker.customer-bot-customer.svc:1883" in result.stdout

    def as_bot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binaries.path("kubectl")), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True)

    for namespace in ("customer-bot-customer", "kube-system", "default"):
        refused = as_bot("get", "secrets", "-n", namespace)
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), namespace
    assert as_bot("get", "pods", "-n", "customer-bot-customer").returncode != 0
    kube.kubectl("delete", "customerinstance", "bot-customer", "--wait=true", "--timeout=60s")


def test_viewers_see_device_fleets_and_only_iotenant_edit_changes_them(kube: Cluster, binaries: Binaries) -> None:
    """The built-in edit role reads and changes Secrets and NetworkPolicies, so it is not how anyone gets
    DeviceFleets by default: iotenant-edit, bound in the namespace, is."""
    install_user_roles(kube, binaries)
    kube.kubectl("create", "namespace", "team-roles", check=False)
    for account, kind, role in (("watcher", "clusterrole", "view"), ("editor", "clusterrole", "edit"),
                                ("declarer", "clusterrole", "iotenant-edit")):
        kube.kubectl("create", "serviceaccount", account, "-n", "team-roles", check=False)
        kube.kubectl("create", "rolebinding", account, "-n", "team-roles", f"--{kind}={role}",
                     f"--serviceaccount=team-roles:{account}", check=False)

    def can(account: str, verb: str, resource: str = "devicefleets.iotenant.io") -> bool:
        answer = kube.kubectl("auth", "can-i", verb, resource, "-n", "team-roles",
                              f"--as=system:serviceaccount:team-roles:{account}", check=False)
        return answer.stdout.strip() == "yes"

    wait_for(lambda: can("watcher", "list") and can("declarer", "create"), timeout=30,
             what="the aggregated view role and the bound iotenant-edit")
    assert not can("watcher", "create") and not can("watcher", "delete")
    assert can("declarer", "delete") and not can("declarer", "get", "secrets")
    assert not can("editor", "create"), "the built-in edit role got DeviceFleets without being asked to"
    kube.kubectl("delete", "namespace", "team-roles", "--wait=false")


def test_the_edit_role_may_be_aggregated_when_asked(binaries: Binaries) -> None:
    def labels(*arguments: str) -> dict[str, str]:
        (role,) = [o for o in render_chart(binaries, *arguments) if o["metadata"]["name"] == "iotenant-edit"]
        return role["metadata"]["labels"]

    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in labels()
    asked = labels("--set", "userRoles.aggregateEditToBuiltInRoles=true")
    assert asked["rbac.authorization.k8s.io/aggregate-to-edit"] == asked["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
