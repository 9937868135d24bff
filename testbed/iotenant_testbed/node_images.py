"""The images a tenant's stack runs, built here without a registry under the references it renders.

Each image is laid out like its upstream counterpart (paths, user id, entrypoint) from parts this
machine can build: Debian packages unpacked by mmdebstrap into a root filesystem of the suite that
carries the pinned version, the Prometheus server from the Go module that also gives promtool, and
our own wheel installed by ``scripts/install-wheel.sh`` as the Dockerfile installs it. A build is
cached by the content of its recipe; an image whose Debian suite no longer carries the pinned
version fails loudly instead of shipping another version under the pinned name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from iotenant import settings
from iotenant.render.database import DATABASE_UID
from iotenant.render.monitoring import PROMETHEUS_UID
from iotenant.render.ingest_and_api import IOTENANT_UID
from iotenant.render.broker import BROKER_UID
from iotenant_testbed.binaries import Binaries, MissingPart, cache_dir, source_dir
from iotenant_testbed.debian_sources import suite_sources
from iotenant_testbed.image_archive import layer_from_files, write_archive

# What a minimal image leaves out: documentation, manuals and translations.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_SUITE = "bookworm"
PAUSE_REFERENCE = "iotenant-testbed/pause:3.10"


@dataclass(frozen=True)
class DebianImage:
    """A root filesystem of one Debian suite with packages, hooks run in it, and an image configuration."""

    reference: str
    suite: str
    packages: tuple[str, ...]
    # Checked after installation: package name -> the upstream version the reference promises.
    versions: dict[str, str]
    container: dict[str, Any]
    extra_suites: tuple[str, ...] = ()
    # Shell run before the packages are installed (users with upstream's ids) and after (layout).
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    # Files copied into the root filesystem: path in the image -> (content, mode).
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)


def _system_user(name: str, uid: int, home: str) -> str:
    """Shell for the hook: a system user and group with upstream's id, made before a package makes its own."""
    return (f'echo "{name}:x:{uid}:" >> "$1/etc/group" && '
            f'echo "{name}:x:{uid}:{uid}::{home}:/usr/sbin/nologin" >> "$1/etc/passwd" && '
            f'echo "{name}:!:1::::::" >> "$1/etc/shadow"')


def _upstream_version(reference: str) -> str:
    return reference.rsplit(":", 1)[1].split("-")[0].removeprefix("v")


MOSQUITTO_ENTRYPOINT = b"""#!/bin/sh
# As upstream's: started as root, hand the broker's folders to its user; then run the command.
set -e
if [ "$(id -u)" = 0 ]; then
    chown -R mosquitto:mosquitto /mosquitto/data /mosquitto/log
fi
exec "$@"
"""

# Upstream's postgres entrypoint contract, for the variables the stack sets: POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB and PGDATA; an empty PGDATA is initialised, then the command runs.
POSTGRES_ENTRYPOINT = b"""#!/bin/sh
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?is required: the database superuser's password}"
    user="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$user}"
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    password_file=$(mktemp)
    printf '%s\\n' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth-local=trust --auth-host=scram-sha-256 \\
        --encoding=UTF8 -D "$PGDATA" >/dev/null
    rm -f "$password_file"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        quoted=$(printf '%s' "$database" | sed 's/"/""/g')
        printf 'CREATE DATABASE "%s";\\n' "$quoted" | postgres --single -j -D "$PGDATA" postgres >/dev/null
    fi
    echo "database initialised in $PGDATA" >&2
fi
exec "$@"
"""

POSTGRES_MAJOR = _upstream_version(settings.Images.database).split(".")[0]


def broker_image() -> DebianImage:
    reference = settings.Images.broker
    return DebianImage(
        reference=reference,
        suite=HOST_SUITE,
        extra_suites=(f"{HOST_SUITE}-backports",),
        packages=(f"mosquitto/{HOST_SUITE}-backports", f"mosquitto-clients/{HOST_SUITE}-backports",
                  f"libmosquitto1/{HOST_SUITE}-backports"),
        versions={"mosquitto": _upstream_version(reference)},
        before=(_system_user("mosquitto", BROKER_UID, "/var/empty"),),
        after=(
            'mkdir -p "$1/mosquitto/config" "$1/mosquitto/data" "$1/mosquitto/log"',
            'cp "$1/etc/mosquitto/mosquitto.conf" "$1/mosquitto/config/mosquitto.conf"',
            f'chown -R {BROKER_UID}:{BROKER_UID} "$1/mosquitto"',
            # Upstream's plugin path, which the rendered configuration names.
            'ln -s x86_64-linux-gnu/mosquitto_dynamic_security.so "$1/usr/lib/mosquitto_dynamic_security.so"',
        ),
        files={"/docker-entrypoint.sh": (MOSQUITTO_ENTRYPOINT, 0o755)},
        container={
            "Entrypoint": ["/docker-entrypoint.sh"],
            "Cmd": ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"],
            "Env": [f"PATH={DEFAULT_PATH}"],
            "ExposedPorts": {"1883/tcp": {}},
            "Volumes": {"/mosquitto/data": {}, "/mosquitto/log": {}},
        },
    )


