"""The local control plane's binaries: built from pinned Go modules, cached per machine.

The wrapper modules in ``testbed/controlplane/`` (go.mod and go.sum in the repository) pin etcd,
Kubernetes, kwok, promtool, helm and actionlint. Each component's outputs land in a cache folder named by a
fingerprint of its pins, its linker flags and the Go toolchain, so a warm run reuses them and a change of
one pin rebuilds that component alone.
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
from dataclasses import dataclass
from pathlib import Path

# A fixed date keeps builds reproducible; it is what `kube-apiserver --version -v` reports.
BUILD_DATE = "2026-01-01T00:00:00Z"


class MissingPart(RuntimeError):
    """A part the local control plane needs is absent; the message says how to get it."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the built commands; each component has its own cache folder."""

    commands: dict[str, Path]
    kubernetes_version: str

    def path(self, command: str) -> Path:
        return self.commands[command]

    def folders(self) -> list[Path]:
        return sorted({path.parent for path in self.commands.values()})


def source_dir() -> Path:
    """The ``testbed/controlplane/`` folder of the checkout this package runs from."""
    override = os.environ.get("IOTENANT_CONTROLPLANE_SRC")
    candidate = Path(override) if override else Path(__file__).resolve().parents[1] / "controlplane"
    if not (candidate / "kubernetes" / "go.mod").is_file():
        raise MissingPart(
            f"no control-plane build files at {candidate}: run from a checkout of the iotenant "
            "repository, or set IOTENANT_CONTROLPLANE_SRC to its testbed/controlplane/ folder"
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
        raise MissingPart("the Go toolchain is missing: install Go 1.26 or newer and put `go` on PATH")
    return go


def go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


@dataclass(frozen=True)
class Component:
    """One wrapper module under ``testbed/controlplane/`` and the commands built from it."""

    folder: str
    module: str
    commands: tuple[str, ...]
    packages: tuple[str, ...]

    def go_mod(self, src: Path) -> Path:
        return src / self.folder / "go.mod"

    def version(self, src: Path) -> str:
        return required_version(self.go_mod(src), self.module)


KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")
KUBERNETES = Component(
    "kubernetes", "k8s.io/kubernetes", KUBERNETES_COMMANDS,
    tuple(f"k8s.io/kubernetes/cmd/{command}" for command in KUBERNETES_COMMANDS),
)
ETCD = Component("etcd", "go.etcd.io/etcd/server/v3", ("etcd",), ("go.etcd.io/etcd/server/v3",))
KWOK = Component("kwok", "sigs.k8s.io/kwok", ("kwok", "kwokctl"), ("sigs.k8s.io/kwok/cmd/kwok", "sigs.k8s.io/kwok/cmd/kwokctl"))
PROMETHEUS = Component(
    "prometheus", "github.com/prometheus/prometheus", ("prometheus", "promtool"),
    ("github.com/prometheus/prometheus/cmd/prometheus", "github.com/prometheus/prometheus/cmd/promtool"),
)
# The wrapper's own main package: CoreDNS with only the plugins the local cluster's DNS uses.
COREDNS = Component("coredns", "github.com/coredns/coredns", ("coredns",), ("iotenant.io/controlplane/coredns",))
HELM = Component("helm", "helm.sh/helm/v3", ("helm",), ("helm.sh/helm/v3/cmd/helm",))
ACTIONLINT = Component("actionlint", "github.com/rhysd/actionlint", ("actionlint",), ("github.com/rhysd/actionlint/cmd/actionlint",))
COMPONENTS = (KUBERNETES, ETCD, KWOK, PROMETHEUS, COREDNS, HELM, ACTIONLINT)


def _kubernetes_release(version: str) -> tuple[str, str]:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise MissingPart(f"unexpected Kubernetes version {version!r} in testbed/controlplane/kubernetes/go.mod")
    return match.group(1), match.group(2)


def prometheus_release(module_version: str) -> str:
    """Prometheus 2.N.P is published as Go module v0.N.P."""
    return "2." + module_version.removeprefix("v0.")


def ldflags(component: Component, src: Path) -> str:
    """The linker flags of one component: stripped, and version-stamped where the tool reports one."""
    flags = ["-s", "-w"]
    version = component.version(src)
    if component is KUBERNETES:
        major, minor = _kubernetes_release(version)
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {package}.gitVersion={version}",
                f"-X {package}.gitMajor={major}",
                f"-X {package}.gitMinor={minor}",
                f"-X {package}.gitTreeState=clean",
                f"-X {package}.buildDate={BUILD_DATE}",
            ]
    elif component is PROMETHEUS:
        flags.append(f"-X github.com/prometheus/common/version.Version={prometheus_release(version)}")
    elif component is HELM:
        # Without the cluster version, `helm template` assumes Kubernetes 1.20 and refuses the chart's kubeVersion.
        major, minor = _kubernetes_release(KUBERNETES.version(src))
        flags += [
            f"-X helm.sh/helm/v3/internal/version.version={version}",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major}",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}",
        ]
    elif component is ACTIONLINT:
        flags.append(f"-X github.com/rhysd/actionlint.version={version}")
    return " ".join(flags)


