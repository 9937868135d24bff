"""Debian's PostgreSQL and Mosquitto, started on loopback for a test session."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iotenant.broker_identities import Identity, dynamic_security_config
from iotenant.render.workloads import BROKER_ACL, mosquitto_conf


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _as_user(user: str) -> list[str]:
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster (trust authentication on loopback)."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binaries() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not found:
            pytest.fail("PostgreSQL is missing: apt-get install postgresql (or run scripts/install-prerequisites.sh)", pytrace=False)
        return Path(found[-1]).parent

    def initialise(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            os.chown(self.root, postgres.pw_uid, postgres.pw_gid)
        result = subprocess.run(
            [*_as_user("postgres"), str(self.binaries() / "initdb"), "-D", str(self.root / "data"), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr}")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*_as_user("postgres"), str(self.binaries() / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
             "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=256MB"],
            stdout=subprocess.DEVNULL, stderr=(self.root / "postgres.log").open("ab"),
        )
        wait_port(self.port)
        deadline = time.monotonic() + 20
        while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, as when a database pod goes away."""
        if self.process and self.process.poll() is None:
            subprocess.run(
                [*_as_user("postgres"), str(self.binaries() / "pg_ctl"), "-D", str(self.root / "data"), "stop", "-m", "fast", "-w"],
                check=True, capture_output=True,
            )
            self.process.wait(timeout=30)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


DEBIAN_DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def localise_broker_conf(conf: str, config_dir: Path, data_dir: Path, port: int) -> str:
    """The operator-generated mosquitto.conf with this machine's paths and a loopback listener.

    Only paths, the plugin location and the listener change; every other line runs as generated.
    A generated file without the expected lines fails here, so the test follows the real file.
    """
    replacements = {
        "persistence_location /mosquitto/data/": f"persistence_location {data_dir}/",
        "plugin /usr/lib/mosquitto_dynamic_security.so": f"plugin {DEBIAN_DYNSEC_PLUGIN}",
        "plugin_opt_config_file /mosquitto/data/dynamic-security.json": f"plugin_opt_config_file {data_dir}/dynamic-security.json",
        "acl_file /mosquitto/config/acl": f"acl_file {config_dir}/acl",
        "listener 1883": f"listener {port} 127.0.0.1",
    }
    lines = conf.splitlines()
    for generated, local in replacements.items():
        if generated not in lines:
            raise AssertionError(f"the generated mosquitto.conf has no line {generated!r}:\n{conf}")
        lines[lines.index(generated)] = local
    return "\n".join(lines) + "\n"


@dataclass
class MosquittoBroker:
    """Debian's Mosquitto running a configuration, an ACL file and a dynamic-security file.

    ``write_configuration`` renders them with the operator's functions (data-plane tests);
    ``write_generated`` takes them as the operator stored them in the cluster (fleet tests).
    """

    root: Path
    admin_password: str = ""
    identities: list[Identity] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def write_configuration(self) -> None:
        conf = mosquitto_conf(tls=False)
        seed = json.dumps(dynamic_security_config(self.admin_password, self.identities))
        self.write_generated(conf, BROKER_ACL, seed)

    def write_generated(self, conf: str, acl: str, dynamic_security: str) -> None:
        if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
            pytest.fail("Mosquitto is missing: apt-get install mosquitto mosquitto-clients", pytrace=False)
        if not Path(DEBIAN_DYNSEC_PLUGIN).exists():
            pytest.fail(f"the dynamic-security plugin is missing at {DEBIAN_DYNSEC_PLUGIN}: apt-get install mosquitto", pytrace=False)
        config, data = self.config_dir, self.data_dir
        config.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        (config / "mosquitto.conf").write_text(localise_broker_conf(conf, config, data, self.port))
        (config / "acl").write_text(acl)
        seeded = data / "dynamic-security.json"
        if not seeded.exists():  # as the broker pod's init container: seed once, then the broker owns it
            seeded.write_text(dynamic_security)
        if os.geteuid() == 0:  # mosquitto drops to its own user: it must read the files and write its data
            user = pwd.getpwnam("mosquitto")
            for path in [self.root, config, data, *config.iterdir(), *data.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
                path.chmod(0o750 if path.is_dir() else 0o640)

    def start(self) -> None:
        executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [executable, "-c", str(self.config_dir / "mosquitto.conf")],
            stdout=(self.root / "mosquitto.log").open("ab"), stderr=subprocess.STDOUT,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def rss_kib(self) -> int:
        assert self.process is not None
        return int(Path(f"/proc/{self.process.pid}/status").read_text().split("VmRSS:")[1].split()[0])

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""
