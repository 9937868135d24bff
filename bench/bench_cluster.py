"""A fresh local cluster for one benchmark: the CRDs installed and the operator namespace made."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from iotenant_testbed import cluster as devcluster
from iotenant_testbed.binaries import Binaries

REPO = Path(__file__).resolve().parents[1]


# A starter tenant's pods request about half a CPU, and a fake node offers 64: room for 128 tenants a node.
TENANTS_PER_NODE = 100


def fresh_cluster(name: str, *extra_manifests: Path, tenants: int = 0) -> tuple[Path, Binaries]:
    """(kubeconfig, binaries) of a new cluster ``name`` with crds/ and ``extra_manifests`` applied, and fake
    nodes enough for the pods of ``tenants`` starter tenants."""
    devcluster.down(name)
    kubeconfig = devcluster.up(name, nodes=max(devcluster.FAKE_NODE_COUNT, 1 + tenants // TENANTS_PER_NODE))
    binaries = devcluster.ensure_binaries()
    files = [argument for path in (REPO / "crds", *extra_manifests) for argument in ("-f", str(path))]
    devcluster.kubectl(binaries, kubeconfig, "apply", "--server-side", *files)
    devcluster.kubectl(binaries, kubeconfig, "wait", "--for=condition=Established", "crd", "--all")
    devcluster.kubectl(binaries, kubeconfig, "create", "namespace", "iotenant-system")
    return kubeconfig, binaries


def stop(operator: "subprocess.Popen[bytes]", name: str) -> None:
    """Stop the benchmark's operator (as Ctrl-C does), then the cluster."""
    operator.send_signal(signal.SIGINT)
    operator.wait(timeout=60)
    devcluster.down(name)


def pause_after_poll(took: float, shortest: float) -> None:
    """Sleep after a poll that took ``took`` seconds: at least ``shortest``, and four times the poll, so that
    polling takes at most a fifth of a core (listing a thousand tenants' objects costs this process
    seconds of CPU that the cluster under test, on the same cores, would lack)."""
    time.sleep(max(shortest, 4 * took))
