"""Reconciling the DeviceFleets of one customer namespace: admission, credentials, broker, simulators, status.

The CustomerInstance reconcile calls ``DeviceFleetReconciler.reconcile`` with what it verified (the
licence limits, whether the tenant is serving, the broker's admin password). Admission is decided
for the whole namespace at once (fleets are admitted oldest first), so one call handles every fleet.
The broker is then made to hold exactly the service identities and the admitted devices.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter, Histogram

from iotenant.broker_admin_tls import AdminTLS
from iotenant.broker_control import BrokerAddresses, BrokerCommandFailed, BrokerUnavailable, DynamicSecurity, SyncResult, split_address
from iotenant.broker_identities import DeviceCredentials, Identity, new_password, service_identities
from iotenant.cluster_api import ClusterAPI, Manifest, kind_of
from iotenant.conditions import FALSE, TRUE, Condition, find, merge_conditions
from iotenant.converge import ObjectKey, needs_apply, with_hash
from iotenant.events import post_event
from iotenant.fleet_admission import ADMITTED, Admission, Fleet, admit
from iotenant.licence import Limits
from iotenant.render import fleet as fleet_objects
from iotenant.render.meta import API_VERSION, Owner
from iotenant.settings import OperatorSettings

log = logging.getLogger("iotenant.device_fleet")

DEVICE_FLEET = kind_of(API_VERSION, "DeviceFleet")
DEPLOYMENT = kind_of("apps/v1", "Deployment")

# Ready=False reasons besides the admission refusals.
BROKER_UNAVAILABLE = "BrokerUnavailable"
CREDENTIALS_TOO_LARGE = "CredentialsTooLarge"
NOT_IN_CUSTOMER_NAMESPACE = "NotInCustomerNamespace"
BROKER_RETRY_SECONDS = 3.0

BROKER_SYNCS = Counter(
    "iotenant_operator_broker_syncs_total", "Tenant broker identity syncs by result (in_step: skipped, found in step recently)", ["result"]
)
BROKER_CHANGES = Counter("iotenant_operator_broker_identity_changes_total", "Broker clients created, modified or deleted", ["change"])
BROKER_SYNC_SECONDS = Histogram(
    "iotenant_operator_broker_sync_seconds", "Time of one tenant broker identity sync that reached the broker",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 180, 600),
)
FLEET_TRANSITIONS = Counter(
    "iotenant_operator_fleet_transitions_total", "DeviceFleet Ready changes by new reason (Admitted, DeviceLimitExceeded, ...)", ["reason"]
)


@dataclass(frozen=True)
class TenantAccess:
    """What the CustomerInstance reconcile verified and decided, as the fleets need it."""

    owner: Owner
    limits: Limits | None  # from the verified licence; None: no valid licence
    serving: bool
    not_serving_reason: str  # Ready reason of every fleet while not serving
    not_serving_message: str
    broker_ready: bool
    admin_tls: AdminTLS
    ingest_password: str
    api_password: str
    share_group: str
    max_packet_bytes: int  # the broker's packet limit (the plan's): no control message may pass it


@dataclass
class FleetsOutcome:
    fleets: int = 0
    provisioned: int = 0
    retry_after: float | None = None
    broker: SyncResult = field(default_factory=SyncResult)


@dataclass(frozen=True)
class _BrokerMemo:
    fingerprint: str
    checked_at: float


@dataclass(frozen=True)
class _FleetReport:
    ready: bool
    reason: str
    message: str
    provisioned: int
    credentials_secret: str | None = None
    stalled: bool = False
    reconciling: bool = False


class DeviceFleetReconciler:
    def __init__(
        self,
        api: ClusterAPI,
        settings: OperatorSettings,
        addresses: BrokerAddresses | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.settings = settings
        self.addresses = addresses or BrokerAddresses(settings.broker_address_template, settings.broker_addresses_file)
        self.clock = clock
        self._broker_memo: dict[str, _BrokerMemo] = {}

    # ----------------------------------------------------------------------------- reconcile

    def reconcile(self, access: TenantAccess, owned: dict[ObjectKey, Manifest]) -> FleetsOutcome:
        """``owned``: the fleets' objects (label iotenant.io/fleet) as the instance's reconcile listed them."""
        namespace = access.owner.namespace
        fleets = self._list_fleets(namespace)
        live_secrets = {name: item for (kind, _ns, name), item in owned.items() if kind == "Secret"}
        live_simulators = {name: item for (kind, _ns, name), item in owned.items() if kind == "Deployment"}
        if not access.serving or access.limits is None:
            self._converge_simulators(access.owner, [], {}, live_simulators)
            for fleet in fleets:
                self._report(fleet, _FleetReport(False, access.not_serving_reason, access.not_serving_message, 0))
            return FleetsOutcome(fleets=len(fleets))

        admissions = admit(fleets, access.limits)
        host, port = split_address(self.settings.device_broker_address(namespace, access.owner.name))

        desired = {identity.username: identity for identity in service_identities(access.ingest_password, access.api_password)}
        provisioned: list[tuple[Admission, str]] = []  # admitted fleets with their handled rotation request
        refused: dict[str, _FleetReport] = {}
        for admission in admissions:
            fleet = admission.fleet
            if not admission.admitted:
                refused[fleet.uid] = _FleetReport(False, admission.reason, admission.message, 0, stalled=True)
                continue
            secret_name = fleet_objects.credentials_secret_name(fleet.name)
            credentials, rotated_for, rotated = self._credentials(fleet, live_secrets.get(secret_name), host, port)
            size = fleet_objects.credentials_data_size(credentials)
            if size > fleet_objects.SECRET_DATA_LIMIT:
                message = (
                    f"the credentials of {len(credentials)} devices take {size} bytes, more than a Secret holds "
                    f"({fleet_objects.SECRET_DATA_LIMIT}); use shorter device ids or split the fleet"
                )
                refused[fleet.uid] = _FleetReport(False, CREDENTIALS_TOO_LARGE, message, 0, stalled=True)
                continue
            manifest = with_hash(fleet_objects.credentials_secret(access.owner, fleet, credentials, rotated_for))
            if needs_apply(manifest, live_secrets.get(secret_name)):
                self.api.apply(manifest)
            if rotated:
                post_event(self.api, fleet.body, "Normal", "CredentialsRotated",
                           f"new passwords for {len(credentials)} devices in Secret {secret_name}; the old ones are refused")
            label = f"fleet/{fleet.name}"
            desired.update({c.device_id: Identity(c.device_id, c.password, None, label) for c in credentials})
            provisioned.append((admission, rotated_for))

        outcome = FleetsOutcome(fleets=len(fleets))
        broker_error: str | None = None
        if not access.broker_ready:
            broker_error = "waiting for the broker to be available"
            self.forget(namespace)  # a broker that comes back may have lost its volume: check it in full
        else:
            try:
                outcome.broker = self._sync_broker(access, desired)
            except (BrokerUnavailable, BrokerCommandFailed) as error:
                broker_error = str(error)
                # Without fleets only the service identities are checked: retried at the next resync.
                log.log(logging.WARNING if fleets else logging.DEBUG, "%s: broker identities not in step: %s", namespace, error)
        if broker_error and fleets:
            outcome.retry_after = BROKER_RETRY_SECONDS

        self._converge_simulators(
            access.owner,
            [admission.fleet for admission, _ in provisioned if admission.fleet.simulator_enabled],
            {admission.fleet.uid: rotated_for for admission, rotated_for in provisioned},
            live_simulators,
        )

        for admission in admissions:
            fleet = admission.fleet
            if fleet.uid in refused:
                self._report(fleet, refused[fleet.uid])
                continue
            secret_name = fleet_objects.credentials_secret_name(fleet.name)
            if broker_error:
                previous = int((fleet.body.get("status") or {}).get("provisioned", 0) or 0)
                message = f"{len(fleet.devices)} devices admitted; broker not yet in step: {broker_error}"
                report = _FleetReport(False, BROKER_UNAVAILABLE, message, previous, secret_name, reconciling=True)
            else:
                message = f"{len(fleet.devices)} devices can connect; credentials in Secret {secret_name}. {admission.message}"
                report = _FleetReport(True, ADMITTED, message, len(fleet.devices), secret_name)
                outcome.provisioned += len(fleet.devices)
            self._report(fleet, report)
        return outcome

    def refuse_all(self, namespace: str) -> None:
        """``namespace`` is not the customer's (it belongs to someone else): none of its fleets is served."""
        for fleet in self._list_fleets(namespace):
            report_not_in_customer_namespace(self.api, fleet.body)

    def forget(self, namespace: str) -> None:
        self._broker_memo.pop(namespace, None)

    # ----------------------------------------------------------------------------- parts

    def _list_fleets(self, namespace: str) -> list[Fleet]:
        try:
            return [Fleet.from_body({"apiVersion": API_VERSION, "kind": "DeviceFleet", **body})
                    for body in self.api.list(DEVICE_FLEET, namespace)]
        except ApiException as error:
            if error.status == 404:  # the DeviceFleet CRD is not installed
                return []
            raise

    @staticmethod
    def _credentials(
        fleet: Fleet, live: Manifest | None, host: str, port: int
    ) -> tuple[list[DeviceCredentials], str, bool]:
        """Each device's credentials: kept from the live Secret, new for new devices, all new on rotation."""
        request = fleet.rotation_request
        handled = ((live or {}).get("metadata", {}).get("annotations") or {}).get(fleet_objects.ROTATED_FOR_ANNOTATION, "")
        rotated = live is not None and handled != request
        passwords: dict[str, str] = {}
        if live is not None and not rotated:
            for device_id, value in (live.get("data") or {}).items():
                try:
                    passwords[device_id] = DeviceCredentials.from_url(base64.b64decode(value).decode()).password
                except ValueError:
                    continue  # edited by hand into something unusable: a new password heals it
        credentials = [DeviceCredentials(d, passwords.get(d) or new_password(), host, port) for d in fleet.devices]
        return credentials, request, rotated

    def _sync_broker(self, access: TenantAccess, desired: dict[str, Identity]) -> SyncResult:
        """Bring the broker in step, unless it was found in step with the same desired state within a resync."""
        namespace, share_group = access.owner.namespace, access.share_group
        fingerprint = hashlib.sha256(
            "\n".join([share_group, *(f"{username} {identity.text_name}" for username, identity in sorted(desired.items()))]).encode()
        ).hexdigest()
        memo = self._broker_memo.get(namespace)
        now = self.clock()
        if memo and memo.fingerprint == fingerprint and now - memo.checked_at < self.settings.resync_seconds * 0.9:
            BROKER_SYNCS.labels("in_step").inc()
            return SyncResult()
        self._broker_memo.pop(namespace, None)
        host, port = self.addresses(namespace)
        try:
            with BROKER_SYNC_SECONDS.time(), DynamicSecurity(host, port, access.admin_tls, access.max_packet_bytes) as broker:
                result = broker.sync(desired, share_group)
        except Exception:
            BROKER_SYNCS.labels("error").inc()
            raise
        BROKER_SYNCS.labels("ok").inc()
        BROKER_CHANGES.labels("created").inc(len(result.created))
        BROKER_CHANGES.labels("modified").inc(len(result.modified))
        BROKER_CHANGES.labels("deleted").inc(len(result.deleted))
        self._broker_memo[namespace] = _BrokerMemo(fingerprint, self.clock())
        return result

    def _converge_simulators(
        self, owner: Owner, fleets: list[Fleet], rotations: dict[str, str], live: dict[str, Manifest]
    ) -> None:
        namespace = owner.namespace
        wanted = set()
        for fleet in fleets:
            manifest = with_hash(fleet_objects.simulator(owner, fleet, self.settings, rotations.get(fleet.uid, "")))
            name = manifest["metadata"]["name"]
            wanted.add(name)
            if needs_apply(manifest, live.get(name)):
                self.api.apply(manifest)
        for name in set(live) - wanted:
            self.api.delete(DEPLOYMENT, name, namespace)

    def _report(self, fleet: Fleet, report: _FleetReport) -> None:
        write_fleet_status(self.api, fleet.body, report.ready, report.reason, report.message, report.provisioned,
                           report.credentials_secret, report.stalled, report.reconciling)


