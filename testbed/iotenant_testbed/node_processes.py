"""The real node's daemons (containerd, kubelet, kube-proxy, CoreDNS) as processes with a log and a
pid file each: started detached so they outlive ``iotenant dev up``, stopped by their recorded id."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Daemon:
    name: str
    folder: Path

    @property
    def pid_file(self) -> Path:
        return self.folder / "pids" / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.folder / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded process id, if that process is still alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start the daemon unless it runs already; return its process id."""
        running = self.pid()
        if running is not None:
            return running
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        return process.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.is_file() else "(no log)"

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the daemon by its recorded id (SIGTERM, then SIGKILL); True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        # A child of this process that exited is reaped here; another process's is gone from the table.
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().split(b")")[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
