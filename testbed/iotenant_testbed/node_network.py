"""The real node's pod network: a Linux bridge with the pods' gateway address, the CNI configuration
that puts each pod on it, and a guard that keeps pod traffic on this machine.

The bridge's address is the node's address too: the kubelet, kube-proxy's NodePorts and the
cluster DNS listen there, and the apiserver advertises it so pods reach it through the
``kubernetes`` Service. The guard rejects anything a pod sends out of another interface, and
anything that reaches the apiserver from outside this machine.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

BRIDGE = "iotenant0"
POD_CIDR = "10.244.0.0/24"
NODE_ADDRESS = str(next(ipaddress.ip_network(POD_CIDR).hosts()))
# The cluster's Service addresses; the first is the ``kubernetes`` Service's.
SERVICE_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_ADDRESS = str(next(ipaddress.ip_network(SERVICE_RANGE).hosts()))
NETWORK_NAME = "iotenant-pods"
GUARD_FORWARD = "IOTENANT-POD-EGRESS"
GUARD_INPUT = "IOTENANT-APISERVER"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def bridge_exists() -> bool:
    return _ip("link", "show", BRIDGE, check=False).returncode == 0


def create_bridge() -> None:
    """The bridge with the node's address, made before the apiserver starts so it can advertise it."""
    if not bridge_exists():
        _ip("link", "add", BRIDGE, "type", "bridge")
    prefix = ipaddress.ip_network(POD_CIDR).prefixlen
    if NODE_ADDRESS not in _ip("-o", "addr", "show", "dev", BRIDGE).stdout:
        _ip("addr", "add", f"{NODE_ADDRESS}/{prefix}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def delete_bridge() -> None:
    if bridge_exists():
        _ip("link", "delete", BRIDGE)


def route_services() -> None:
    """Service addresses go to the bridge, where kube-proxy's rules answer for them."""
    _ip("route", "replace", SERVICE_RANGE, "dev", BRIDGE, "src", NODE_ADDRESS)


def guard(apiserver_port: int) -> None:
    """Pods reach nothing beyond this machine; the apiserver is reachable from here and from pods only."""
    for chain in (GUARD_FORWARD, GUARD_INPUT):
        if _iptables("-S", chain, check=False).returncode != 0:
            _iptables("-N", chain)
        _iptables("-F", chain)
    _iptables("-A", GUARD_FORWARD, "-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN")
    _iptables("-A", GUARD_FORWARD, "-i", BRIDGE, "-j", "REJECT", "--reject-with", "icmp-net-prohibited")
    _iptables("-A", GUARD_INPUT, "-i", "lo", "-j", "RETURN")
    _iptables("-A", GUARD_INPUT, "-i", BRIDGE, "-j", "RETURN")
    _iptables("-A", GUARD_INPUT, "-p", "tcp", "--dport", str(apiserver_port), "-j", "DROP")
    for builtin, chain in (("FORWARD", GUARD_FORWARD), ("INPUT", GUARD_INPUT)):
        if _iptables("-C", builtin, "-j", chain, check=False).returncode != 0:
            _iptables("-I", builtin, "1", "-j", chain)


def cni_configuration(ipam_dir: Path) -> dict[str, object]:
    """The pods' network: the bridge as their gateway, hairpin for a pod reaching itself through a
    Service, host ports through portmap; no masquerading, since nothing leaves the machine."""
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_ADDRESS}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_cni_configuration(conf_dir: Path, ipam_dir: Path) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-iotenant.conflist").write_text(json.dumps(cni_configuration(ipam_dir), indent=2))
