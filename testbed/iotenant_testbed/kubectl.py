"""The pinned kubectl, run against one kubeconfig: the local cluster, its real node and the demo use it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from iotenant_testbed.binaries import Binaries


def kubectl(binaries: Binaries, kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pinned kubectl against ``kubeconfig``; fail with its message unless ``check`` is off."""
    result = subprocess.run(
        [str(binaries.path("kubectl")), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result
