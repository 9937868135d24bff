"""Debian's PostgreSQL on this machine: a throwaway cluster on loopback (demo, tests, benchmarks)."""

from __future__ import annotations

import glob
import os
import pwd
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from iotenant_testbed.binaries import MissingPart
from iotenant_testbed.loopback import free_port, wait_port


def _as_user(user: str) -> list[str]:
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster: trust authentication on loopback, or with ``superuser_password``
    every TCP login (the superuser's too) checked with SCRAM, as in a real deployment."""

    root: Path
    superuser_password: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binaries() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not found:
            raise MissingPart("PostgreSQL is missing: apt-get install postgresql (or run scripts/install-prerequisites.sh)")
        return Path(found[-1]).parent

    def initialise(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            os.chown(self.root, postgres.pw_uid, postgres.pw_gid)
        authentication = ["--auth=trust"]
        if self.superuser_password is not None:
            password_file = self.root / "superuser-password"
            password_file.write_text(self.superuser_password + "\n")
            if os.geteuid() == 0:
                os.chown(password_file, postgres.pw_uid, postgres.pw_gid)
            authentication = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"]
        result = subprocess.run(
            [*_as_user("postgres"), str(self.binaries() / "initdb"), "-D", str(self.root / "data"), "-U", "postgres",
             *authentication, "-E", "UTF8", "--no-sync"],
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

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        password = self.superuser_password if password is None and user == "postgres" else password
        credentials = f"{user}:{password}" if password else user
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
