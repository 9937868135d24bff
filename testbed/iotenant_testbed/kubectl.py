"""The test bed's command-line tools (kubectl, kwokctl), run with a failure that quotes their own message."""

from __future__ import annotations

import subprocess
from pathlib import Path

from iotenant_testbed.binaries import Binaries


def run_tool(argv: list[str], env: dict[str, str] | None = None, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one tool; unless ``check`` is off, a non-zero exit raises with the end of what it printed."""
    result = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        name = Path(argv[0]).name
        raise RuntimeError(f"{name} {' '.join(argv[1:])} failed ({result.returncode}):\n{result.stderr.strip()[-4000:]}")
    return result


def kubectl(binaries: Binaries, kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pinned kubectl against ``kubeconfig``."""
    return run_tool([str(binaries.path("kubectl")), "--kubeconfig", str(kubeconfig), *args], stdin=stdin, check=check)
