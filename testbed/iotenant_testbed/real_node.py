"""A real node for the local cluster: containerd and runc from Debian, the kubelet and kube-proxy from
the pinned Kubernetes module, the cluster DNS, the pod network, the stack's images, and local
volumes. Its pods really run. One per machine (the kubelet's ports are fixed), and it needs root.

``prepare`` runs before the control plane starts (the bridge whose address the apiserver
advertises); ``up`` starts the node against the running control plane; ``down`` stops it and puts
the host back as ``node_host`` recorded it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from iotenant_testbed import cluster_dns, containerd_runtime, kube_proxy, kubelet, node_host, node_identity, node_network
from iotenant_testbed.binaries import Binaries, cache_dir
from iotenant_testbed.kubectl import kubectl
from iotenant_testbed.image_recipes import PAUSE_REFERENCE
from iotenant_testbed.node_images import build_images
from iotenant_testbed.node_processes import Daemon

NODE_NAME = "iotenant-node"
# Local volumes made ahead for PersistentVolumeClaims: the kubelet gives them the pod's fsGroup.
VOLUME_COUNT = 24
VOLUME_CAPACITY = "100Gi"
STORAGE_CLASS_NAME = "standard"
SYSCTLS_SET = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1",
               "net/bridge/bridge-nf-call-ip6tables": "1"}


def folder() -> Path:
    return cache_dir() / "node"


def host_record() -> node_host.HostRecord:
    return node_host.HostRecord(folder() / "host-before.json")


def daemons() -> list[Daemon]:
    """The node's daemons, in the order they stop."""
    return [Daemon(name, folder()) for name in ("cluster-dns", "kube-proxy", "kubelet")] + \
        [containerd_runtime.daemon(folder())]


def apiserver_arguments(pki: Path) -> dict[str, str]:
    """What the apiserver needs for a real node: reachable from pods at the node's address (the guard
    keeps it from other machines) and a client identity for the kubelet (logs, exec)."""
    return {
        "bind-address": "0.0.0.0",
        "advertise-address": node_network.NODE_ADDRESS,
        "kubelet-client-certificate": str(pki / "admin.crt"),
        "kubelet-client-key": str(pki / "admin.key"),
        "kubelet-preferred-address-types": "InternalIP",
    }


def certificate_names() -> list[str]:
    """Names the apiserver's certificate must carry for pods: the node's address and the Service's."""
    return [node_network.NODE_ADDRESS, node_network.KUBERNETES_SERVICE_ADDRESS]


def prepare() -> None:
    """Before the control plane: check the host, record it, and make the bridge."""
    node_host.check_host()
    node_host.record(host_record())
    node_network.create_bridge()
    for name, value in SYSCTLS_SET.items():
        node_host.set_sysctl(name, value)


def _apply(binaries: Binaries, kubeconfig: Path, manifests: list[dict[str, object]]) -> None:
    kubectl(binaries, kubeconfig, "apply", "--server-side", "--force-conflicts", "--field-manager=iotenant-testbed",
            "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))


def storage(node_folder: Path) -> list[dict[str, object]]:
    """A default StorageClass of local volumes on this node, bound when a pod needs one."""
    manifests: list[dict[str, object]] = [{
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS_NAME, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }]
    for index in range(1, VOLUME_COUNT + 1):
        path = volume_folder(node_folder, index)
        manifests.append({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{NODE_NAME}-volume-{index:02d}", "labels": {"iotenant.io/node-volume": "true"}},
            "spec": {
                "capacity": {"storage": VOLUME_CAPACITY},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS_NAME,
                "local": {"path": str(path)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}},
            },
        })
    return manifests


def _prepare_volumes(binaries: Binaries, kubeconfig: Path, node_folder: Path) -> None:
    """Empty every volume folder this cluster does not use: a volume whose claim is gone (local volumes
    have no deleter), and a folder whose volume this cluster has not made yet (it may hold another,
    deleted, cluster's data). Both are then offered anew."""
    listed = json.loads(kubectl(binaries, kubeconfig, "get", "pv", "-l", "iotenant.io/node-volume=true", "-o", "json").stdout)
    in_use = set()
    for volume in listed["items"]:
        if volume["status"].get("phase") in ("Released", "Failed"):
            kubectl(binaries, kubeconfig, "delete", "pv", volume["metadata"]["name"], "--wait=true")
        else:
            in_use.add(volume["spec"]["local"]["path"])
    for index in range(1, VOLUME_COUNT + 1):
        path = volume_folder(node_folder, index)
        if str(path) not in in_use:
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)


def volume_folder(node_folder: Path, index: int) -> Path:
    return node_folder / "volumes" / f"volume-{index:02d}"


def _start_containerd(node_folder: Path) -> Path:
    runtime_folder = node_folder / "containerd"
    cni_conf = node_folder / "cni" / "net.d"
    node_network.write_cni_configuration(cni_conf, node_folder / "cni" / "ipam")
    containerd_runtime.start(node_folder, runtime_folder, PAUSE_REFERENCE, cni_conf)
    return runtime_folder


def _import_images(binaries: Binaries, runtime_folder: Path) -> None:
    began = time.monotonic()
    imported = [image.reference for image in build_images(binaries)
                if containerd_runtime.import_image(runtime_folder, image.archive)]
    if imported:
        print(f"iotenant: imported {', '.join(imported)} in {time.monotonic() - began:.0f} s", file=sys.stderr)


