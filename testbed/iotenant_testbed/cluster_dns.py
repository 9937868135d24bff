"""The local cluster's DNS: CoreDNS on the real node's address, answering for Services and pods of
the cluster domain and for nothing else (nothing is forwarded beyond the machine)."""

from __future__ import annotations

from pathlib import Path

from iotenant_testbed.kubelet import CLUSTER_DOMAIN
from iotenant_testbed.node_network import NODE_ADDRESS

DNS_PORT = 53
HEALTH_PORT = 18080
READY_PORT = 18181


def corefile(kubeconfig: Path) -> str:
    """CoreDNS's configuration (its own format, a handful of directives)."""
    return "\n".join([
        f".:{DNS_PORT} {{",
        f"    bind {NODE_ADDRESS}",
        "    errors",
        f"    health 127.0.0.1:{HEALTH_PORT}",
        f"    ready 127.0.0.1:{READY_PORT}",
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
        f"        kubeconfig {kubeconfig}",
        "        pods insecure",
        "        ttl 5",
        "    }",
        "    cache 5",
        "    loadbalance",
        "}",
        "",
    ])


def command(binary: Path, corefile_path: Path) -> list[str]:
    return [str(binary), "-conf", str(corefile_path)]
