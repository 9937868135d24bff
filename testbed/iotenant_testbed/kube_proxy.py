"""The real node's kube-proxy: Services in iptables mode, NodePorts on the node's address only, and
the host's conntrack settings left as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iotenant_testbed.node_network import NODE_ADDRESS, POD_CIDR

HEALTHZ_PORT = 10256


def configuration(kubeconfig: Path, node_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "clusterCIDR": POD_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{NODE_ADDRESS}/32"],
        # Zero leaves the host's conntrack table size and timeouts alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def command(binary: Path, config_file: Path) -> list[str]:
    return [str(binary), f"--config={config_file}", "--v=1"]


def cleanup_command(binary: Path) -> list[str]:
    """kube-proxy's own removal of every rule it made."""
    return [str(binary), "--cleanup"]
