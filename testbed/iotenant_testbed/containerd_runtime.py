"""Debian's containerd as the real node's container runtime: its configuration, and images imported
into the namespace the kubelet uses.

Settings this machine needs: ``restrict_oom_score_adj`` (the process may not lower oom_score_adj,
so a sandbox asking for -998 would fail), a local sandbox image (no registry), network namespaces
under containerd's own state folder, and cgroupfs (there is no systemd).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from iotenant_testbed.node_processes import Daemon

KUBERNETES_NAMESPACE = "k8s.io"
CNI_BIN_DIR = "/usr/lib/cni"


def configuration(folder: Path, sandbox_image: str, cni_conf_dir: Path) -> str:
    """containerd's config.toml (version 2) for the node. TOML is written here as its few lines."""
    settings = {
        "version": 2,
        "root": str(folder / "root"),
        "state": str(folder / "state"),
    }
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in settings.items()]
    lines += [
        "",
        "[grpc]",
        f'  address = "{socket_path(folder)}"',
        "",
        '[plugins."io.containerd.grpc.v1.cri"]',
        f'  sandbox_image = "{sandbox_image}"',
        "  restrict_oom_score_adj = true",
        "  netns_mounts_under_state_dir = true",
        "  enable_selinux = false",
        '[plugins."io.containerd.grpc.v1.cri".containerd]',
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '  runtime_type = "io.containerd.runc.v2"',
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        "  SystemdCgroup = false",
        '[plugins."io.containerd.grpc.v1.cri".cni]',
        f'  bin_dir = "{CNI_BIN_DIR}"',
        f'  conf_dir = "{cni_conf_dir}"',
        "  max_conf_num = 1",
        "",
    ]
    return "\n".join(lines)


def socket_path(folder: Path) -> Path:
    return folder / "containerd.sock"


def daemon(node_folder: Path) -> Daemon:
    return Daemon("containerd", node_folder)


def start(node_folder: Path, folder: Path, sandbox_image: str, cni_conf_dir: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text(configuration(folder, sandbox_image, cni_conf_dir))
    runtime = daemon(node_folder)
    runtime.start(["containerd", "--config", str(config)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ctr(folder, "version", check=False).returncode == 0:
            return
        if runtime.pid() is None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"containerd did not start; its log ends:\n{runtime.log_tail()}")


def ctr(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ctr", "--address", str(socket_path(folder)), "--namespace", KUBERNETES_NAMESPACE, *args],
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def import_image(folder: Path, archive: Path) -> bool:
    """Import one image archive unless this runtime has it already (archives are named by content);
    the kubelet finds it under the reference it was built with. True if it was imported now."""
    stamp = folder / "imported" / archive.name
    if stamp.is_file():
        return False
    ctr(folder, "images", "import", str(archive))
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return True
