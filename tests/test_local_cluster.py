"""The local control plane is a real cluster: its controllers, scheduler, kwok and admission all work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conftest import TEST_CLUSTER, Cluster, wait_for


def iotenant(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iotenant", *args], capture_output=True, text=True, check=True)


def test_the_binaries_report_their_pinned_versions(kube: Cluster) -> None:
    assert kube.kubectl("version", "-o", "json").stdout.count('"gitVersion": "v1.35.4"') == 2
    etcd = subprocess.run([str(kube.binaries.path("etcd")), "--version"], capture_output=True, text=True, check=True)
    assert "etcd Version: 3.6." in etcd.stdout


def test_dev_up_reuses_the_running_cluster_and_prints_the_kubeconfig_last(kube: Cluster) -> None:
    before = kube.core.read_namespace("kube-system").metadata.uid
    result = iotenant("dev", "up", "--name", TEST_CLUSTER)
    assert result.stdout.strip().splitlines()[-1] == str(kube.kubeconfig)
    assert kube.core.read_namespace("kube-system").metadata.uid == before
    assert iotenant("dev", "env", "--name", TEST_CLUSTER).stdout.strip() == f"export KUBECONFIG={kube.kubeconfig}"


def test_every_component_listens_on_loopback_only(kube: Cluster) -> None:
    status = json.loads(iotenant("dev", "status", "--name", TEST_CLUSTER).stdout)
    sockets = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    pids = [line.split("pid=")[1].split(",")[0] for line in sockets.splitlines() if "pid=" in line]
    ours = {str(pid) for pid in status["running"].values()}
    assert len(ours) == 5
    for line in sockets.splitlines():
        pid = line.split("pid=")[1].split(",")[0] if "pid=" in line else ""
        if pid in ours:
            assert line.split()[3].startswith("127.0.0.1:"), line
    assert ours <= set(pids)


def test_a_deleted_namespace_disappears(kube: Cluster) -> None:
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="doomed")))
    kube.core.create_namespaced_config_map("doomed", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"a": "b"}))
    kube.core.delete_namespace("doomed")

    def gone() -> bool:
        try:
            kube.core.read_namespace("doomed")
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, timeout=60, what="the namespace controller to finish deleting namespace doomed")


def test_an_object_whose_owner_is_deleted_is_garbage_collected(kube: Cluster) -> None:
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="gc-probe")))
    owner = kube.core.create_namespaced_config_map(
        "gc-probe", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    kube.core.create_namespaced_secret(
        "gc-probe", client.V1Secret(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference]))
    )
    kube.core.delete_namespaced_config_map("owner", "gc-probe")

    def collected() -> bool:
        return not [s for s in kube.core.list_namespaced_secret("gc-probe").items if s.metadata.name == "dependent"]

    wait_for(collected, timeout=60, what="the garbage collector to delete the dependent Secret")


def test_a_deployments_pods_become_ready_through_kwok(kube: Cluster) -> None:
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="kwok-probe")))
    labels = {"app": "web"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.27")]),
            ),
        ),
    )
    kube.apps.create_namespaced_deployment("kwok-probe", deployment)
    wait_for(
        lambda: (kube.apps.read_namespaced_deployment("web", "kwok-probe").status.available_replicas or 0) == 3,
        timeout=60,
        what="3 available replicas",
    )
    pods = kube.core.list_namespaced_pod("kwok-probe").items
    assert len(pods) == 3
    assert all(pod.status.phase == "Running" and pod.spec.node_name for pod in pods)


def test_pod_security_restricted_rejects_a_privileged_pod(kube: Cluster) -> None:
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="psa-probe", labels=labels)))
    privileged = client.V1Pod(
        metadata=client.V1ObjectMeta(name="root"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="c", image="busybox:1.36", security_context=client.V1SecurityContext(privileged=True)
                )
            ]
        ),
    )
    with pytest.raises(ApiException) as caught:
        kube.core.create_namespaced_pod("psa-probe", privileged)
    assert caught.value.status == 403
    message = json.loads(caught.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "privileged" in message

    compliant = client.V1Pod(
        metadata=client.V1ObjectMeta(name="fine"),
        spec=client.V1PodSpec(
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=10001, seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")
            ),
            containers=[
                client.V1Container(
                    name="c",
                    image="busybox:1.36",
                    security_context=client.V1SecurityContext(
                        allow_privilege_escalation=False, capabilities=client.V1Capabilities(drop=["ALL"])
                    ),
                )
            ],
        ),
    )
    assert kube.core.create_namespaced_pod("psa-probe", compliant).metadata.uid


def test_dev_up_fails_loudly_when_go_is_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, PATH=str(tmp_path), IOTENANT_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "iotenant", "dev", "up", "--name", "nothing"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "the Go toolchain is missing" in result.stderr
