"""A DeviceFleet's status: Ready with its reason, Reconciling and Stalled, written by the one status writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.kube.conditions import FALSE, TRUE, Condition, find, merge_conditions
from iotenant.kube.status import EventNote, write_status
from iotenant.vocabulary.kinds import DEVICE_FLEET

NOT_IN_CUSTOMER_NAMESPACE = "NotInCustomerNamespace"
# A fleet whose new devices are being created in the broker (Ready=False, but all is well).
ADMITTING = "Admitting"
FLEET_TRANSITIONS = Counter(
    "iotenant_operator_fleet_transitions_total", "DeviceFleet Ready changes by new reason (Admitted, DeviceLimitExceeded, ...)", ["reason"]
)


@dataclass(frozen=True)
class FleetReport:
    ready: bool
    reason: str
    message: str
    provisioned: int
    credentials_secret: str | None = None
    stalled: bool = False
    reconciling: bool = False


def write_fleet_status(api: ClusterAPI, body: Manifest, report: FleetReport) -> bool:
    """Patch a fleet's status when it differs; post an Event when its Ready reason changes."""
    metadata = body["metadata"]
    generation = int(metadata.get("generation", 1))
    previous = body.get("status") or {}
    ready, reason, message = report.ready, report.reason, report.message
    conditions = [
        Condition("Ready", TRUE if ready else FALSE, reason, message),
        Condition("Reconciling", TRUE if report.reconciling else FALSE, reason if report.reconciling else "Converged",
                  message if report.reconciling else "the fleet matches its desired state"),
        Condition("Stalled", TRUE if report.stalled else FALSE, reason if report.stalled else "NotStalled",
                  message if report.stalled else "no failure that retrying cannot fix"),
    ]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "provisioned": report.provisioned,
        "credentialsSecret": report.credentials_secret,
        "conditions": merge_conditions(previous.get("conditions"), conditions, generation),
    }

    def events(before_status: dict[str, Any], _status: dict[str, Any]) -> list[EventNote]:
        before = find(before_status.get("conditions"), "Ready") or {}
        if before.get("reason") == reason:
            return []
        FLEET_TRANSITIONS.labels(reason).inc()
        return [("Normal" if ready or reason == ADMITTING else "Warning", reason, message)]

    return write_status(api, DEVICE_FLEET, body, status, events)


def report_not_in_customer_namespace(api: ClusterAPI, body: Manifest) -> bool:
    namespace = body["metadata"]["namespace"]
    message = (
        f"namespace {namespace} is not a customer namespace: create the fleet in customer-<name> of a "
        "CustomerInstance; no device of this fleet can connect"
    )
    return write_fleet_status(api, body, FleetReport(False, NOT_IN_CUSTOMER_NAMESPACE, message, 0, stalled=True))