def write_fleet_status(
    api: ClusterAPI,
    body: Manifest,
    ready: bool,
    reason: str,
    message: str,
    provisioned: int,
    credentials_secret: str | None = None,
    stalled: bool = False,
    reconciling: bool = False,
) -> bool:
    """Patch a fleet's status when it differs; post an Event when its Ready reason changes."""
    metadata = body["metadata"]
    generation = int(metadata.get("generation", 1))
    previous = body.get("status") or {}
    conditions = [
        Condition("Ready", TRUE if ready else FALSE, reason, message),
        Condition("Reconciling", TRUE if reconciling else FALSE, reason if reconciling else "Converged",
                  message if reconciling else "the fleet matches its desired state"),
        Condition("Stalled", TRUE if stalled else FALSE, reason if stalled else "NotStalled",
                  message if stalled else "no failure that retrying cannot fix"),
    ]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "provisioned": provisioned,
        "credentialsSecret": credentials_secret,
        "conditions": merge_conditions(previous.get("conditions"), conditions, generation),
    }
    if all(previous.get(key) == value for key, value in status.items()):
        return False
    api.patch_status(DEVICE_FLEET, metadata["name"], metadata["namespace"], status)
    before = find(previous.get("conditions"), "Ready") or {}
    if before.get("reason") != reason:
        FLEET_TRANSITIONS.labels(reason).inc()
        post_event(api, body, "Normal" if ready else "Warning", reason, message)
    return True


def report_not_in_customer_namespace(api: ClusterAPI, body: Manifest) -> bool:
    namespace = body["metadata"]["namespace"]
    message = (
        f"namespace {namespace} is not a customer namespace: create the fleet in customer-<name> of a "
        "CustomerInstance; no device of this fleet can connect"
    )
    return write_fleet_status(api, body, False, NOT_IN_CUSTOMER_NAMESPACE, message, 0, stalled=True)
