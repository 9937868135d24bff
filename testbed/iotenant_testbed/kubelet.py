"""The real node's kubelet: its configuration for this machine (cgroup v1 with cgroupfs, no systemd,
its folders moved under the node's own folder) and its command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iotenant_testbed.node_network import NODE_ADDRESS, POD_CIDR

KUBELET_PORT = 10250
HEALTHZ_PORT = 10248
CLUSTER_DOMAIN = "cluster.local"


def configuration(folder: Path, runtime_socket: Path, client_ca: Path) -> dict[str, Any]:
    """KubeletConfiguration: callers authenticated by the cluster's CA and authorised by the apiserver;
    images are never collected (they cannot be pulled again); pods log under the node's folder."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_ADDRESS,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": HEALTHZ_PORT,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "seccompDefault": True,
        "podCIDR": POD_CIDR,
        "clusterDNS": [NODE_ADDRESS],
        "clusterDomain": CLUSTER_DOMAIN,
        # Pods resolve cluster names only; nothing is forwarded to the host's resolver.
        "resolvConf": "",
        "podLogsDir": str(folder / "pod-logs"),
        "volumePluginDir": str(folder / "volume-plugins"),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "876000h",
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "serializeImagePulls": False,
        "maxPods": 110,
        "shutdownGracePeriod": "0s",
    }


def command(binary: Path, folder: Path, config_file: Path, kubeconfig: Path, node_name: str) -> list[str]:
    return [
        str(binary),
        f"--config={config_file}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={folder / 'root'}",
        f"--cert-dir={folder / 'pki'}",
        f"--hostname-override={node_name}",
        f"--node-ip={NODE_ADDRESS}",
        "--node-labels=iotenant.io/node=real",
        "--v=1",
    ]