def _start(name: str, argv: list[str], config: tuple[Path, dict[str, object]] | None = None) -> None:
    if config is not None:
        path, content = config
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(content, indent=2)
        # kube-proxy exits when its configuration file is written, even with the same content.
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    Daemon(name, folder()).start(argv)


def _wait_node_ready(binaries: Binaries, kubeconfig: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = kubectl(binaries, kubeconfig, "get", "node", NODE_NAME, "-o",
                        "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        if probe.stdout.strip() == "True":
            return
        for daemon in daemons():
            if daemon.pid() is None:
                raise RuntimeError(f"the node's {daemon.name} stopped; its log ends:\n{daemon.log_tail()}")
        time.sleep(1)
    raise RuntimeError(f"node {NODE_NAME} was not Ready within {timeout:.0f} s; the kubelet's log ends:\n"
                       f"{Daemon('kubelet', folder()).log_tail()}")


def _wait_cluster_dns_ready(timeout: float = 30.0) -> None:
    dns = Daemon("cluster-dns", folder())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and dns.pid() is not None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{cluster_dns.READY_PORT}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the cluster DNS is not ready; its log ends:\n{dns.log_tail()}")


def up(binaries: Binaries, kubeconfig: Path, pki: Path) -> None:
    """Start (or keep) the node's daemons against the running control plane; wait until it is Ready."""
    node_folder = folder()
    server = _server(kubeconfig)
    node_network.guard(int(urlsplit(server).port or 443))
    node_network.route_services()
    runtime_folder = _start_containerd(node_folder)
    _import_images(binaries, runtime_folder)
    ca_cert, ca_key = pki / "ca.crt", pki / "ca.key"
    identities = node_folder / "identities"
    kubelet_folder = node_folder / "kubelet"
    kubelet_kubeconfig = node_identity.write_kubeconfig(identities / "kubelet.kubeconfig", node_identity.node_identity(NODE_NAME), server, ca_cert, ca_key)
    proxy_kubeconfig = node_identity.write_kubeconfig(identities / "kube-proxy.kubeconfig", node_identity.KUBE_PROXY, server, ca_cert, ca_key)
    dns_kubeconfig = node_identity.write_kubeconfig(identities / "cluster-dns.kubeconfig", node_identity.CLUSTER_DNS, server, ca_cert, ca_key)
    _apply(binaries, kubeconfig, node_identity.cluster_dns_role())
    kubelet_config = kubelet_folder / "config.json"
    _start("kubelet",
           kubelet.command(binaries.path("kubelet"), kubelet_folder, kubelet_config, kubelet_kubeconfig, NODE_NAME),
           (kubelet_config, kubelet.configuration(kubelet_folder, containerd_runtime.socket_path(runtime_folder), ca_cert)))
    proxy_config = node_folder / "kube-proxy" / "config.json"
    _start("kube-proxy", kube_proxy.command(binaries.path("kube-proxy"), proxy_config),
           (proxy_config, kube_proxy.configuration(proxy_kubeconfig, NODE_NAME)))
    corefile = node_folder / "cluster-dns" / "Corefile"
    corefile.parent.mkdir(parents=True, exist_ok=True)
    corefile.write_text(cluster_dns.corefile(dns_kubeconfig))
    _start("cluster-dns", cluster_dns.command(binaries.path("coredns"), corefile))
    _wait_node_ready(binaries, kubeconfig)
    _wait_cluster_dns_ready()
    _prepare_volumes(binaries, kubeconfig, node_folder)
    _apply(binaries, kubeconfig, storage(node_folder))


def _server(kubeconfig: Path) -> str:
    """The apiserver's address as the cluster's kubeconfig names it (the node's parts run here too)."""
    return str(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"])


def _remove_pods(runtime_folder: Path) -> None:
    """Kill and delete every container task so that no container, mount or network namespace outlives the node."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tasks = containerd_runtime.ctr(runtime_folder, "tasks", "list", "--quiet", check=False).stdout.split()
        if not tasks:
            return
        for task in tasks:
            containerd_runtime.ctr(runtime_folder, "tasks", "kill", "--signal", "SIGKILL", task, check=False)
            containerd_runtime.ctr(runtime_folder, "tasks", "delete", "--force", task, check=False)
        time.sleep(0.2)


def down(binaries: Binaries) -> list[str]:
    """Stop the node's daemons and put the host back; return what was stopped, and fail naming what
    could not be put back."""
    node_folder = folder()
    if not node_folder.is_dir():
        return []
    stopped = []
    for daemon in daemons():
        if daemon.name == "containerd" and daemon.pid() is not None:
            _remove_pods(node_folder / "containerd")
        if daemon.stop():
            stopped.append(daemon.name)
    subprocess.run(kube_proxy.cleanup_command(binaries.path("kube-proxy")), capture_output=True)
    # Addresses of pods that are gone with their network namespaces.
    shutil.rmtree(node_folder / "cni" / "ipam", ignore_errors=True)
    node_network.delete_bridge()
    left = node_host.restore(host_record(), node_folder)
    if left:
        raise RuntimeError(f"the real node stopped, but these host changes remain: {'; '.join(left)}")
    return stopped


def is_running() -> bool:
    return any(daemon.pid() is not None for daemon in daemons())
