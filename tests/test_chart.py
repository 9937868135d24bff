"""The Helm chart: linted and rendered by helm (built from its Go module), judged by the real apiserver."""

from __future__ import annotations

import dataclasses

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CHART, OPERATOR_NAMESPACE, Cluster, is_operator_rbac, render_chart

from iotenant import __version__
from iotenant_testbed.binaries import Binaries
from iotenant.settings import Images

REPO = Path(__file__).resolve().parents[1]
FLUX = REPO / "examples" / "flux"


def helm(binaries: Binaries, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binaries.path("helm")), *arguments], capture_output=True, text=True)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def pod_labels(deployment: dict) -> dict:
    """The Deployment's selector: what selects its pods."""
    return deployment["spec"]["selector"]["matchLabels"]


def test_helm_knows_the_kubernetes_version_it_was_built_with(binaries: Binaries) -> None:
    """No --kube-version needed: helm is stamped with the local cluster's version, which the chart accepts."""
    assert helm(binaries, "template", "iotenant", str(CHART)).returncode == 0
    old = helm(binaries, "template", "iotenant", str(CHART), "--kube-version", "1.20.0")
    assert old.returncode != 0 and "incompatible with Kubernetes v1.20.0" in old.stderr, old.stderr


def test_the_release_workflow_passes_actionlint_and_publishes_what_the_chart_pulls(binaries: Binaries) -> None:
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yaml"))
    assert workflows, "no workflow in .github/workflows"
    result = subprocess.run([str(binaries.path("actionlint")), "-no-color", *map(str, workflows)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    release = yaml.safe_load((REPO / ".github" / "workflows" / "release.yaml").read_text())
    steps = [step for job in release["jobs"].values() for step in job["steps"]]
    build = next(step for step in steps if str(step.get("uses", "")).startswith("docker/build-push-action@"))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64" and build["with"]["push"] is True
    assert any("helm push" in str(step.get("run", "")) for step in steps) and release["env"]["CHARTS"].startswith("oci://")
    assert "tags" in release[True]["push"], "released on a tag"
    # A job that may write packages runs no action a tag could move: each is pinned by its commit.
    unpinned = [step["uses"] for step in steps if "uses" in step and not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"])]
    assert unpinned == [], unpinned
    assert any('cosign sign --yes "${IMAGE}@${DIGEST}"' in str(step.get("run", "")) for step in steps), "the pushed image is signed by digest"
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    assert repository.endswith("/iotenant") and "IMAGE: ghcr.io/${{ github.repository_owner }}/iotenant" in (
        REPO / ".github" / "workflows" / "release.yaml").read_text()


def test_helm_lint_passes_strictly(binaries: Binaries) -> None:
    result = helm(binaries, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_the_crds_are_rendered_from_crds_and_only_with_install_crds(binaries: Binaries) -> None:
    rendered = {crd["metadata"]["name"]: crd for crd in by_kind(render_chart(binaries), "CustomResourceDefinition")}
    sources = {doc["metadata"]["name"]: doc for doc in (yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml")))}
    assert set(rendered) == set(sources) == {"customerinstances.iotenant.io", "devicefleets.iotenant.io"}
    for name, crd in rendered.items():
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}, "CRDs are kept on uninstall (deleting them deletes every customer)"
        assert crd == sources[name], f"{name} differs from crds/"
    assert by_kind(render_chart(binaries, "--set", "installCRDs=false"), "CustomResourceDefinition") == []
    kept = by_kind(render_chart(binaries, "--set", "keepCRDsOnUninstall=false"), "CustomResourceDefinition")
    assert all("annotations" not in crd["metadata"] for crd in kept)


def test_the_cluster_role_has_no_wildcards_and_says_why_for_every_rule(binaries: Binaries) -> None:
    objects = render_chart(binaries)
    roles = by_kind(objects, "ClusterRole") + by_kind(objects, "Role")
    assert sorted((role["kind"], role["metadata"].get("namespace", ""), role["metadata"]["name"]) for role in roles if is_operator_rbac(role)) == [
        ("ClusterRole", "", "iotenant-operator"), ("ClusterRole", "", "iotenant-operator-secrets"),
        ("Role", "billing", "iotenant-operator-billing-licences"), ("Role", "default", "iotenant-operator-apiserver-endpoints"),
        ("Role", "iotenant-system", "iotenant-operator")]
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{role['kind']} rule {rule} has a wildcard in {field}"
            assert "nonResourceURLs" not in rule
    for template in ("clusterrole.yaml", "role.yaml", "userroles.yaml"):
        lines = (CHART / "templates" / template).read_text().splitlines()
        for index, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                assert lines[index - 1].strip().startswith("#"), f"{template}: the rule at line {index + 1} has no comment saying what needs it"


def test_the_deployment_runs_two_replicas_with_one_leader_and_passes_pod_security(binaries: Binaries) -> None:
    (deployment,) = by_kind(render_chart(binaries), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    assert env["IOTENANT_LEADER_ELECTION"] == "true"
    assert env["IOTENANT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["IOTENANT_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # One registry-qualified image, shared by the operator and the stacks it makes (ingest, api, simulators).
    assert container["image"] == env["IOTENANT_IMAGE"] == Images().iotenant == f"ghcr.io/iotenant/iotenant:{__version__}"
    assert all(not env[name].endswith(":latest") for name in ("IOTENANT_BROKER_IMAGE", "IOTENANT_DATABASE_IMAGE", "IOTENANT_IMAGE"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    (budget,) = by_kind(render_chart(binaries), "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1 and budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (policy,) = by_kind(render_chart(binaries), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"] and policy["spec"]["podSelector"]["matchLabels"] == pod_labels(deployment)
    assert policy["spec"]["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                                          "ports": [{"port": "metrics", "protocol": "TCP"}]}]
    assert by_kind(render_chart(binaries, "--set", "networkPolicy.enabled=false"), "NetworkPolicy") == []
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert (env["IOTENANT_DNS_NAMESPACE"], env["IOTENANT_DNS_PORTS"], env["IOTENANT_DNS_CIDRS"]) == ("kube-system", "53", "")
    assert "IOTENANT_DNS_POD_SELECTOR" not in env, "no selector given: the operator's default (k8s-app=kube-dns)"
    assert env["IOTENANT_STORAGE_CLASS"] == ""
    (classed,) = by_kind(render_chart(binaries, "--set", "operator.storageClassName=fast-ssd"), "Deployment")
    assert {i["name"]: i.get("value") for i in classed["spec"]["template"]["spec"]["containers"][0]["env"]}["IOTENANT_STORAGE_CLASS"] == "fast-ssd"
    (openshift,) = by_kind(render_chart(binaries, "--set", "operator.dns.namespace=openshift-dns", "--set", "operator.dns.ports={5353}",
                                        "--set", "operator.dns.podSelector.dns\\.operator\\.openshift\\.io/daemonset-dns=default",
                                        "--set", "operator.dns.cidrs={169.254.20.10/32}"), "Deployment")
    env = {item["name"]: item.get("value") for item in openshift["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["IOTENANT_DNS_NAMESPACE"], env["IOTENANT_DNS_POD_SELECTOR"], env["IOTENANT_DNS_PORTS"], env["IOTENANT_DNS_CIDRS"]) == (
        "openshift-dns", "dns.operator.openshift.io/daemonset-dns=default", "5353", "169.254.20.10/32")
    (single,) = by_kind(render_chart(binaries, "--set", "replicaCount=1"), "Deployment")
    assert {i["name"]: i.get("value") for i in single["spec"]["template"]["spec"]["containers"][0]["env"]}["IOTENANT_LEADER_ELECTION"] == "false"


def test_plans_trusted_issuers_and_signing_keys_are_values(binaries: Binaries, tmp_path: Path) -> None:
    values = {
        "plans": {"basic": {"limits": {"maxDevices": 5, "maxFleets": 1, "retentionDays": 3, "maxMessagesPerSecond": 10},
                            "features": {}, "monitoring": {"tier": "shared"},
                            "quota": {"cpu": "1", "memory": "1Gi", "limitsCpu": "2", "limitsMemory": "2Gi", "storage": "5Gi",
                                      "pods": 10, "persistentVolumeClaims": 2}}},
        "signingKeys": {"generate": False},
    }
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    jwks = tmp_path / "billing-jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "billing-1", "n": "AQAB", "e": "AQAB"}]}))
    objects = render_chart(binaries, "-f", str(file), "--set-file", f"trustedIssuers.billing-1={jwks}")
    (config_map,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == "iotenant-operator-config"]
    from iotenant.licensing.plans import load_catalogue

    plans_file = tmp_path / "plans.yaml"
    plans_file.write_text(config_map["data"]["plans.yaml"])
    assert load_catalogue(plans_file)["basic"].limits.maxDevices == 5  # the operator reads what the chart writes
    assert json.loads(config_map["data"]["trusted-issuers.json"])["billing-1"]["keys"][0]["kid"] == "billing-1"
    env = {i["name"]: i.get("value") for i in by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IOTENANT_PLAN_CATALOGUE"] == "/etc/iotenant/config/plans.yaml"
    assert env["IOTENANT_CREATE_SIGNING_KEYS"] == "false"


@pytest.mark.parametrize("arguments,field", [
    (["--set", "replicaCount=abc"], "/replicaCount"),
    (["--set", "stackImages.broker=eclipse-mosquitto:latest"], "/stackImages/broker"),
    (["--set", "image.tag=latest"], "/image/tag"),
    (["--set", "operator.logLevel=verbose"], "/operator/logLevel"),
    (["--set", "operator.colour=blue"], "/operator"),
    (["--set", "plans.gold.limits.maxDevices=20000"], "/plans/gold"),
    (["--set", "trustedIssuers.jwks=not-json"], "/trustedIssuers/jwks"),
])
def test_values_schema_rejects_bad_values_naming_the_field(binaries: Binaries, arguments: list[str], field: str) -> None:
    result = helm(binaries, "template", "iotenant", str(CHART), *arguments)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


def test_images_may_be_pinned_by_digest(binaries: Binaries) -> None:
    digest = "sha256:" + "a" * 64
    objects = render_chart(binaries, "--set", f"stackImages.broker=eclipse-mosquitto:2.1.2@{digest}",
                           "--set", f"stackImages.database=postgres@{digest}")
    env = {i["name"]: i.get("value") for i in by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IOTENANT_BROKER_IMAGE"] == f"eclipse-mosquitto:2.1.2@{digest}" and env["IOTENANT_DATABASE_IMAGE"] == f"postgres@{digest}"


def test_monitoring_objects_are_optional_and_the_alert_rules_pass_promtool(binaries: Binaries, tmp_path: Path) -> None:
    plain = render_chart(binaries)
    assert by_kind(plain, "ServiceMonitor") == by_kind(plain, "PrometheusRule") == []
    objects = render_chart(binaries, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true")
    (monitor,) = by_kind(objects, "ServiceMonitor")
    (service,) = by_kind(objects, "Service")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    (rule,) = by_kind(objects, "PrometheusRule")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([str(binaries.path("promtool")), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: 4 rules found", result.stdout), result.stdout


def test_dns_settings_render_network_policies_the_apiserver_accepts(kube: Cluster) -> None:
    from iotenant.render.guardrails import network_policies
    from iotenant.settings import OperatorSettings
    from stacks import fixture_stack

    kube.kubectl("create", "namespace", "customer-acme", check=False)
    for settings in (OperatorSettings(dns_namespace="openshift-dns", dns_pod_selector=("dns.operator.openshift.io/daemonset-dns=default",),
                                      dns_ports=(5353,)),
                     OperatorSettings(dns_cidrs=("169.254.20.10/32", "fd00::10/128"), dns_ports=(53, 5353))):
        policies = network_policies(dataclasses.replace(fixture_stack("starter"), settings=settings))
        result = kube.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=iotenant-tests", "-o", "json", "-f", "-",
                              stdin=yaml.safe_dump_all(policies))
        applied = {item["metadata"]["name"]: item for item in json.loads(result.stdout)["items"]}
        egress = applied["allow-egress-dns-and-namespace"]["spec"]["egress"][0]
        assert egress["ports"] == [{"protocol": protocol, "port": port} for port in settings.dns_ports for protocol in ("UDP", "TCP")]


def test_the_rendered_chart_is_accepted_by_the_apiserver(kube: Cluster, binaries: Binaries, crds: list[dict], tmp_path: Path) -> None:
    kube.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kube.kubectl("create", "namespace", "billing", check=False)  # a dry run cannot put a Role into a namespace it only pretends to make
    # (The ServiceMonitor and PrometheusRule kinds are left out: their CRDs are not installed here yet.)
    objects = [o for o in render_chart(binaries) if o["kind"] != "CustomResourceDefinition"]
    kube.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=iotenant-tests", "-f", "-",
                 stdin=yaml.safe_dump_all(objects))
    crd_objects = by_kind(render_chart(binaries), "CustomResourceDefinition")
    kube.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=iotenant-tests",
                 "-f", "-", stdin=yaml.safe_dump_all(crd_objects))


def test_the_flux_example_installs_crds_before_customers(binaries: Binaries, kube: Cluster, crds: list[dict], tmp_path: Path) -> None:
    documents = [d for p in sorted(FLUX.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    kinds = {d["kind"]: d for d in documents}
    assert {"GitRepository", "Kustomization"} <= set(kinds)
    kustomizations = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Kustomization"}
    customers = kustomizations["iotenant-customers"]
    assert customers["spec"]["dependsOn"] == [{"name": "iotenant-operator"}]
    assert kustomizations["iotenant-operator"]["spec"]["wait"] is True
    assert customers["spec"]["wait"] is True and "healthChecks" not in customers["spec"], \
        "wait: true checks every instance the Kustomization applies; a healthChecks list names some and is ignored beside wait"

    operator_files = [d for p in sorted((FLUX / "operator").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    (release,) = [d for d in operator_files if d["kind"] == "HelmRelease"]
    assert release["spec"]["chart"]["spec"]["chart"] == "./charts/iotenant"
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "Skip", "CRDs come from the chart's templates"
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(release["spec"]["values"]))
    assert render_chart(binaries, "-f", str(values))  # the HelmRelease's values pass values.schema.json

    for path in sorted((FLUX / "customers").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            kube.kubectl("apply", "--dry-run=server", "-f", str(path))


def test_a_packaged_chart_carries_the_crds_itself(binaries: Binaries, tmp_path: Path) -> None:
    """`helm package` resolves the files/crds link, so a published chart needs no checkout."""
    result = helm(binaries, "package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (package,) = tmp_path.glob("iotenant-0.1.0.tgz")
    rendered = helm(binaries, "template", "iotenant", str(package))
    assert rendered.returncode == 0, rendered.stderr
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "CustomResourceDefinition"}
    assert names == {"customerinstances.iotenant.io", "devicefleets.iotenant.io"}


def test_the_kind_path_loads_the_image_the_chart_runs(binaries: Binaries) -> None:
    """`make kind-up` builds and loads IMAGE; the operator's pod and every tenant's ingest, api and simulators
    run the chart's image reference, so the two must be the same (kind cannot pull what it was only given)."""
    dry_run = subprocess.run(["make", "-n", "kind-up", "VENV=.venv"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    built = re.findall(r"docker build --tag (\S+)", dry_run.stdout)
    loaded = re.findall(r"kind load docker-image (\S+)", dry_run.stdout)
    (deployment,) = [o for o in render_chart(binaries) if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert built == loaded == [container["image"]], (built, loaded, container["image"])
    assert env["IOTENANT_IMAGE"] == container["image"], "tenant pods run the operator's own image"
    assert container["imagePullPolicy"] == "IfNotPresent", "a loaded image is used as it is"
