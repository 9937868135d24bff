"""The shell blocks of the README and the guides, each marked on the line before it as run by a test or not.

``<!-- runs: <name> (...) -->``: a test runs the block by its name (``run_block``);
``<!-- not run: <why> -->``: it is not run, and the reason says why.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = ("sh", "bash", "shell", "console")
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!-- (?:runs: (?P<name>[a-z0-9-]+)\b.*|not run: (?P<reason>\S.*)) -->$")


def documents() -> list[Path]:
    """The Markdown a reader follows: the README, SECURITY.md and every page of docs/."""
    return [REPO / "README.md", REPO / "SECURITY.md", *sorted((REPO / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class ShellBlock:
    path: Path
    line: int  # of the opening fence, 1-based
    marker: str  # the line before the fence
    text: str

    @property
    def name(self) -> str | None:
        match = _MARKER.match(self.marker)
        return match["name"] if match else None

    @property
    def not_run_reason(self) -> str | None:
        match = _MARKER.match(self.marker)
        return match["reason"] if match else None

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def shell_blocks(path: Path) -> list[ShellBlock]:
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if match[1] in SHELL_LANGUAGES:
            marker = lines[index - 1] if index else ""
            blocks.append(ShellBlock(path, index + 1, marker, "\n".join(lines[index + 1:end]) + "\n"))
        index = end + 1
    return blocks


def block(name: str) -> ShellBlock:
    """The one block marked ``runs: <name>`` in the documents."""
    found = [b for path in documents() for b in shell_blocks(path) if b.name == name]
    assert len(found) == 1, f"{len(found)} shell blocks are marked 'runs: {name}'"
    return found[0]


def run_block(name: str, cwd: Path, path_dirs: list[Path], env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run block ``name`` with bash (errexit, pipefail) in ``cwd``, with ``path_dirs`` first on PATH; the
    repository's examples and chart are reachable from ``cwd`` as in a checkout."""
    for entry in ("examples", "charts", "crds"):
        link = cwd / entry
        if not link.exists():
            link.symlink_to(REPO / entry)
    environment = dict(os.environ if env is None else env)
    environment["PATH"] = os.pathsep.join([*map(str, path_dirs), environment.get("PATH", "")])
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block(name).text], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
