"""The local control plane's binaries: built from pinned Go modules, cached per machine.

The wrapper modules in ``controlplane/`` (go.mod and go.sum in the repository) pin etcd,
Kubernetes, kwok, promtool and helm. A build's outputs land in a cache folder named by a fingerprint of those
files and of the Go toolchain, so a warm run reuses them and a change of pin rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ETCD_COMMANDS = ("etcd",)
KWOK_COMMANDS = ("kwok", "kwokctl")
PROMETHEUS_COMMANDS = ("promtool",)
HELM_COMMANDS = ("helm",)
ALL_COMMANDS = KUBERNETES_COMMANDS + ETCD_COMMANDS + KWOK_COMMANDS + PROMETHEUS_COMMANDS + HELM_COMMANDS

# A fixed date keeps builds reproducible; it is what `kube-apiserver --version -v` reports.
BUILD_DATE = "2026-01-01T00:00:00Z"


class MissingPart(RuntimeError):
    """A part the local control plane needs is absent; the message says how to get it."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the built commands, all in one folder."""

    bin_dir: Path
    kubernetes_version: str

    def path(self, command: str) -> Path:
        return self.bin_dir / command


def source_dir() -> Path:
    """The ``controlplane/`` folder of the repository this package runs from."""
    override = os.environ.get("IOTENANT_CONTROLPLANE_SRC")
    candidate = Path(override) if override else Path(__file__).resolve().parents[3] / "controlplane"
    if not (candidate / "kubernetes" / "go.mod").is_file():
        raise MissingPart(
            f"no control-plane build files at {candidate}: run from a checkout of the iotenant "
            "repository, or set IOTENANT_CONTROLPLANE_SRC to its controlplane/ folder"
        )
    return candidate


def cache_dir() -> Path:
    """Where built binaries and local clusters live, outside the work tree."""
    override = os.environ.get("IOTENANT_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iotenant"


def required_version(go_mod: Path, module: str) -> str:
    """The version of ``module`` that a wrapper go.mod requires."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    if not match:
        raise MissingPart(f"{go_mod} does not require {module}")
    return match.group(1)


def go_executable() -> str:
    go = shutil.which("go")
    if go is None:
        raise MissingPart("the Go toolchain is missing: install Go 1.25 or newer and put `go` on PATH")
    return go


def go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def fingerprint(src: Path, go_release: str) -> str:
    digest = hashlib.sha256(go_release.encode())
    for name in sorted(src.glob("*/go.*")) + sorted(src.glob("*/tools.go")):
        digest.update(str(name.relative_to(src)).encode())
        digest.update(name.read_bytes())
    digest.update(BUILD_DATE.encode())
    return digest.hexdigest()[:16]


def kubernetes_ldflags(version: str) -> str:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise MissingPart(f"unexpected Kubernetes version {version!r} in controlplane/kubernetes/go.mod")
    major, minor = match.group(1), match.group(2)
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate={BUILD_DATE}",
        ]
    return " ".join(flags)


BUILD_STEPS = 5


@dataclass
class BuildProgress:
    """One line per component with its time; Go's own output (module downloads) goes to ``log``."""

    log: Path
    started: float = field(default_factory=time.monotonic)
    step: int = 0


def _go_build(go: str, module_dir: Path, out: Path, packages: list[str], names: list[str], ldflags: str,
              progress: BuildProgress) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local")
    target = f"{out}/" if len(packages) > 1 else str(out)
    command = [go, "build", "-trimpath", "-ldflags", ldflags, "-o", target, *packages]
    progress.step += 1
    began = time.monotonic()
    print(f"iotenant: [{progress.step}/{BUILD_STEPS}] building {', '.join(names)} (Go output: {progress.log})", file=sys.stderr)
    with progress.log.open("ab") as log:
        result = subprocess.run(command, cwd=module_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = progress.log.read_text(errors="replace").splitlines()[-30:]
        raise MissingPart(f"building {', '.join(names)} failed ({result.returncode}); the end of {progress.log}:\n" + "\n".join(tail))
    print(f"iotenant: [{progress.step}/{BUILD_STEPS}] {', '.join(names)} built in {time.monotonic() - began:.0f} s "
          f"({time.monotonic() - progress.started:.0f} s so far)", file=sys.stderr)


def ensure_binaries(log_progress: bool = True) -> Binaries:
    """Return the cached binaries, building them first if this pin has not been built here."""
    src = source_dir()
    go = go_executable()
    kubernetes_version = required_version(src / "kubernetes" / "go.mod", "k8s.io/kubernetes")
    target = cache_dir() / "controlplane" / fingerprint(src, go_version(go))
    bin_dir = target / "bin"
    stamp = target / "build.json"
    binaries = Binaries(bin_dir=bin_dir, kubernetes_version=kubernetes_version)
    if stamp.is_file() and all(binaries.path(c).is_file() for c in ALL_COMMANDS):
        return binaries

    started = time.monotonic()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    progress = BuildProgress(log=target.with_name(target.name + ".build.log"))
    progress.log.write_text("")
    _go_build(
        go,
        src / "kubernetes",
        staging / "bin",
        [f"k8s.io/kubernetes/cmd/{c}" for c in KUBERNETES_COMMANDS],
        list(KUBERNETES_COMMANDS),
        kubernetes_ldflags(kubernetes_version),
        progress,
    )
    _go_build(go, src / "etcd", staging / "bin" / "etcd", ["go.etcd.io/etcd/server/v3"], ["etcd"], "-s -w", progress)
    _go_build(
        go, src / "kwok", staging / "bin", [f"sigs.k8s.io/kwok/cmd/{c}" for c in KWOK_COMMANDS], list(KWOK_COMMANDS), "-s -w", progress
    )
    prometheus_module = required_version(src / "prometheus" / "go.mod", "github.com/prometheus/prometheus")
    # Prometheus 2.N.P is published as Go module v0.N.P.
    prometheus_version = "2." + prometheus_module.removeprefix("v0.")
    _go_build(
        go, src / "prometheus", staging / "bin" / "promtool", ["github.com/prometheus/prometheus/cmd/promtool"], ["promtool"],
        f"-s -w -X github.com/prometheus/common/version.Version={prometheus_version}", progress,
    )
    helm_version = required_version(src / "helm" / "go.mod", "helm.sh/helm/v3")
    _go_build(
        go, src / "helm", staging / "bin" / "helm", ["helm.sh/helm/v3/cmd/helm"], ["helm"],
        f"-s -w -X helm.sh/helm/v3/internal/version.version={helm_version}", progress,
    )
    reported = subprocess.run(
        [str(staging / "bin" / "kube-apiserver"), "--version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if kubernetes_version not in reported:
        raise MissingPart(f"kube-apiserver reports {reported!r}, expected {kubernetes_version}: version stamping failed")
    (staging / "build.json").write_text(
        json.dumps(
            {
                "kubernetes": kubernetes_version,
                "etcd": required_version(src / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3"),
                "kwok": required_version(src / "kwok" / "go.mod", "sigs.k8s.io/kwok"),
                "prometheus": prometheus_version,
                "helm": helm_version,
                "go": go_version(go),
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    if log_progress:
        print(f"iotenant: control plane built in {time.monotonic() - started:.0f} s into {bin_dir}", file=sys.stderr)
    return binaries
