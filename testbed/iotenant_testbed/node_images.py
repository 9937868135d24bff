"""The images a tenant's stack runs, built here without a registry under the references it renders.

Each image is made from its recipe (``image_recipes``): Debian packages unpacked by mmdebstrap into a
root filesystem of the suite that carries the pinned version, the Prometheus server from the Go
module that also gives promtool, and our own wheel installed by ``scripts/install-wheel.sh`` as the
Dockerfile installs it. A build is cached by the content of its recipe; an image whose Debian suite
no longer carries the pinned version fails loudly instead of shipping another version under the
pinned name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotenant import settings
from iotenant.render.monitoring import PROMETHEUS_UID
from iotenant_testbed.binaries import Binaries, MissingPart, cache_dir, source_dir
from iotenant_testbed.debian_sources import apt_options, suite_sources
from iotenant_testbed.image_archive import layer_from_files, write_archive
from iotenant_testbed.image_recipes import (
    DPKG_EXCLUDES, PAUSE_REFERENCE, PAUSE_SOURCE, PROMETHEUS_CONFIG, PROMETHEUS_CONTAINER, DebianImage, broker_image,
    database_image, iotenant_image,
)


def _fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _debian_fingerprint(image: DebianImage) -> str:
    files = {path: (hashlib.sha256(content).hexdigest(), mode) for path, (content, mode) in image.files.items()}
    return _fingerprint(image.reference, image.suite, image.extra_suites, image.packages, image.versions,
                        image.before, image.after, files, image.container, DPKG_EXCLUDES)


def _run(command: list[str], log: Path, what: str) -> None:
    with log.open("ab") as output:
        output.write(f"$ {' '.join(command)}\n".encode())
        output.flush()
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise MissingPart(f"{what} failed ({result.returncode}); the end of {log}:\n{tail}")


def _mmdebstrap(image: DebianImage, layer: Path, work: Path, log: Path) -> None:
    if shutil.which("mmdebstrap") is None:
        raise MissingPart("mmdebstrap is missing: `apt-get install mmdebstrap` (scripts/install-prerequisites.sh does)")
    sources = work / "image.sources"
    sources.write_text(suite_sources(image.suite, image.extra_suites))
    files = work / "files"
    for path, (content, mode) in image.files.items():
        target = files / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    checks = [f'chroot "$1" dpkg-query -W -f=\'${{Version}}\' {package} | grep -q "^{version}" || '
              f'{{ echo "{package} in {image.suite} is not {version}: the pinned {image.reference} cannot be built" >&2; exit 1; }}'
              for package, version in image.versions.items()]
    command = [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar", "--quiet",
        f"--include={','.join(image.packages)}",
        *[f'--aptopt={name} "{value}"' for name, value in apt_options(image.suite).items()],
        *[f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES],
        *[f"--essential-hook={hook}" for hook in image.before],
        f'--customize-hook=tar -C {files} -cf - . | tar -C "$1" -xf - --no-same-owner',
        *[f"--customize-hook={check}" for check in checks],
        *[f"--customize-hook={hook}" for hook in image.after],
        '--customize-hook=rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"; mkdir -p "$1/var/cache/apt" "$1/var/lib/apt/lists"',
        image.suite, str(layer), str(sources),
    ]
    _run(command, log, f"building {image.reference} (mmdebstrap)")


def _pause_layer(layer: Path, work: Path, log: Path) -> None:
    source, binary = work / "pause.c", work / "pause"
    source.write_bytes(PAUSE_SOURCE)
    if shutil.which("gcc") is None:
        raise MissingPart("gcc is missing: the pod sandbox's pause binary is built with `gcc -static`")
    _run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)], log, "building the pause binary")
    layer_from_files({"/pause": (binary.read_bytes(), 0o755)}, {}, layer)


def _prometheus_layer(binaries: Binaries, layer: Path) -> None:
    """Upstream's layout: /bin/prometheus and /bin/promtool, /etc/prometheus, /prometheus owned by nobody."""
    files = {
        "/bin/prometheus": (binaries.path("prometheus").read_bytes(), 0o755),
        "/bin/promtool": (binaries.path("promtool").read_bytes(), 0o755),
        "/etc/prometheus/prometheus.yml": (PROMETHEUS_CONFIG, 0o644),
        "/etc/passwd": (f"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:{PROMETHEUS_UID}:{PROMETHEUS_UID}:nobody:/home:/sbin/nologin\n".encode(), 0o644),
        "/etc/group": (f"root:x:0:\nnobody:x:{PROMETHEUS_UID}:\n".encode(), 0o644),
    }
    directories = {"/bin": (0o755, 0, 0), "/etc": (0o755, 0, 0), "/etc/prometheus": (0o755, 0, 0),
                   "/prometheus": (0o755, PROMETHEUS_UID, PROMETHEUS_UID), "/tmp": (0o1777, 0, 0)}
    layer_from_files(files, directories, layer)


