"""A tenant's maintenance window (``spec.maintenance``): when its pods may restart for a change.

A change of a workload's pod template (an image, a setting, resources) restarts its pods: outside the
window it waits, and the workload keeps running as it is. Everything else applies at once: replicas (so
suspension), Secrets the processes re-read, policies, Services. The operator's ``--urgent-restarts`` (a
security fix that cannot wait) applies every change at once. Pure: the clock is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from iotenant.kube.apply import ObjectKey, contains, key_of
from iotenant.kube.client import Manifest
from iotenant.render.broker import ADMIN_TLS_ANNOTATION, DEVICE_TLS_ANNOTATION

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Kinds whose pod template restarts pods when it changes.
RESTARTING_KINDS = ("Deployment", "StatefulSet")
# Pod template annotations whose change is a repair, applied at once whatever the window.
REPAIRS = (ADMIN_TLS_ANNOTATION, DEVICE_TLS_ANNOTATION)


@dataclass(frozen=True)
class MaintenanceWindow:
    """Windows that open at ``start`` (minutes after midnight, UTC) on ``days`` (0 is Monday) for ``length``."""

    days: frozenset[int]
    start: int
    length: timedelta

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> "MaintenanceWindow | None":
        """The window ``spec.maintenance`` states (the schema bounds its fields), or None: changes apply at once."""
        if not spec:
            return None
        hours, minutes = (int(part) for part in spec["start"].split(":"))
        days = frozenset(DAYS.index(day) for day in spec.get("days") or DAYS)
        return cls(days, hours * 60 + minutes, timedelta(minutes=int(spec["durationMinutes"])))

    def _openings_around(self, now: datetime) -> list[datetime]:
        """The window's openings from the day before ``now`` to a week after it."""
        midnight = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        candidates = (midnight + timedelta(days=offset, minutes=self.start) for offset in range(-1, 8))
        return [opening for opening in candidates if opening.weekday() in self.days]

    def is_open(self, now: datetime) -> bool:
        return any(opening <= now < opening + self.length for opening in self._openings_around(now))

    def next_opening(self, now: datetime) -> datetime:
        """When the window next opens (``now`` while it is open)."""
        if self.is_open(now):
            return now
        return min(opening for opening in self._openings_around(now) if opening > now)


@dataclass
class Deferral:
    """What this reconcile applies now: ``desired`` and ``live`` without the workloads whose restart waits for
    the window; ``waiting`` those workloads as they run (their status still tells their readiness) and
    ``opening`` when the window opens."""

    desired: list[Manifest]
    live: dict[ObjectKey, Manifest]
    waiting: dict[ObjectKey, Manifest] = field(default_factory=dict)
    opening: datetime | None = None

    @property
    def waiting_names(self) -> list[str]:
        return sorted(name for _kind, _namespace, name in self.waiting)

    def status(self) -> dict[str, Any]:
        """``status.maintenance``: what waits and when the window opens; null (removed) when nothing waits."""
        if not self.waiting or self.opening is None:
            return {"maintenance": None}
        opening = self.opening.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        return {"maintenance": {"pendingRestarts": self.waiting_names, "nextWindow": opening}}


def plan_restarts(maintenance: dict[str, Any] | None, now: datetime, urgent: bool,
                  desired: list[Manifest], live: dict[ObjectKey, Manifest]) -> Deferral:
    """Within ``spec.maintenance``'s window (or without one, or when ``urgent``) everything applies; outside it,
    restarts wait (``defer_restarts``)."""
    window = MaintenanceWindow.from_spec(maintenance)
    if window is None or urgent or window.is_open(now):
        return Deferral(desired, live)
    deferral = defer_restarts(desired, live)
    deferral.opening = window.next_opening(now)
    return deferral


def defer_restarts(desired: list[Manifest], live: dict[ObjectKey, Manifest]) -> Deferral:
    """Hold back each running workload whose only change would restart its pods (its pod template); a change
    of its replicas applies at once, the template change with it."""
    deferral = Deferral(desired=[], live=dict(live))
    for manifest in desired:
        key, current = key_of(manifest), live.get(key_of(manifest))
        if current is not None and manifest["kind"] in RESTARTING_KINDS and _only_template_changed(manifest, current):
            deferral.live.pop(key)
            deferral.waiting[key] = current
        else:
            deferral.desired.append(manifest)
    return deferral


def _only_template_changed(desired: Manifest, live: Manifest) -> bool:
    """Whether the pod template is all that changed, and not by a repair that cannot wait: new broker certificates
    (the operator must reach its broker to revoke devices; devices must get the renewed certificate)."""
    wanted, running = desired.get("spec", {}), live.get("spec", {})
    if contains(running.get("template"), wanted.get("template")) or running.get("replicas") != wanted.get("replicas"):
        return False
    annotations = [(t or {}).get("metadata", {}).get("annotations") or {} for t in (wanted.get("template"), running.get("template"))]
    return all(annotations[0].get(name) == annotations[1].get(name) for name in REPAIRS)
