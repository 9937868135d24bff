"""What the real node changes on the host, recorded before it starts and put back when it stops.

The kubelet, kube-proxy and the CNI plugins change kernel settings, add iptables chains, create
folders and cgroups, and mount; ``record`` notes the host as it was, ``restore`` undoes each change
the node made and leaves alone what was there before. Changing the host needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Kernel settings the kubelet, kube-proxy and the CNI bridge set.
SYSCTLS = (
    "kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables", "net/ipv4/conf/all/route_localnet",
)
# Folders whose paths the kubelet, containerd and the CNI plugins hard-code.
HOST_PATHS = (Path("/var/lib/kubelet"), Path("/usr/libexec/kubernetes"), Path("/var/lib/cni"), Path("/run/containerd"))
# The cgroups the kubelet (QoS classes) and containerd make at each hierarchy's root.
CGROUPS = ("kubepods", "default")
# The prefixes of the iptables chains the kubelet, kube-proxy, the CNI plugins and the node's guard make.
CHAIN_PREFIXES = ("KUBE-", "CNI-", "IOTENANT-")
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class HostNotReady(RuntimeError):
    """The host cannot take a real node: not root, or another node's rules are already there."""


@dataclass(frozen=True)
class HostRecord:
    """The host's state before the node started, kept in the node's folder until the node stops."""

    path: Path

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, object]:
        return json.loads(self.path.read_text())


def _sysctl(name: str) -> Path:
    return Path("/proc/sys") / name


def _cgroup_hierarchies() -> list[Path]:
    return [path for path in CGROUP_ROOT.iterdir() if path.is_dir() and not path.is_symlink()] if CGROUP_ROOT.is_dir() else []


def iptables_chains(command: str, table: str) -> list[str]:
    result = subprocess.run([command, "-w", "-t", table, "-S"], capture_output=True, text=True)
    return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("-N ")]


def node_chains() -> list[str]:
    return sorted({chain for command in IPTABLES if shutil.which(command) for table in TABLES
                   for chain in iptables_chains(command, table) if chain.startswith(CHAIN_PREFIXES)})


def check_host() -> None:
    """Fail with what to do when this host cannot take the real node."""
    if os.geteuid() != 0:
        raise HostNotReady("the real node needs root: containerd, the kubelet and the pod network change the host")
    for tool in ("iptables", "ip", "containerd", "runc"):
        if shutil.which(tool) is None:
            raise HostNotReady(f"{tool} is missing: scripts/install-prerequisites.sh installs the real node's Debian packages")
    if not Path("/usr/lib/cni/bridge").is_file():
        raise HostNotReady("the CNI plugins are missing: apt-get install containernetworking-plugins")


def record(target: HostRecord) -> None:
    """Note the host as it is, once: a node restarted after a crash keeps the first record."""
    if target.exists():
        return
    chains = node_chains()
    if chains:
        raise HostNotReady(f"iptables chains of another node are on this host ({', '.join(chains[:5])}): "
                           "one node per machine; stop the other one first")
    state = {
        "sysctls": {name: _sysctl(name).read_text().strip() for name in SYSCTLS if _sysctl(name).is_file()},
        "paths": [str(path) for path in HOST_PATHS if path.exists()],
        "cgroups": [str(hierarchy / name) for hierarchy in _cgroup_hierarchies() for name in CGROUPS
                    if (hierarchy / name).is_dir()],
    }
    target.path.parent.mkdir(parents=True, exist_ok=True)
    target.path.write_text(json.dumps(state, indent=2))


def set_sysctl(name: str, value: str) -> None:
    _sysctl(name).write_text(value)


def _remove_chains() -> None:
    for command in IPTABLES:
        if shutil.which(command) is None:
            continue
        for table in TABLES:
            rules = subprocess.run([command, "-w", "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
            for rule in rules:
                words = rule.split()
                if words[:1] == ["-A"] and not words[1].startswith(CHAIN_PREFIXES) and \
                        any(word.startswith(CHAIN_PREFIXES) for word in words[2:]):
                    subprocess.run([command, "-w", "-t", table, "-D", *words[1:]], capture_output=True)
            ours = [chain for chain in iptables_chains(command, table) if chain.startswith(CHAIN_PREFIXES)]
            for chain in ours:
                subprocess.run([command, "-w", "-t", table, "-F", chain], capture_output=True)
            for chain in ours:
                subprocess.run([command, "-w", "-t", table, "-X", chain], capture_output=True)


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, deepest first."""
    prefix = str(folder.resolve())
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(set(points), key=lambda point: point.count("/"), reverse=True)


def unmount_all(folder: Path) -> None:
    for point in mounts_under(folder):
        subprocess.run(["umount", "--lazy", point], capture_output=True)


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def restore(target: HostRecord, node_folder: Path) -> list[str]:
    """Undo what the node changed (its daemons stopped first); return what could not be put back."""
    if not target.exists():
        return []
    state = target.load()
    left: list[str] = []
    unmount_all(node_folder)
    _remove_chains()
    if node_chains():
        left.append(f"iptables chains {node_chains()}")
    for name, value in dict(state["sysctls"]).items():  # type: ignore[arg-type]
        try:
            set_sysctl(name, str(value))
        except OSError as error:
            left.append(f"sysctl {name}: {error}")
    kept_cgroups = set(state["cgroups"])  # type: ignore[arg-type]
    for hierarchy in _cgroup_hierarchies():
        for name in CGROUPS:
            path = hierarchy / name
            if str(path) not in kept_cgroups:
                _remove_cgroup(path)
                if path.is_dir():
                    left.append(f"cgroup {path}")
    kept_paths = set(state["paths"])  # type: ignore[arg-type]
    for path in HOST_PATHS:
        if str(path) not in kept_paths and path.exists():
            unmount_all(path)
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                left.append(f"folder {path}")
    if not left:
        target.path.unlink()
    return left
