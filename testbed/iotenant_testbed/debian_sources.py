"""Debian package sources for another suite, derived from this machine's own Debian sources.

Image root filesystems and the tests' broker come from Debian suites the host may not use (sid for
the broker, trixie for PostgreSQL). Their source entries reuse the mirror and keyring that the machine
already trusts, so nothing names a host and nothing is trusted that the machine does not trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
ROLLING_SUITES = frozenset({"sid", "unstable"})


class NoDebianSources(RuntimeError):
    """The machine has no deb822 Debian sources to derive another suite's from."""


@dataclass(frozen=True)
class Mirror:
    uris: str
    signed_by: str | None


def _paragraphs(text: str) -> list[dict[str, str]]:
    paragraphs: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields:
            paragraphs.append(fields)
    return paragraphs


def host_mirrors(sources: Path = HOST_SOURCES) -> tuple[Mirror, Mirror | None]:
    """The machine's Debian archive mirror and its security mirror (None if it has none)."""
    if not sources.is_file():
        raise NoDebianSources(f"{sources} is missing: image builds derive their Debian sources from it")
    archive: Mirror | None = None
    security: Mirror | None = None
    for fields in _paragraphs(sources.read_text()):
        mirror = Mirror(fields.get("URIs", ""), fields.get("Signed-By"))
        suites = fields.get("Suites", "").split()
        if not mirror.uris or "deb" not in fields.get("Types", "").split():
            continue
        if any(suite.endswith("-security") for suite in suites):
            security = security or mirror
        else:
            archive = archive or mirror
    if archive is None:
        raise NoDebianSources(f"{sources} names no Debian archive")
    return archive, security


def suite_sources(suite: str, extra_suites: tuple[str, ...] = (), sources: Path = HOST_SOURCES) -> str:
    """A deb822 sources file for ``suite`` (with its updates and security suites) and ``extra_suites``."""
    archive, security = host_mirrors(sources)

    def paragraph(mirror: Mirror, suites: list[str]) -> str:
        lines = ["Types: deb", f"URIs: {mirror.uris}", f"Suites: {' '.join(suites)}", "Components: main"]
        if mirror.signed_by:
            lines.append(f"Signed-By: {mirror.signed_by}")
        return "\n".join(lines) + "\n"

    if suite in ROLLING_SUITES:  # no updates or security suites of its own
        return paragraph(archive, [suite, *extra_suites])
    blocks = [paragraph(archive, [suite, f"{suite}-updates", *extra_suites])]
    if security is not None:
        blocks.append(paragraph(security, [f"{suite}-security"]))
    return "\n".join(blocks)


def apt_options(suite: str) -> dict[str, str]:
    """Options apt needs for ``suite``: a rolling suite's Release file is valid for days only, and the
    machine's mirror may serve a snapshot of it (still signed, so still verified) past that date."""
    return {"Acquire::Check-Valid-Until": "false"} if suite in ROLLING_SUITES else {}
