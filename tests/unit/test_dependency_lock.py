"""requirements.lock, what the image installs with hashes, is in step with pyproject.toml (that it is
complete, extras included, is checked where it is installed: ``pip check`` in scripts/install-wheel.sh)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PINNED = re.compile(r"^([A-Za-z0-9._-]+)==([^ \\]+) \\$")


def locked() -> dict[str, tuple[str, int]]:
    """Each locked distribution: its version and how many file hashes it allows."""
    entries: dict[str, tuple[str, int]] = {}
    current = ""
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if match := PINNED.match(line):
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
    return entries


def test_every_dependency_is_locked_at_a_version_it_allows_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = locked()
    assert lock, "requirements.lock pins nothing"
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} is not in requirements.lock: run the pip-compile command in its header"
        assert requirement.specifier.contains(lock[name][0]), f"{requirement.name} {lock[name][0]} is outside {requirement.specifier}"
    unhashed = [name for name, (_, hashes) in lock.items() if hashes == 0]
    assert unhashed == [], f"locked without a hash: {unhashed}"
