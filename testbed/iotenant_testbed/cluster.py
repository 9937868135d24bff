"""A local Kubernetes control plane on loopback, orchestrated by kwokctl from locally built binaries.

kwokctl (the kwok project's cluster tool) generates the PKI and kubeconfig, starts etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and the kwok controller as processes,
records their process ids and stops them by those ids. kwok makes fake nodes Ready and moves
the pods scheduled on them to Running/Ready, so Deployments and StatefulSets report status as in
a real cluster. Nothing is downloaded: every binary comes from ``binaries.ensure_binaries``.
"""

from __future__ import annotations

import json
import os
import sys
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from iotenant_testbed import real_node
from iotenant_testbed.binaries import Binaries, MissingPart, cache_dir, ensure_binaries
from iotenant_testbed.kubectl import kubectl, run_tool
from iotenant_testbed.loopback import free_port
from iotenant_testbed.node_network import SERVICE_RANGE

DEFAULT_NAME = "iotenant"
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "kubernetes.io/host-path",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}
FAKE_NODE_COUNT = 2
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node=fake"

# Only writes are recorded: enough to count what a controller changes, small enough to keep.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # Everything the operator's ServiceAccount does: the tests check that each RBAC rule is used.
  - level: Metadata
    userGroups: ["system:serviceaccounts:iotenant-system"]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


@dataclass(frozen=True)
class LocalCluster:
    """Where one named local cluster keeps its state."""

    name: str

    @property
    def workdir(self) -> Path:
        return cache_dir() / "kwok"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "clusters" / self.name

    @property
    def kubeconfig(self) -> Path:
        return cache_dir() / "clusters" / self.name / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def real_node_marker(self) -> Path:
        """Present while this cluster has the machine's real node."""
        return self.kubeconfig.parent / "real-node"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "logs" / "audit.log"

    def pid_files(self) -> list[Path]:
        return sorted((self.state_dir / "pids").glob("*.pid"))


def _kwokctl(binaries: Binaries, cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KWOK_WORKDIR=str(cluster.workdir))
    return run_tool([str(binaries.path("kwokctl")), "--name", cluster.name, *args], env=env, check=check)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pids(cluster: LocalCluster) -> dict[str, int]:
    """The cluster's components whose recorded process is still alive."""
    alive: dict[str, int] = {}
    for pid_file in cluster.pid_files():
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            continue
        if _process_alive(pid):
            alive[pid_file.stem] = pid
    return alive


def is_ready(binaries: Binaries, cluster: LocalCluster) -> bool:
    if not cluster.kubeconfig.is_file():
        return False
    probe = kubectl(binaries, cluster.kubeconfig, "get", "--raw", "/readyz", "--request-timeout=2s", check=False)
    return probe.returncode == 0 and probe.stdout.strip() == "ok"


def wait_ready(binaries: Binaries, cluster: LocalCluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_ready(binaries, cluster):
            return
        time.sleep(0.25)
    log = cluster.state_dir / "logs" / "kube-apiserver.log"
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no apiserver log)"
    raise RuntimeError(f"the local apiserver did not become ready within {timeout:.0f} s; its log ends:\n{tail}")