def _build_wheels(target: Path, log: Path) -> None:
    """Our wheel and its dependencies' wheels, as the image installs them (no index inside the image)."""
    repo = source_dir().parents[1]
    target.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(target), str(repo)], log, "building the iotenant wheel")
    _run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--require-hashes", "--no-deps", "--dest", str(target),
          "-r", str(repo / "requirements.lock")], log, "downloading the iotenant wheel's locked dependencies")


def _source_fingerprint() -> str:
    """The content the Dockerfile copies into our image."""
    repo = source_dir().parents[1]
    digest = hashlib.sha256()
    for top in ("pyproject.toml", "requirements.lock", "README.md", "operator", "workloads", "scripts/install-wheel.sh"):
        path = repo / top
        for item in sorted([path] if path.is_file() else path.rglob("*")):
            if item.is_file() and "__pycache__" not in item.parts and not item.name.endswith(".egg-info"):
                digest.update(str(item.relative_to(repo)).encode())
                digest.update(item.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BuiltImage:
    reference: str
    archive: Path


def images_dir() -> Path:
    return cache_dir() / "images"


def _build(name: str, fingerprint: str, reference: str, container: dict[str, Any], make_layer: Callable[[Path, Path, Path], None]) -> BuiltImage:
    archive = images_dir() / f"{name}-{fingerprint}.tar"
    if archive.is_file():
        return BuiltImage(reference, archive)
    images_dir().mkdir(parents=True, exist_ok=True)
    log = images_dir() / f"{name}-{fingerprint}.build.log"
    log.unlink(missing_ok=True)
    began = time.monotonic()
    print(f"iotenant: building image {reference} (log: {log})", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=f"image-{name}-", dir=images_dir()) as scratch:
        work = Path(scratch)
        layer = work / "layer.tar"
        make_layer(layer, work, log)
        write_archive(layer, reference, container, archive)
    print(f"iotenant: image {reference} built in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return BuiltImage(reference, archive)


def _debian(name: str, image: DebianImage) -> BuiltImage:
    return _build(name, _debian_fingerprint(image), image.reference, image.container,
                  lambda layer, work, log: _mmdebstrap(image, layer, work, log))


def _iotenant() -> BuiltImage:
    recipe = iotenant_image(None)
    fingerprint = _fingerprint(_debian_fingerprint(recipe), _source_fingerprint())

    def make_layer(layer: Path, work: Path, log: Path) -> None:
        wheels = work / "wheels"
        _build_wheels(wheels, log)
        _mmdebstrap(iotenant_image(wheels), layer, work, log)

    return _build("iotenant", fingerprint, recipe.reference, recipe.container, make_layer)


def build_images(binaries: Binaries) -> list[BuiltImage]:
    """Every image the node runs: the pod sandbox and each image a tenant's stack and the chart render."""
    built = [
        _build("pause", _fingerprint(PAUSE_SOURCE), PAUSE_REFERENCE, {"Entrypoint": ["/pause"]},
               lambda layer, work, log: _pause_layer(layer, work, log)),
        _build("prometheus", _fingerprint(binaries.path("prometheus").read_bytes(), PROMETHEUS_CONFIG, PROMETHEUS_CONTAINER),
               settings.Images.prometheus, PROMETHEUS_CONTAINER, lambda layer, work, log: _prometheus_layer(binaries, layer)),
        _debian("broker", broker_image()),
        _debian("database", database_image()),
    ]
    built.append(_iotenant())
    return built

