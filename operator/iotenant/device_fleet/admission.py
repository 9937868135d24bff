"""DeviceFleets as data: their device ids, and which fleets the licence admits.

Pure functions: a list of DeviceFleet objects and the verified licence limits in, decisions out.
Fleets are admitted whole, oldest first: a fleet is admitted when it fits beside every older
admitted fleet, so a new fleet can never take the place of an older one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotenant.licensing.licence import Limits

ROTATE_ANNOTATION = "iotenant.io/rotate-credentials"

# Admission outcomes; the refusals are the fleet's Ready=False reasons.
ADMITTED = "Admitted"
DEVICE_LIMIT_EXCEEDED = "DeviceLimitExceeded"
DUPLICATE_DEVICE_IDS = "DuplicateDeviceIds"


def device_ids(spec: dict[str, Any]) -> list[str]:
    """The fleet's device ids: ``<idPrefix>001``, ``<idPrefix>002``, ... for a count, or the listed ids."""
    devices = spec.get("devices") or {}
    if "ids" in devices:
        return list(devices["ids"])
    prefix = devices.get("idPrefix", "")
    return [f"{prefix}{number:03d}" for number in range(1, int(devices.get("count", 0)) + 1)]


@dataclass(frozen=True)
class Fleet:
    """What admission and provisioning need to know about one DeviceFleet."""

    name: str
    namespace: str
    uid: str
    created: str  # RFC 3339 creation timestamp: orders fleets oldest first
    generation: int
    devices: tuple[str, ...]
    body: dict[str, Any]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Fleet":
        metadata = body["metadata"]
        return cls(
            name=metadata["name"],
            namespace=metadata["namespace"],
            uid=metadata["uid"],
            created=metadata.get("creationTimestamp", ""),
            generation=int(metadata.get("generation", 1)),
            devices=tuple(device_ids(body.get("spec") or {})),
            body=body,
        )

    @property
    def deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp"))

    @property
    def rotation_request(self) -> str:
        return (self.body["metadata"].get("annotations") or {}).get(ROTATE_ANNOTATION, "")

    @property
    def simulator_enabled(self) -> bool:
        return bool(((self.body.get("spec") or {}).get("simulator") or {}).get("enabled", False))

    @property
    def interval_seconds(self) -> int:
        return int(((self.body.get("spec") or {}).get("telemetry") or {}).get("intervalSeconds", 60))

    @property
    def device_type(self) -> str:
        return str((self.body.get("spec") or {}).get("deviceType", ""))


@dataclass(frozen=True)
class Admission:
    fleet: Fleet
    reason: str  # ADMITTED or why not
    message: str

    @property
    def admitted(self) -> bool:
        return self.reason == ADMITTED


def admit(fleets: list[Fleet], limits: Limits) -> list[Admission]:
    """Decide every fleet, oldest first (creation time, then name); fleets being deleted are left out."""
    decisions: list[Admission] = []
    devices_used, fleets_used = 0, 0
    owners: dict[str, str] = {}  # device id -> the admitted fleet that has it
    for fleet in sorted((f for f in fleets if not f.deleting), key=lambda f: (f.created, f.name)):
        count = len(fleet.devices)
        taken = sorted({device for device in fleet.devices if device in owners})
        if taken:
            shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
            message = (
                f"device ids already belong to an older fleet in this namespace: {shown} "
                f"(fleet {owners[taken[0]]}); a device id must be unique in the namespace"
            )
            decisions.append(Admission(fleet, DUPLICATE_DEVICE_IDS, message))
        elif fleets_used + 1 > limits.maxFleets:
            message = (
                f"the licence allows {limits.maxFleets} fleets in this namespace and {fleets_used} older fleets are admitted; "
                "delete a fleet or move to a plan with more fleets"
            )
            decisions.append(Admission(fleet, DEVICE_LIMIT_EXCEEDED, message))
        elif devices_used + count > limits.maxDevices:
            message = (
                f"{count} devices do not fit: the licence allows {limits.maxDevices} devices and older fleets use "
                f"{devices_used}; shrink the fleet, delete another one, or move to a plan with more devices"
            )
            decisions.append(Admission(fleet, DEVICE_LIMIT_EXCEEDED, message))
        else:
            devices_used += count
            fleets_used += 1
            owners.update({device: fleet.name for device in fleet.devices})
            decisions.append(Admission(fleet, ADMITTED, f"{count} devices admitted ({devices_used} of {limits.maxDevices} in use)"))
    return decisions