def fingerprint(component: Component, src: Path, go_release: str) -> str:
    """Pins, Go version and linker flags of one component: a change of any rebuilds that component alone."""
    digest = hashlib.sha256(go_release.encode())
    folder = src / component.folder
    for name in sorted(folder.glob("go.*")) + sorted(folder.glob("*.go")):
        digest.update(name.name.encode())
        digest.update(name.read_bytes())
    digest.update(ldflags(component, src).encode())
    return digest.hexdigest()[:16]


def _go_build(go: str, component: Component, src: Path, out: Path, log: Path) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local")
    target = f"{out}/" if len(component.packages) > 1 else str(out / component.commands[0])
    command = [go, "build", "-trimpath", "-ldflags", ldflags(component, src), "-o", target, *component.packages]
    with log.open("wb") as output:
        result = subprocess.run(command, cwd=src / component.folder, env=env, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise MissingPart(f"building {', '.join(component.commands)} failed ({result.returncode}); the end of {log}:\n" + "\n".join(tail))


def _ensure_component(go: str, go_release: str, component: Component, src: Path) -> Path:
    """The folder holding this component's commands, built first if this pin is not in the cache."""
    target = cache_dir() / "controlplane" / f"{component.folder}-{fingerprint(component, src, go_release)}"
    bin_dir = target / "bin"
    stamp = target / "build.json"
    if stamp.is_file() and all((bin_dir / c).is_file() for c in component.commands):
        return bin_dir
    names = ", ".join(component.commands)
    log = target.with_name(target.name + ".build.log")
    print(f"iotenant: building {names} (Go output: {log})", file=sys.stderr)
    began = time.monotonic()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    _go_build(go, component, src, staging / "bin", log)
    seconds = round(time.monotonic() - began, 1)
    stamp_text = json.dumps({"module": component.module, "version": component.version(src), "go": go_release, "seconds": seconds}, indent=2)
    (staging / "build.json").write_text(stamp_text)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"iotenant: {names} built in {seconds:.0f} s into {bin_dir}", file=sys.stderr)
    return bin_dir


def ensure_binaries() -> Binaries:
    """Return the cached binaries, building first each component whose pin has not been built here."""
    src = source_dir()
    go = go_executable()
    go_release = go_version(go)
    commands: dict[str, Path] = {}
    for component in COMPONENTS:
        bin_dir = _ensure_component(go, go_release, component, src)
        commands.update({command: bin_dir / command for command in component.commands})
    kubernetes_version = KUBERNETES.version(src)
    reported = subprocess.run([str(commands["kube-apiserver"]), "--version"], check=True, capture_output=True, text=True).stdout.strip()
    if kubernetes_version not in reported:
        raise MissingPart(f"kube-apiserver reports {reported!r}, expected {kubernetes_version}: version stamping failed")
    return Binaries(commands=commands, kubernetes_version=kubernetes_version)