def _create(binaries: Binaries, cluster: LocalCluster, with_real_node: bool) -> None:
    cluster.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    cluster.workdir.mkdir(parents=True, exist_ok=True)
    policy = cluster.kubeconfig.parent / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    etcd_port, etcd_peer_port, kwok_port = free_port(), free_port(), free_port()
    loopback = "127.0.0.1"
    extra_args = {
        "etcd": {
            "unsafe-no-fsync": "true",
            "listen-client-urls": f"http://{loopback}:{etcd_port}",
            "advertise-client-urls": f"http://{loopback}:{etcd_port}",
            "listen-peer-urls": f"http://{loopback}:{etcd_peer_port}",
            "initial-advertise-peer-urls": f"http://{loopback}:{etcd_peer_port}",
            "initial-cluster": f"node0=http://{loopback}:{etcd_peer_port}",
        },
        "kube-apiserver": {"bind-address": loopback, "service-cluster-ip-range": SERVICE_RANGE},
        # The in-tree hostPath provisioner binds PersistentVolumeClaims (kwok runs no real volumes).
        "kube-controller-manager": {
            "bind-address": loopback,
            "enable-hostpath-provisioner": "true",
            "service-cluster-ip-range": SERVICE_RANGE,
        },
        "kube-scheduler": {"bind-address": loopback},
        # kwok fakes only the nodes annotated as fake; a real node is left to its kubelet.
        "kwok-controller": {"server-address": f"{loopback}:{kwok_port}", "manage-all-nodes": "false",
                            "manage-nodes-with-annotation-selector": FAKE_NODE_ANNOTATION},
    }
    certificate_names: list[str] = []
    if with_real_node:
        extra_args["kube-apiserver"].update(real_node.apiserver_arguments(cluster.pki))
        certificate_names = real_node.certificate_names()
    args = [
        "create", "cluster",
        "--runtime", "binary",
        "--kubeconfig", str(cluster.kubeconfig),
        "--etcd-port", str(etcd_port),
        "--controller-port", str(kwok_port),
        "--etcd-binary", str(binaries.path("etcd")),
        "--kube-apiserver-binary", str(binaries.path("kube-apiserver")),
        "--kube-controller-manager-binary", str(binaries.path("kube-controller-manager")),
        "--kube-scheduler-binary", str(binaries.path("kube-scheduler")),
        "--kwok-controller-binary", str(binaries.path("kwok")),
        "--kube-audit-policy", str(policy),
        "--wait", "60s",
    ]
    # Extra flags go through a configuration file: kwokctl 0.8's --extra-args mixes up components.
    configuration = cluster.kubeconfig.parent / "kwokctl.yaml"
    configuration.write_text(json.dumps(_kwokctl_configuration(extra_args, certificate_names)))
    args = ["--config", str(configuration), *args]
    _kwokctl(binaries, cluster, *args)


def _kwokctl_configuration(extra_args: dict[str, dict[str, str]], certificate_names: list[str]) -> dict[str, object]:
    return {
        "kind": "KwokctlConfiguration",
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "options": {"kubeApiserverCertSANs": certificate_names},
        "componentsPatches": [
            {"name": component, "extraArgs": [{"key": key, "value": value} for key, value in flags.items()]}
            for component, flags in extra_args.items()
        ],
    }


def fake_nodes_manifest(count: int) -> str:
    """Nodes that kwok keeps Ready; roomy enough for many customer namespaces."""
    nodes = []
    for index in range(1, count + 1):
        name = f"kwok-node-{index}"
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {FAKE_NODE_ANNOTATION.split("=")[0]: FAKE_NODE_ANNOTATION.split("=")[1], "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/arch": "amd64",
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/hostname": name,
                        "type": "kwok",
                    },
                },
                "spec": {},
                "status": {
                    "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"},
                    "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"},
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})


def _ensure_nodes(binaries: Binaries, cluster: LocalCluster, count: int) -> None:
    """The real node (with its local volumes) when this cluster has it, and ``count`` fake nodes."""
    if cluster.real_node_marker.is_file():
        real_node.up(binaries, cluster.kubeconfig, cluster.pki)
    else:
        kubectl(binaries, cluster.kubeconfig, "apply", "-f", "-", stdin=json.dumps(STORAGE_CLASS))
    if count:
        kubectl(binaries, cluster.kubeconfig, "apply", "-f", "-", stdin=fake_nodes_manifest(count))
    kubectl(binaries, cluster.kubeconfig, "wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")


# kwokctl's names for the binaries it links into a cluster's state, where ours differ.
KWOKCTL_BINARY_NAMES = {"kwok-controller": "kwok"}


