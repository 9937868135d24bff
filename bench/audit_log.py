"""The operator's writes, from the local API server's audit log (which records every write with its user agent)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

OPERATOR_AGENTS = ("iotenant-operator/", "kopf/")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


def stamp_of(entry: dict) -> str:
    return str(entry.get("requestReceivedTimestamp", ""))


def audit_files(audit: Path) -> list[Path]:
    """The log and its rotated parts: the API server starts a new file every 100 MB (``audit-<time>.log``
    beside it), which a thousand tenants' pods and nodes fill in minutes."""
    return sorted(audit.parent.glob(f"{audit.stem}-*{audit.suffix}")) + [audit]


def operator_writes(audit: Path, since: str, until: str = "~") -> list[dict]:
    """Audit entries of the operator's writes with ``since < requestReceivedTimestamp <= until`` (RFC 3339 strings)."""
    found = []
    for part in audit_files(audit):
        with part.open() as lines:
            for line in lines:
                entry = json.loads(line)
                if (entry.get("userAgent", "").startswith(OPERATOR_AGENTS) and entry.get("verb") in WRITE_VERBS
                        and since < stamp_of(entry) <= until):
                    found.append(entry)
    return found


def about(entry: dict, tenant: str) -> bool:
    """Whether a write concerns the CustomerInstance named ``tenant...`` (a prefix) or its namespace."""
    ref = entry.get("objectRef") or {}
    return any(str(ref.get(field, "")).startswith(prefix)
               for field, prefix in (("namespace", f"customer-{tenant}"), ("name", tenant), ("name", f"customer-{tenant}")))


def category(entry: dict) -> str:
    """What a write was: a child object of a tenant (by resource), a status, the instance's own metadata, an Event, ..."""
    ref = entry.get("objectRef") or {}
    resource, subresource = ref.get("resource", ""), ref.get("subresource", "")
    namespace, name = ref.get("namespace", ""), ref.get("name", "")
    if resource == "events":
        return "Event"
    if resource in ("customerinstances", "devicefleets"):
        return f"{resource} status" if subresource == "status" else f"{resource} metadata (Kopf finalizer, annotations)"
    if namespace.startswith("customer-") or (resource == "namespaces" and name.startswith("customer-")):
        return f"child {resource}"
    return f"operator {resource}"


def by_category(entries: list[dict]) -> Counter[str]:
    return Counter(category(entry) for entry in entries)


def per_instance(counts: Counter[str], instances: int) -> dict[str, float]:
    """Writes per instance by category, the child objects summed, and the rest (what is not a child) summed."""
    figures = {name: round(count / instances, 2) for name, count in sorted(counts.items())}
    children = sum(count for name, count in counts.items() if name.startswith("child "))
    figures["= child object writes"] = round(children / instances, 2)
    figures["= other writes"] = round((sum(counts.values()) - children) / instances, 2)
    return figures