def database_image() -> DebianImage:
    reference = settings.Images.database
    suite = reference.rsplit("-", 1)[1]
    bin_dir = f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin"
    return DebianImage(
        reference=reference,
        suite=suite,
        packages=(f"postgresql-{POSTGRES_MAJOR}",),
        versions={f"postgresql-{POSTGRES_MAJOR}": _upstream_version(reference)},
        before=(
            _system_user("postgres", DATABASE_UID, "/var/lib/postgresql"),
            # The image starts no cluster of Debian's: the entrypoint initialises PGDATA.
            'mkdir -p "$1/etc/postgresql-common" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.conf"',
        ),
        after=(
            'mkdir -p "$1/var/lib/postgresql/data" "$1/var/run/postgresql"',
            f'chown -R {DATABASE_UID}:{DATABASE_UID} "$1/var/lib/postgresql" "$1/var/run/postgresql"',
            'chmod 2777 "$1/var/run/postgresql"',
        ),
        files={"/usr/local/bin/docker-entrypoint.sh": (POSTGRES_ENTRYPOINT, 0o755)},
        container={
            "Entrypoint": ["docker-entrypoint.sh"],
            "Cmd": ["postgres"],
            "Env": [f"PATH={DEFAULT_PATH}:{bin_dir}", "PGDATA=/var/lib/postgresql/data", "LANG=C.UTF-8"],
            "ExposedPorts": {"5432/tcp": {}},
            "StopSignal": "SIGINT",
            "Volumes": {"/var/lib/postgresql/data": {}},
        },
    )


def iotenant_image(wheels: Path | None) -> DebianImage:
    """Our image as the Dockerfile makes it: Debian's Python 3.11, the wheel in /opt/iotenant, uid 10001
    (``wheels``: our wheel and its dependencies', None for the recipe alone)."""
    install_wheel = (source_dir().parents[1] / "scripts" / "install-wheel.sh").read_bytes()
    files = {"/tmp/install-wheel.sh": (install_wheel, 0o755)}
    for wheel in sorted(wheels.glob("*.whl")) if wheels else []:
        files[f"/tmp/wheels/{wheel.name}"] = (wheel.read_bytes(), 0o644)
    ours = next((path for path in files if Path(path).name.startswith("iotenant-")), "/tmp/wheels/iotenant.whl")
    return DebianImage(
        reference=settings.Images.iotenant,
        suite=HOST_SUITE,
        packages=("python3", "python3-venv"),
        versions={"python3": "3.11"},
        before=(_system_user("iotenant", IOTENANT_UID, "/nonexistent"),),
        after=(
            'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheels '
            f'PYTHON=python3 sh /tmp/install-wheel.sh /opt/iotenant {ours}',
            'rm -rf "$1/tmp/wheels" "$1/tmp/install-wheel.sh"',
        ),
        files=files,
        container={
            "Entrypoint": ["iotenant"],
            "Cmd": ["--help"],
            "User": f"{IOTENANT_UID}:{IOTENANT_UID}",
            "Env": [f"PATH=/opt/iotenant/bin:{DEFAULT_PATH}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
        },
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
        *[f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES],
        *[f"--essential-hook={hook}" for hook in image.before],
        f'--customize-hook=tar -C {files} -cf - . | tar -C "$1" -xf - --no-same-owner',
        *[f"--customize-hook={check}" for check in checks],
        *[f"--customize-hook={hook}" for hook in image.after],
        '--customize-hook=rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"; mkdir -p "$1/var/cache/apt" "$1/var/lib/apt/lists"',
        image.suite, str(layer), str(sources),
    ]
    _run(command, log, f"building {image.reference} (mmdebstrap)")


PAUSE_SOURCE = b"""/* The pod sandbox's process: sleeps until told to stop, reaps orphans. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int signal_number) { (void)signal_number; _exit(0); }
static void reap(int signal_number) { (void)signal_number; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


def _pause_layer(layer: Path, work: Path, log: Path) -> None:
    source, binary = work / "pause.c", work / "pause"
    source.write_bytes(PAUSE_SOURCE)
    if shutil.which("gcc") is None:
        raise MissingPart("gcc is missing: the pod sandbox's pause binary is built with `gcc -static`")
    _run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)], log, "building the pause binary")
    layer_from_files({"/pause": (binary.read_bytes(), 0o755)}, {}, layer)


PROMETHEUS_CONFIG = b"""# The image's default configuration; the operator mounts its own over /etc/prometheus.
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
"""


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


PROMETHEUS_CONTAINER = {
    "Entrypoint": ["/bin/prometheus"],
    "Cmd": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
    "User": "nobody",
    "WorkingDir": "/prometheus",
    "ExposedPorts": {"9090/tcp": {}},
    "Volumes": {"/prometheus": {}},
}


def _build_wheels(target: Path, log: Path) -> None:
    """Our wheel and its dependencies' wheels, as the image installs them (no index inside the image)."""
    repo = source_dir().parents[1]
    target.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(target), str(repo)], log, "building the iotenant wheel")
    wheel = next(target.glob("iotenant-*.whl"))
    _run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(target), str(wheel)],
         log, "downloading the iotenant wheel's dependencies")


def _source_fingerprint() -> str:
    """The content the Dockerfile copies into our image."""
    repo = source_dir().parents[1]
    digest = hashlib.sha256()
    for top in ("pyproject.toml", "README.md", "operator", "workloads", "scripts/install-wheel.sh"):
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

