"""Reconciling the DeviceFleets of one customer namespace: admission, credentials, broker, simulators, status.

The CustomerInstance reconcile calls ``DeviceFleetReconciler.reconcile`` with what it verified (the
licence limits, whether the tenant is serving, the broker's admin password). Admission is decided
for the whole namespace at once (fleets are admitted oldest first), so one call handles every fleet.
The broker is then made to hold exactly the service identities and the admitted devices.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from prometheus_client import Counter, Histogram

from iotenant.device_fleet import manifests as fleet_objects
from iotenant.device_fleet.admission import ADMITTED, Admission, Fleet, admit
from iotenant.device_fleet.credentials import fleet_credentials
from iotenant.device_fleet.status import ADMITTING, FleetReport, report_not_in_customer_namespace, write_fleet_status
from iotenant.kube.apply import ObjectKey, apply_if_changed
from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.kube.events import post_event
from iotenant.kube.watch_cache import WatchCache
from iotenant.licensing.licence import Limits
from iotenant.mosquitto.addresses import BrokerAddresses
from iotenant.mosquitto.admin_tls import AdminTLS
from iotenant.mosquitto.device_endpoint import DeviceEndpoint
from iotenant.mosquitto.dynamic_security import AdmissionProgress, BrokerCommandFailed, BrokerUnavailable, DynamicSecurity
from iotenant.mosquitto.identities import Identity, desired_roles, fleet_label, service_identities
from iotenant.mosquitto.sync_plan import LiveState, SyncResult, plan_commands
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.kinds import DEPLOYMENT, DEVICE_FLEET
from iotenant.vocabulary.meta import Owner

log = logging.getLogger("iotenant.device_fleet")


# Ready=False reasons besides the admission refusals.
BROKER_UNAVAILABLE = "BrokerUnavailable"
CREDENTIALS_TOO_LARGE = "CredentialsTooLarge"
BROKER_RETRY_SECONDS = 3.0
# A fleet whose devices are being created in the broker says how far it got, at most this often.
PROGRESS_SECONDS = 2.0

BROKER_SYNCS = Counter(
    "iotenant_operator_broker_syncs_total", "Tenant broker identity syncs by result (in_step: skipped, found in step recently)", ["result"]
)
BROKER_CHANGES = Counter("iotenant_operator_broker_identity_changes_total", "Broker clients created, modified or deleted", ["change"])
BROKER_SYNC_SECONDS = Histogram(
    "iotenant_operator_broker_sync_seconds", "Time of one tenant broker identity sync that reached the broker",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 180, 600),
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
    device_endpoint: DeviceEndpoint  # what every credential names
    simulators_internal: bool = False  # devices take TLS only: simulators use the broker's internal listener


@dataclass
class FleetsOutcome:
    fleets: int = 0
    provisioned: int = 0
    retry_after: float | None = None
    broker: SyncResult = field(default_factory=SyncResult)


@dataclass(frozen=True)
class _FleetMemo:
    """A fleet's identities as a reconcile left them, and what they were made from: while the fleet's
    devices, its rotation request, its Secret (by resourceVersion) and the endpoint are the same, the
    next reconcile takes them as they are instead of parsing and rendering every credential again
    (ten fleets of 10,000 devices: about 2 s a reconcile)."""

    namespace: str
    made_from: tuple[object, ...]
    identities: dict[str, Identity]


def _made_from(fleet: Fleet, secret: Manifest | None, endpoint: DeviceEndpoint) -> tuple[object, ...] | None:
    version = ((secret or {}).get("metadata") or {}).get("resourceVersion")
    return None if not version else (fleet.name, fleet.devices, fleet.rotation_request, version, endpoint)


@dataclass(frozen=True)
class _BrokerMemo:
    checked_at: float  # when the broker's clients were last listed in full
    state: LiveState  # what the broker holds since the last sync


class DeviceFleetReconciler:
    def __init__(
        self,
        api: ClusterAPI,
        cache: WatchCache,
        settings: OperatorSettings,
        addresses: BrokerAddresses | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.cache = cache
        self.settings = settings
        self.addresses = addresses or BrokerAddresses(settings.broker_address_template, settings.broker_addresses_file)
        self.clock = clock
        self._broker_memo: dict[str, _BrokerMemo] = {}
        self._fleet_memo: dict[str, _FleetMemo] = {}

    # ----------------------------------------------------------------------------- reconcile

    def reconcile(self, access: TenantAccess, owned: dict[ObjectKey, Manifest]) -> FleetsOutcome:
        """``owned``: the fleets' objects (label iotenant.io/fleet) as the instance's reconcile listed them."""
        fleets = self._list_fleets(access.owner.namespace)
        self._forget_fleets_gone(access.owner.namespace, {fleet.uid for fleet in fleets})
        live_secrets = {name: item for (kind, _ns, name), item in owned.items() if kind == "Secret"}
        live_simulators = {name: item for (kind, _ns, name), item in owned.items() if kind == "Deployment"}
        if not access.serving or access.limits is None:
            self._converge_simulators(access, [], {}, live_simulators)
            for fleet in fleets:
                self._report(fleet, FleetReport(False, access.not_serving_reason, access.not_serving_message, 0))
            return FleetsOutcome(fleets=len(fleets))
        admissions = admit(fleets, access.limits)
        desired = {identity.username: identity for identity in service_identities(access.ingest_password, access.api_password)}
        provisioned, refused = self._provision(access, admissions, live_secrets, desired)
        outcome = FleetsOutcome(fleets=len(fleets))
        admitting = self._progress_reporter([admission.fleet for admission, _ in provisioned])
        outcome.broker, broker_error = self._bring_broker_in_step(access, desired, bool(fleets), admitting)
        if broker_error and fleets:
            outcome.retry_after = BROKER_RETRY_SECONDS
        self._converge_simulators(
            access,
            [admission.fleet for admission, _ in provisioned if admission.fleet.simulator_enabled],
            {admission.fleet.uid: rotated_for for admission, rotated_for in provisioned},
            live_simulators,
        )
        outcome.provisioned = self._report_all(admissions, refused, broker_error)
        return outcome

    # ----------------------------------------------------------------------------- steps

    def _provision(self, access: TenantAccess, admissions: list[Admission], live_secrets: dict[str, Manifest],
                   desired: dict[str, Identity]) -> tuple[list[tuple[Admission, str]], dict[str, FleetReport]]:
        """Each admitted fleet's credentials Secret, and its devices added to ``desired``; returns the
        provisioned fleets (with their handled rotation request) and the refused ones' reports by uid."""
        provisioned: list[tuple[Admission, str]] = []
        refused: dict[str, FleetReport] = {}
        for admission in admissions:
            fleet = admission.fleet
            if not admission.admitted:
                refused[fleet.uid] = FleetReport(False, admission.reason, admission.message, 0, stalled=True)
                continue
            secret_name = fleet_objects.credentials_secret_name(fleet.name)
            memo = self._fleet_memo.get(fleet.uid)
            if memo is not None and memo.made_from == _made_from(fleet, live_secrets.get(secret_name), access.device_endpoint):
                desired.update(memo.identities)
                provisioned.append((admission, fleet.rotation_request))
                continue
            credentials, rotated_for, rotated = fleet_credentials(fleet, live_secrets.get(secret_name), access.device_endpoint)
            size = fleet_objects.credentials_data_size(credentials)
            if size > fleet_objects.SECRET_DATA_LIMIT:
                message = (
                    f"the credentials of {len(credentials)} devices take {size} bytes, more than a Secret holds "
                    f"({fleet_objects.SECRET_DATA_LIMIT}); use shorter device ids or split the fleet"
                )
                refused[fleet.uid] = FleetReport(False, CREDENTIALS_TOO_LARGE, message, 0, stalled=True)
                continue
            applied = apply_if_changed(self.api, fleet_objects.credentials_secret(access.owner, fleet, credentials, rotated_for),
                                       live_secrets.get(secret_name))
            if rotated:
                post_event(self.api, fleet.body, "Normal", "CredentialsRotated",
                           f"new passwords for {len(credentials)} devices in Secret {secret_name}; the old ones are refused")
            label = fleet_label(fleet.name)
            identities = {c.device_id: Identity(c.device_id, c.password, None, label) for c in credentials}
            desired.update(identities)
            provisioned.append((admission, rotated_for))
            made_from = _made_from(fleet, applied or live_secrets.get(secret_name), access.device_endpoint)
            if made_from is not None:
                self._fleet_memo[fleet.uid] = _FleetMemo(access.owner.namespace, made_from, identities)
        return provisioned, refused

    def _bring_broker_in_step(self, access: TenantAccess, desired: dict[str, Identity], has_fleets: bool,
                              progress: AdmissionProgress) -> tuple[SyncResult, str | None]:
        """The broker's identities made ``desired``; returns what changed, or why the broker is not in step."""
        namespace = access.owner.namespace
        if not access.broker_ready:
            self.forget(namespace)  # a broker that comes back may have lost its volume: check it in full
            return SyncResult(), "waiting for the broker to be available"
        try:
            return self._sync_broker(access, desired, progress), None
        except (BrokerUnavailable, BrokerCommandFailed) as error:
            # Without fleets only the service identities are checked: retried at the next resync.
            log.log(logging.WARNING if has_fleets else logging.DEBUG, "%s: broker identities not in step: %s", namespace, error)
            return SyncResult(), str(error)

    def _report_all(self, admissions: list[Admission], refused: dict[str, FleetReport], broker_error: str | None) -> int:
        """Every fleet's status; returns how many devices can connect."""
        provisioned = 0
        for admission in admissions:
            fleet = admission.fleet
            if fleet.uid in refused:
                self._report(fleet, refused[fleet.uid])
                continue
            secret_name = fleet_objects.credentials_secret_name(fleet.name)
            if broker_error:
                previous = int((fleet.body.get("status") or {}).get("provisioned", 0) or 0)
                message = f"{len(fleet.devices)} devices admitted; broker not yet in step: {broker_error}"
                report = FleetReport(False, BROKER_UNAVAILABLE, message, previous, secret_name, reconciling=True)
            else:
                message = f"{len(fleet.devices)} devices can connect; credentials in Secret {secret_name}. {admission.message}"
                report = FleetReport(True, ADMITTED, message, len(fleet.devices), secret_name)
                provisioned += len(fleet.devices)
            self._report(fleet, report)
        return provisioned

    def refuse_all(self, namespace: str) -> None:
        """``namespace`` is not the customer's (it belongs to someone else): none of its fleets is served."""
        for fleet in self._list_fleets(namespace):
            report_not_in_customer_namespace(self.api, fleet.body)

    def forget(self, namespace: str) -> None:
        self._broker_memo.pop(namespace, None)
        self._forget_fleets_gone(namespace, set())

    def _forget_fleets_gone(self, namespace: str, present: set[str]) -> None:
        for uid in [uid for uid, memo in self._fleet_memo.items() if memo.namespace == namespace and uid not in present]:
            del self._fleet_memo[uid]

    # ----------------------------------------------------------------------------- parts of the steps

    def _list_fleets(self, namespace: str) -> list[Fleet]:
        return [Fleet.from_body(body) for body in self.cache.in_namespace(DEVICE_FLEET, namespace)]

    def _sync_broker(self, access: TenantAccess, desired: dict[str, Identity], progress: AdmissionProgress) -> SyncResult:
        """Bring the broker in step, unless what the last sync left (within a resync of a full listing) already is the desired state."""
        namespace, share_group = access.owner.namespace, access.share_group
        memo = self._broker_memo.pop(namespace, None)
        if memo is not None and self.clock() - memo.checked_at >= self.settings.resync_seconds * 0.9:
            memo = None  # a full check (listing what the broker holds) is due
        if memo is not None and not plan_commands(memo.state, desired, desired_roles(share_group, desired.values()))[0]:
            self._broker_memo[namespace] = memo  # nothing to send: no connection either
            BROKER_SYNCS.labels("in_step").inc()
            return SyncResult()
        host, port = self.addresses(namespace)
        try:
            with BROKER_SYNC_SECONDS.time(), DynamicSecurity(host, port, access.admin_tls, access.max_packet_bytes) as broker:
                # Within a resync of a full check, the broker is taken to hold what that check left.
                result, state = broker.sync(desired, share_group, memo.state if memo is not None else None, progress)
        except Exception:
            BROKER_SYNCS.labels("error").inc()
            raise
        BROKER_SYNCS.labels("ok").inc()
        BROKER_CHANGES.labels("created").inc(len(result.created))
        BROKER_CHANGES.labels("modified").inc(len(result.modified))
        BROKER_CHANGES.labels("deleted").inc(len(result.deleted))
        self._broker_memo[namespace] = _BrokerMemo(memo.checked_at if memo is not None else self.clock(), state)
        return result

    def _progress_reporter(self, fleets: list[Fleet]) -> AdmissionProgress:
        """Tells each fleet whose new devices are being created how far the broker got: after the first
        control message, then at most every ``PROGRESS_SECONDS`` (a 100,000-device admission takes minutes)."""
        by_label = {fleet_label(fleet.name): fleet for fleet in fleets}
        last_written = [-math.inf]

        def report(created: collections.Counter[str], planned: collections.Counter[str]) -> None:
            if self.clock() - last_written[0] < PROGRESS_SECONDS:
                return
            last_written[0] = self.clock()
            for label, count in planned.items():
                fleet = by_label.get(label)
                if fleet is None or created[label] >= count:
                    continue
                message = f"{created[label]:,} of {count:,} new devices in the broker so far; the others follow"
                note = FleetReport(False, ADMITTING, message, len(fleet.devices) - (count - created[label]),
                                   fleet_objects.credentials_secret_name(fleet.name), reconciling=True)
                self._report(fleet, note)

        return report

    def _converge_simulators(
        self, access: TenantAccess, fleets: list[Fleet], rotations: dict[str, str], live: dict[str, Manifest]
    ) -> None:
        namespace = access.owner.namespace
        wanted = set()
        for fleet in fleets:
            manifest = fleet_objects.simulator(access.owner, fleet, self.settings, rotations.get(fleet.uid, ""),
                                               internal_listener=access.simulators_internal)
            name = manifest["metadata"]["name"]
            wanted.add(name)
            apply_if_changed(self.api, manifest, live.get(name))
        for name in set(live) - wanted:
            self.api.delete(DEPLOYMENT, name, namespace)

    def _report(self, fleet: Fleet, report: FleetReport) -> None:
        """Written against the fleet as the cache holds it now: a progress report may have changed its
        status since the reconcile listed it, and a status equal to the listed one would not be written."""
        write_fleet_status(self.api, self.cache.get(DEVICE_FLEET, fleet.name, fleet.namespace) or fleet.body, report)