def _link_current_binaries(binaries: Binaries, cluster: LocalCluster) -> None:
    """A stopped cluster links the binaries it was made with; after a new pin those are gone from the
    cache, so point its links at the current build before starting it again."""
    for link in (cluster.state_dir / "bin").glob("*"):
        command = KWOKCTL_BINARY_NAMES.get(link.name, link.name)
        if not link.is_symlink() or command not in binaries.commands:
            continue
        current = binaries.path(command)
        if Path(os.readlink(link)) != current:
            link.unlink()
            link.symlink_to(current)


def _claim_real_node(cluster: LocalCluster) -> None:
    """Make this cluster the one with the machine's real node (one per machine), before it starts."""
    for marker in (cache_dir() / "clusters").glob("*/real-node"):
        if marker != cluster.real_node_marker and real_node.is_running():
            raise MissingPart(f"the real node belongs to cluster {marker.parent.name!r}: "
                              f"`iotenant dev down --name {marker.parent.name}` first (one real node per machine)")
    real_node.prepare()
    cluster.real_node_marker.parent.mkdir(parents=True, exist_ok=True)
    cluster.real_node_marker.touch()


def up(name: str = DEFAULT_NAME, nodes: int = FAKE_NODE_COUNT, with_real_node: bool = False) -> Path:
    """Start (or reuse) the named local cluster and return its kubeconfig path. ``with_real_node``: the
    cluster gets the machine's real node, whose pods run (see ``real_node``); ``nodes`` fake nodes
    run nothing and hold many tenants for scale tests."""
    binaries = ensure_binaries()
    cluster = LocalCluster(name)
    if with_real_node:
        _claim_real_node(cluster)
    if cluster.state_dir.is_dir() and is_ready(binaries, cluster):
        _ensure_nodes(binaries, cluster, nodes)
        return cluster.kubeconfig
    if cluster.state_dir.is_dir() and cluster.kubeconfig.is_file():
        try:
            _link_current_binaries(binaries, cluster)
            _kwokctl(binaries, cluster, "start", "cluster", "--wait", "60s")
            wait_ready(binaries, cluster)
        except RuntimeError as error:
            # A stopped cluster records its ports: another process may hold one by now. It is a local
            # cluster for tests and the demo, so it is made anew rather than left unusable.
            print(f"iotenant: the stopped cluster {cluster.name} did not start again ({str(error).splitlines()[0]}); "
                  "making it anew", file=sys.stderr)
            down(cluster.name)
            if with_real_node:
                _claim_real_node(cluster)
            _create(binaries, cluster, with_real_node)
    else:
        if cluster.state_dir.is_dir():
            _kwokctl(binaries, cluster, "delete", "cluster", check=False)
        _create(binaries, cluster, with_real_node)
    wait_ready(binaries, cluster)
    _ensure_nodes(binaries, cluster, nodes)
    return cluster.kubeconfig


def down(name: str = DEFAULT_NAME, keep_data: bool = False) -> list[str]:
    """Stop the processes that ``up`` started (by their recorded ids); delete the state unless asked to keep it."""
    cluster = LocalCluster(name)
    if not cluster.state_dir.is_dir():
        return []
    binaries = ensure_binaries()
    stopped = sorted(running_pids(cluster))
    if cluster.real_node_marker.is_file():
        stopped += real_node.down(binaries)
        if not keep_data:
            cluster.real_node_marker.unlink()
    _kwokctl(binaries, cluster, "stop" if keep_data else "delete", "cluster")
    deadline = time.monotonic() + 15
    while running_pids(cluster) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = running_pids(cluster)
    if survivors:
        raise RuntimeError(f"components still running after stop: {survivors}")
    if not keep_data:
        shutil.rmtree(cluster.kubeconfig.parent, ignore_errors=True)
        shutil.rmtree(cluster.state_dir, ignore_errors=True)
    return stopped


def status(name: str = DEFAULT_NAME) -> dict[str, object]:
    cluster = LocalCluster(name)
    return {
        "name": name,
        "kubeconfig": str(cluster.kubeconfig),
        "exists": cluster.state_dir.is_dir(),
        "running": running_pids(cluster),
    }


__all__ = ["LocalCluster", "MissingPart", "up", "down", "status", "kubectl", "DEFAULT_NAME"]
