"""What each image the real node runs is made of, laid out like its upstream counterpart (paths, user
id, entrypoint): the Debian suite and packages of the pinned version, the shell run in the root
filesystem, the files added, and the image configuration. Data only: ``node_images`` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotenant import settings
from iotenant.mosquitto.config import DYNSEC_PLUGIN
from iotenant.render.broker import BROKER_UID
from iotenant.render.database import DATABASE_UID
from iotenant.render.ingest_and_api import IOTENANT_UID
from iotenant_testbed import mosquitto_package
from iotenant_testbed.binaries import source_dir

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
        suite=mosquitto_package.SHIPPED.suite,
        packages=("mosquitto", "mosquitto-clients", "libmosquitto1"),
        versions={"mosquitto": _upstream_version(reference)},
        before=(_system_user("mosquitto", BROKER_UID, "/var/empty"),),
        after=(
            'mkdir -p "$1/mosquitto/config" "$1/mosquitto/data" "$1/mosquitto/log"',
            'cp "$1/etc/mosquitto/mosquitto.conf" "$1/mosquitto/config/mosquitto.conf"',
            f'chown -R {BROKER_UID}:{BROKER_UID} "$1/mosquitto"',
            # Upstream's plugin path, which the rendered configuration names.
            f'ln -s x86_64-linux-gnu/mosquitto/mosquitto_dynamic_security.so "$1{DYNSEC_PLUGIN}"',
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
    repo = source_dir().parents[1]
    files = {"/tmp/install-wheel.sh": ((repo / "scripts" / "install-wheel.sh").read_bytes(), 0o755),
             "/tmp/requirements.lock": ((repo / "requirements.lock").read_bytes(), 0o644)}
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
            f'PYTHON=python3 sh /tmp/install-wheel.sh /opt/iotenant {ours} /tmp/requirements.lock',
            'rm -rf "$1/tmp/wheels" "$1/tmp/install-wheel.sh" "$1/tmp/requirements.lock"',
        ),
        files=files,
        container={
            "Entrypoint": ["iotenant"],
            "Cmd": ["--help"],
            "User": f"{IOTENANT_UID}:{IOTENANT_UID}",
            "Env": [f"PATH=/opt/iotenant/bin:{DEFAULT_PATH}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
        },
    )


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


PROMETHEUS_CONFIG = b"""# The image's default configuration; the operator mounts its own over /etc/prometheus.
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
"""


PROMETHEUS_CONTAINER = {
    "Entrypoint": ["/bin/prometheus"],
    "Cmd": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
    "User": "nobody",
    "WorkingDir": "/prometheus",
    "ExposedPorts": {"9090/tcp": {}},
    "Volumes": {"/prometheus": {}},
}
