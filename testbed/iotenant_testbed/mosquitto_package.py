"""The broker the stack ships, from Debian, unpacked into a private folder (never installed over the host).

The stack's broker image is ``eclipse-mosquitto:<MOSQUITTO_VERSION>``; Debian carries the same upstream
release in a suite newer than the host's, built against a newer C library. Its packages and the
libraries they need are downloaded with a private apt state (the source entry derived from this
machine's own Debian sources), unpacked with ``dpkg-deb -x`` and run through their own dynamic
loader, so the host's libc is untouched. The folder is cached per version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from iotenant.settings import MOSQUITTO_VERSION
from iotenant_testbed.binaries import MissingPart, cache_dir
from iotenant_testbed.debian_sources import NoDebianSources, apt_options, suite_sources

LIBRARIES = "usr/lib/x86_64-linux-gnu"
# Packages never needed to run the broker from a folder: service managers and user tools.
NOT_RUN = frozenset({"systemd", "systemd-standalone-sysusers", "opensysusers", "sysvinit-utils"})


@dataclass(frozen=True)
class Release:
    """A Mosquitto release and the Debian suites that carry it (the first one's libc comes along)."""

    version: str
    suite: str
    extra_suites: tuple[str, ...] = ()


SHIPPED = Release(MOSQUITTO_VERSION, "sid")
# What the stack shipped before: the tests upgrade a broker volume it made.
PREVIOUS = Release("2.0.21", "bookworm", ("bookworm-backports",))


@dataclass(frozen=True)
class MosquittoPackage:
    """An unpacked Mosquitto: ``argv`` runs one of its programs with its own loader and libraries."""

    root: Path

    @property
    def loader(self) -> Path:
        """The package's own dynamic loader (under /usr in a merged-/usr release, /lib before)."""
        merged = self.root / LIBRARIES / "ld-linux-x86-64.so.2"
        return merged if merged.exists() else self.root / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"

    @property
    def dynamic_security_plugin(self) -> Path:
        """2.1 keeps its plugins in a folder of their own; 2.0 kept this one beside the libraries."""
        in_folder = self.root / LIBRARIES / "mosquitto" / "mosquitto_dynamic_security.so"
        return in_folder if in_folder.exists() else self.root / LIBRARIES / "mosquitto_dynamic_security.so"

    def argv(self, program: str, *args: str) -> list[str]:
        """``program`` is ``mosquitto`` (in usr/sbin) or a client such as ``mosquitto_pub`` (in usr/bin)."""
        folder = "usr/sbin" if program == "mosquitto" else "usr/bin"
        library_path = f"{self.root / LIBRARIES}:{self.root / 'lib/x86_64-linux-gnu'}"
        return [str(self.loader), "--library-path", library_path, str(self.root / folder / program), *args]

    def version(self) -> str:
        """What the unpacked broker says it is ("mosquitto version 2.1.2")."""
        result = subprocess.run(self.argv("mosquitto", "-h"), capture_output=True, text=True, timeout=30)
        first = (result.stdout + result.stderr).strip().splitlines()
        return first[0].strip() if first else ""


# Started as root, the broker drops to its own user before it loads its plugin, so root's copy lives
# where every user can read it (a home folder is private).
SHARED_CACHE = Path("/var/cache/iotenant")


def package_dir(release: Release) -> Path:
    base = SHARED_CACHE if os.geteuid() == 0 else cache_dir()
    return base / f"mosquitto-{release.version}"


def installed(release: Release = SHIPPED) -> MosquittoPackage:
    """The unpacked broker, or a MissingPart that says how to get it."""
    package = MosquittoPackage(package_dir(release))
    if not (package.root / ".complete").exists():
        raise MissingPart(f"Mosquitto {release.version} is not unpacked at {package.root}: run `iotenant dev build` "
                          "(or scripts/install-prerequisites.sh)")
    return package


def _sources(work: Path, release: Release) -> Path:
    parts = work / "sources.list.d"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / f"{release.suite}.sources").write_text(suite_sources(release.suite, release.extra_suites))
    return parts


def _apt_options(work: Path, release: Release) -> list[str]:
    state = work / "state"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    return ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={_sources(work, release)}",
            "-o", f"Dir::State={state}", "-o", f"Dir::State::status={state / 'status'}",
            "-o", f"Dir::Cache={work / 'cache'}", "-o", "APT::Sandbox::User=root",
            *(f"-o{name}={value}" for name, value in apt_options(release.suite).items())]


def _run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise MissingPart(f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def _closure(options: list[str]) -> list[str]:
    """mosquitto and mosquitto-clients with every library package they depend on, transitively."""
    listing = _run(["apt-cache", *options, "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                    "--no-breaks", "--no-replaces", "--no-enhances", "mosquitto", "mosquitto-clients"])
    names = {line.strip() for line in listing.splitlines() if line and not line.startswith((" ", "<"))}
    return sorted(name for name in names if name in ("mosquitto", "mosquitto-clients") or name.startswith("lib"))


def unpack(release: Release = SHIPPED) -> MosquittoPackage:
    """Download and unpack ``release`` once per machine; a warm call returns at once."""
    version = release.version
    target = package_dir(release)
    if (target / ".complete").exists():
        return MosquittoPackage(target)
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise MissingPart(f"{tool} is missing: Mosquitto {version} is unpacked from Debian packages")
    try:
        work = target.with_name(target.name + ".apt")
        options = _apt_options(work, release)
    except NoDebianSources as error:
        raise MissingPart(str(error)) from error
    print(f"iotenant: unpacking Mosquitto {version} from Debian {release.suite} into {target}", file=sys.stderr)
    _run(["apt-get", *options, "-qq", "update"])
    packages = [name for name in _closure(options) if name not in NOT_RUN]
    debs = work / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    pinned = [f"{name}={version}-*" if name in ("mosquitto", "mosquitto-clients", "libmosquitto1") else name for name in packages]
    _run(["apt-get", *options, "-qq", "download", *pinned], cwd=debs)
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    staging.parent.chmod(0o755)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(staging)])
    _run(["/sbin/ldconfig", "-n", *(str(folder) for folder in (staging / LIBRARIES, staging / "lib/x86_64-linux-gnu") if folder.is_dir())])
    package = MosquittoPackage(staging)
    reported = package.version()
    if reported != f"mosquitto version {version}":
        raise MissingPart(f"the unpacked broker reports {reported!r}, expected Mosquitto {version}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target / ".complete").write_text(f"{version}\n")
    shutil.rmtree(work, ignore_errors=True)
    return MosquittoPackage(target)
