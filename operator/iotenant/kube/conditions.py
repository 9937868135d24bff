"""Status conditions by the Kubernetes conventions, and the kstatus rules Flux reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotenant.timestamps import rfc3339

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str

    def __post_init__(self) -> None:
        if self.status not in (TRUE, FALSE, UNKNOWN):
            raise ValueError(f"condition {self.type}: status must be True, False or Unknown")
        if not self.reason or not self.reason[0].isalpha() or not self.reason.replace("_", "").isalnum():
            raise ValueError(f"condition {self.type}: reason {self.reason!r} must be a CamelCase word")


def merge_conditions(
    existing: list[dict[str, Any]] | None, wanted: list[Condition], generation: int, timestamp: str | None = None
) -> list[dict[str, Any]]:
    """The wanted conditions, keeping ``lastTransitionTime`` of every condition whose status did not flip.

    Conditions not in ``wanted`` are dropped; the order follows ``wanted``.
    """
    previous = {entry["type"]: entry for entry in existing or []}
    stamp = timestamp or rfc3339()
    merged = []
    for condition in wanted:
        before = previous.get(condition.type)
        transition = before["lastTransitionTime"] if before and before.get("status") == condition.status else stamp
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": transition,
                "observedGeneration": generation,
            }
        )
    return merged


def find(conditions: list[dict[str, Any]] | None, condition_type: str) -> dict[str, Any] | None:
    return next((entry for entry in conditions or [] if entry.get("type") == condition_type), None)
