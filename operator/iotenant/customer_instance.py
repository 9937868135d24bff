"""Reconciling one CustomerInstance: licence, namespace, workloads, monitoring and honest status.

``reconcile`` reads, decides, converges and reports; the Kopf handlers only call it.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException

from iotenant import licence as licences
from iotenant.cluster_api import ClusterAPI, Manifest, kind_of
from iotenant.device_fleet import DeviceFleetReconciler, FleetsOutcome, TenantAccess
from iotenant.events import post_event
from iotenant.conditions import FALSE, TRUE, UNKNOWN, Condition, find, merge_conditions
from iotenant.converge import NAMESPACED_KINDS, Convergence, ObjectKey, controlled_by, converge, key_of, list_live
from iotenant.broker_admin_tls import AdminTLS
from iotenant.broker_admin_tls import issue as issue_admin_tls
from iotenant.broker_identities import new_share_group
from iotenant.plans import STRICTEST_BROKER_LIMITS, Plan
from iotenant.render import meta
from iotenant.render.fleet import FLEET_LABEL
from iotenant.render.monitoring import SERVICE_MONITOR_CRD
from iotenant.render.tenant_alerts import PROMETHEUS_RULE_CRD
from iotenant.render.inputs import GeneratedSecrets, StackInput
from iotenant.render.stack import render_customer_stack
from iotenant.settings import OperatorSettings
from iotenant.signing_keys import KeyRing
from iotenant.trusted_issuers import TrustedIssuers

log = logging.getLogger("iotenant.customer_instance")

PAUSED_ANNOTATION = "iotenant.io/paused"
DEVICE_FLEET_RETRY_SECONDS = 5.0
CUSTOMER_INSTANCE = kind_of("iotenant.io/v1alpha1", "CustomerInstance")
NAMESPACE = kind_of("v1", "Namespace")
SECRET = kind_of("v1", "Secret")
PVC = kind_of("v1", "PersistentVolumeClaim")

# spec.licence.secretRef names a namespace the operator does not take billing licences from. One
# answer for every such Secret, existing or not: the status reveals nothing about it.
UNTRUSTED_LICENCE_SOURCE = "UntrustedLicenceSource"
# Another, older CustomerInstance has the same customerId.
DUPLICATE_CUSTOMER_ID = "DuplicateCustomerId"
# Licence reasons that retrying cannot fix until someone changes the licence (or the instances).
UNFIXABLE_LICENCE_REASONS = {
    licences.MALFORMED,
    licences.UNKNOWN_KEY,
    licences.BAD_SIGNATURE,
    licences.WRONG_AUDIENCE,
    licences.WRONG_SUBJECT,
    licences.WRONG_ISSUER,
    licences.WEAK_KEY,
    licences.ISSUED_IN_FUTURE,
    UNTRUSTED_LICENCE_SOURCE,
    DUPLICATE_CUSTOMER_ID,
}


@dataclass(frozen=True)
class LicenceDecision:
    """The licence in force (verified), or why there is none."""

    verified: licences.VerifiedLicence | None
    reason: str
    message: str
    serving: bool
    expired_in_grace: bool = False

    @property
    def valid(self) -> bool:
        return self.verified is not None and not self.verified.expired


@dataclass
class Outcome:
    """What a reconcile found; the handler logs it, tests and benchmarks read it."""

    phase: str
    applied: list[ObjectKey] = field(default_factory=list)
    pruned: list[ObjectKey] = field(default_factory=list)
    status_written: bool = False
    licence_kid: str | None = None
    retry_after: float | None = None  # seconds: something (the broker) asked to be tried again soon


class Undecodable(ValueError):
    """A Secret value that is not base64 of UTF-8 text."""


def _decode(secret: Manifest | None, key: str) -> str | None:
    """A Secret's value as text; raises ``Undecodable`` when it is not text."""
    if not secret:
        return None
    value = (secret.get("data") or {}).get(key)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, TypeError) as error:
        raise Undecodable(f"key {key!r} is not UTF-8 text") from error


def _kept(secret: Manifest | None, key: str) -> str | None:
    """A generated value kept in a managed Secret; one that is not text is replaced like a missing one."""
    try:
        return _decode(secret, key)
    except Undecodable:
        log.warning("Secret %s: %s; a new value is generated", (secret or {}).get("metadata", {}).get("name"), key)
        return None


def _decoded(secret: Manifest | None) -> dict[str, str] | None:
    return {key: _kept(secret, key) or "" for key in (secret.get("data") or {})} if secret else None


def _kept_conditions(body: Manifest, replaced: tuple[str, ...]) -> list[Condition]:
    """The current conditions, except the types about to be replaced."""
    return [
        Condition(c["type"], c["status"], c["reason"], c["message"])
        for c in (body.get("status") or {}).get("conditions", [])
        if c["type"] not in replaced
    ]


def _ready_replicas(workload: Manifest | None) -> tuple[bool, str]:
    """Whether a Deployment or StatefulSet has all wanted replicas available at its current generation."""
    if workload is None:
        return False, "not created yet"
    spec, status = workload.get("spec", {}), workload.get("status", {})
    wanted = int(spec.get("replicas", 1))
    if status.get("observedGeneration", 0) < workload["metadata"].get("generation", 0):
        return False, "rollout not yet observed"
    ready = int(status.get("availableReplicas" if workload["kind"] == "Deployment" else "readyReplicas", 0) or 0)
    updated = int(status.get("updatedReplicas", 0) or 0)
    if wanted == 0:
        return True, "scaled to zero"
    if ready >= wanted and updated >= wanted:
        return True, f"{ready}/{wanted} ready"
    return False, f"{ready}/{wanted} ready"


class CustomerInstanceReconciler:
    def __init__(
        self,
        api: ClusterAPI,
        settings: OperatorSettings,
        catalogue: dict[str, Plan],
        keyring: Callable[[], KeyRing],
        trusted_issuers: TrustedIssuers,
        monitoring_crds: Callable[[], frozenset[str]],
        fleets: DeviceFleetReconciler | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.settings = settings
        self.catalogue = catalogue
        self.keyring = keyring
        self.trusted_issuers = trusted_issuers
        self.monitoring_crds = monitoring_crds
        self.fleets = fleets or DeviceFleetReconciler(api, settings)
        self.clock = clock

    # ----------------------------------------------------------------------------- licence

    def _operator_jwks(self) -> dict[str, Any]:
        return self.keyring().public_jwks

    def _external_licence(self, spec: dict[str, Any]) -> LicenceDecision:
        """A billing licence, read only from a trusted namespace and verified only by the keys of the
        issuer it names. Whatever the Secret holds, the answer is a decision, never an exception."""
        ref = spec["licence"]["secretRef"]
        if ref.get("namespace") not in self.settings.billing_namespaces:
            trusted = ", ".join(self.settings.billing_namespaces) or "none"
            return LicenceDecision(None, UNTRUSTED_LICENCE_SOURCE,
                                   f"spec.licence.secretRef must name a Secret in a namespace trusted for billing licences ({trusted})",
                                   serving=False)
        secret = self.api.get(SECRET, ref["name"], ref["namespace"])
        try:
            token = _decode(secret, "licence.jwt")
        except Undecodable as error:
            return LicenceDecision(None, licences.MALFORMED, f"Secret {ref['namespace']}/{ref['name']}: {error}", serving=False)
        if token is None:
            what = "has no key licence.jwt" if secret else "does not exist"
            return LicenceDecision(None, licences.MISSING, f"Secret {ref['namespace']}/{ref['name']} {what}", serving=False)
        issuer = self.trusted_issuers.issuer_of(licences.key_id_of(token))
        try:
            verified = licences.verify(token, self.trusted_issuers.jwks_of(issuer), spec["customerId"], now=self.clock(),
                                       expected_issuer=issuer)
        except licences.LicenceInvalid as invalid:
            return LicenceDecision(None, invalid.reason, invalid.message, serving=False)
        if not verified.expired:
            return LicenceDecision(verified, "Verified", f"licence {verified.claims.jti} verified", serving=True)
        overdue = self.clock() - verified.claims.exp
        grace = self.settings.expiry_grace_seconds
        expired_at = licences.iso8601(verified.claims.exp)
        if overdue < grace:
            remaining = licences.iso8601(verified.claims.exp + grace)
            message = f"licence expired at {expired_at}; service continues until {remaining}, then the instance is suspended"
            return LicenceDecision(verified, licences.EXPIRED, message, serving=True, expired_in_grace=True)
        message = f"licence expired at {expired_at} and the grace period is over: the instance is suspended"
        return LicenceDecision(verified, licences.EXPIRED, message, serving=False)

    def _issued_licence(self, spec: dict[str, Any], live_token: str | None) -> LicenceDecision:
        plan = self.catalogue.get(spec.get("plan", ""))
        if plan is None:
            return LicenceDecision(None, "UnknownPlan", f"plan {spec.get('plan')!r} is not in the plan catalogue", serving=False)
        ring = self.keyring()
        validity = int(spec.get("licence", {}).get("validityDays", 365)) * 86400
        now = self.clock()
        reason = "Issued"
        if live_token:
            try:
                current = licences.verify(live_token, ring.public_jwks, spec["customerId"], now=now, expected_issuer=self.settings.issuer)
                unchanged = (
                    current.claims.plan == plan.name
                    and current.claims.features == plan.features
                    and current.claims.limits == plan.limits
                    and current.claims.monitoring == plan.monitoring
                    and current.claims.validity_seconds == validity
                    and current.claims.iss == self.settings.issuer
                )
                fresh = not current.expired and current.claims.remaining_fraction(now) > self.settings.renew_fraction
                if unchanged and fresh and current.key_id == ring.active_kid:
                    return LicenceDecision(current, "Verified", f"licence {current.claims.jti} verified", serving=True)
                if not unchanged:
                    reason = "Reissued"
                elif current.key_id != ring.active_kid:
                    reason = "Resigned"
                else:
                    reason = "Renewed"
            except licences.LicenceInvalid as invalid:
                log.info("re-issuing the licence of %s: %s", spec["customerId"], invalid)
        token = licences.sign(plan.claims(spec["customerId"], self.settings.issuer, validity, now=now), ring.active)
        verified = licences.verify(token, ring.public_jwks, spec["customerId"], now=now)
        return LicenceDecision(verified, reason, f"licence {verified.claims.jti} issued for plan {plan.name}", serving=True)

    # ----------------------------------------------------------------------------- events

    def _broker_admin_tls(self, body: Manifest, namespace: str, live_secret: Callable[[str], Manifest | None]) -> AdminTLS:
        """The admin listener's certificates as kept, or new ones (and the broker restarts with them) when
        either half is lost: the broker is then driven again with a new CA, never with a guessed credential."""
        server, client = live_secret("broker-admin-listener"), live_secret("broker-admin")
        kept = AdminTLS.from_secrets(_decoded(server), _decoded(client))
        if kept is not None:
            return kept
        if server is not None or client is not None:
            self.post_event(body, "Warning", "BrokerAdminReissued",
                            "the broker's admin certificates were incomplete or lost: new ones are issued and the broker restarts with them")
        return issue_admin_tls(namespace)

    def post_event(self, body: Manifest, event_type: str, reason: str, message: str) -> None:
        post_event(self.api, {"apiVersion": meta.API_VERSION, "kind": "CustomerInstance", **body}, event_type, reason, message)

    # ----------------------------------------------------------------------------- status

    def _write_status(self, body: Manifest, status: dict[str, Any]) -> bool:
        """Patch status when it differs; post an Event per phase change and per condition flip."""
        previous = body.get("status") or {}
        if all(previous.get(key) == value for key, value in status.items()):
            return False
        self.api.patch_status(CUSTOMER_INSTANCE, body["metadata"]["name"], None, status)
        if previous.get("phase") != status.get("phase"):
            phase = status["phase"]
            warning = phase in ("Degraded", "Failed", "Suspended")
            ready = find(status.get("conditions"), "Ready") or {}
            self.post_event(body, "Warning" if warning else "Normal", phase, ready.get("message", phase))
        for condition in status.get("conditions", []):
            before = find(previous.get("conditions"), condition["type"])
            if before and before.get("status") != condition["status"] and condition["type"] not in ("Ready", "Reconciling"):
                kind = "Warning" if condition["status"] == FALSE or condition["type"] == "Stalled" else "Normal"
                self.post_event(body, kind, condition["reason"], f"{condition['type']}={condition['status']}: {condition['message']}")
        return True

    def _status(
        self, body: Manifest, phase: str, conditions: list[Condition], extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        generation = int(body["metadata"].get("generation", 1))
        previous = body.get("status") or {}
        status: dict[str, Any] = {
            "namespace": meta.namespace_for(body["metadata"]["name"]),
            "phase": phase,
            "observedGeneration": generation,
            "conditions": merge_conditions(previous.get("conditions"), conditions, generation),
        }
        # Keep lastTransitionTime stable: a timestamp is only new when the status flipped.
        status.update(extra or {})
        return status

    # ----------------------------------------------------------------------------- reconcile

    def reconcile(self, body: Manifest, customer_id_holder: str | None = None) -> Outcome:
        """``customer_id_holder``: the oldest CustomerInstance with this one's customerId; any other is refused."""
        metadata, spec = body["metadata"], body.get("spec") or {}
        name, uid = metadata["name"], metadata["uid"]
        owner = meta.Owner(name=name, uid=uid)
        annotations = metadata.get("annotations") or {}

        if annotations.get(PAUSED_ANNOTATION) == "true":
            previous = body.get("status") or {}
            conditions = _kept_conditions(body, ("Paused", "Reconciling"))
            conditions.append(Condition("Paused", TRUE, "Paused", f"reconciliation paused by annotation {PAUSED_ANNOTATION}"))
            conditions.append(Condition("Reconciling", FALSE, "Paused", "reconciliation is paused"))
            status = self._status(body, previous.get("phase", "Pending"), conditions)
            status["observedGeneration"] = previous.get("observedGeneration", 0)
            written = self._write_status(body, status)
            if written and not find(previous.get("conditions"), "Paused"):
                self.post_event(body, "Normal", "Paused", f"reconciliation paused: remove annotation {PAUSED_ANNOTATION} to resume")
            return Outcome(phase=status["phase"], status_written=written)

        namespace_name = owner.namespace
        namespace = self.api.get(NAMESPACE, namespace_name)
        duplicate = customer_id_holder is not None and customer_id_holder != name
        if duplicate and namespace is None:  # nothing was made for it: make nothing
            message = (f"customerId {spec.get('customerId')!r} belongs to CustomerInstance {customer_id_holder}, which is older; "
                       "one customer, one instance")
            conditions = [
                Condition("Ready", FALSE, DUPLICATE_CUSTOMER_ID, message),
                Condition("LicenceValid", FALSE, DUPLICATE_CUSTOMER_ID, message),
                Condition("WorkloadsReady", FALSE, DUPLICATE_CUSTOMER_ID, message),
                Condition("MonitoringReady", UNKNOWN, DUPLICATE_CUSTOMER_ID, "not evaluated"),
                Condition("Reconciling", FALSE, DUPLICATE_CUSTOMER_ID, message),
                Condition("Stalled", TRUE, DUPLICATE_CUSTOMER_ID, message),
            ]
            written = self._write_status(body, self._status(body, "Failed", conditions))
            return Outcome(phase="Failed", status_written=written)
        if namespace is not None and not controlled_by(namespace, uid):
            message = f"namespace {namespace_name} exists and is not owned by this CustomerInstance; iotenant never adopts it"
            conditions = [
                Condition("Ready", FALSE, "NamespaceConflict", message),
                Condition("LicenceValid", UNKNOWN, "NamespaceConflict", "not evaluated"),
                Condition("WorkloadsReady", FALSE, "NamespaceConflict", message),
                Condition("MonitoringReady", UNKNOWN, "NamespaceConflict", "not evaluated"),
                Condition("Reconciling", FALSE, "NamespaceConflict", message),
                Condition("Stalled", TRUE, "NamespaceConflict", message),
            ]
            written = self._write_status(body, self._status(body, "Failed", conditions))
            self.fleets.refuse_all(namespace_name)
            return Outcome(phase="Failed", status_written=written)

        live: dict[ObjectKey, Manifest] = {}
        fleet_owned: dict[ObjectKey, Manifest] = {}
        if namespace is not None:
            # One listing serves both: a fleet's own objects (credentials, simulator) go to the fleets.
            for key, item in list_live(self.api, namespace_name, f"{meta.CUSTOMER}={name}").items():
                (fleet_owned if FLEET_LABEL in item["metadata"].get("labels", {}) else live)[key] = item
            live[key_of({**namespace, "kind": "Namespace"})] = {**namespace, "kind": "Namespace", "apiVersion": "v1"}

        def live_secret(secret_name: str) -> Manifest | None:
            return live.get(("Secret", namespace_name, secret_name))

        external = bool(spec.get("licence", {}).get("secretRef"))
        if duplicate:  # made before the older one claimed the customerId: kept, but serving nobody
            decision = LicenceDecision(None, DUPLICATE_CUSTOMER_ID,
                                       f"customerId {spec.get('customerId')!r} belongs to CustomerInstance {customer_id_holder}, which is older",
                                       serving=False)
        elif external:
            decision = self._external_licence(spec)
        else:
            decision = self._issued_licence(spec, _kept(live_secret("licence"), "licence.jwt"))
        claims = decision.verified.claims if decision.verified else None

        generated = GeneratedSecrets(
            database_password=_kept(live_secret("database-credentials"), "password") or secrets.token_urlsafe(24),
            database_ingest_password=_kept(live_secret("database-credentials"), "ingest-password") or secrets.token_urlsafe(24),
            database_api_password=_kept(live_secret("database-credentials"), "api-password") or secrets.token_urlsafe(24),
            api_token=_kept(live_secret("api-token"), "token") or secrets.token_urlsafe(32),
            broker_admin_tls=self._broker_admin_tls(body, namespace_name, live_secret),
            ingest_broker_password=_kept(live_secret("broker-service-credentials"), "ingest-password") or secrets.token_urlsafe(24),
            api_broker_password=_kept(live_secret("broker-service-credentials"), "api-password") or secrets.token_urlsafe(24),
            ingest_share_group=_kept(live_secret("broker-service-credentials"), "ingest-share-group") or new_share_group(),
        )
        suspended_by_spec = bool(spec.get("suspended"))
        serving = decision.serving and not suspended_by_spec
        crds = self.monitoring_crds()
        monitor_crd = SERVICE_MONITOR_CRD in crds
        plan = self.catalogue.get(claims.plan) if claims else None
        stack = StackInput(
            owner=owner,
            spec=spec,
            settings=self.settings,
            secrets=generated,
            claims=claims,
            licence_token=decision.verified.token if decision.verified else "",
            # The workloads verify with the keys of the issuer that signed their licence, and no other.
            jwks=self.trusted_issuers.jwks_of(decision.verified.claims.iss if decision.verified else None) if external
            else self._operator_jwks(),
            quota=plan.quota if plan else None,
            broker_limits=plan.broker if plan else STRICTEST_BROKER_LIMITS,
            serving=serving,
            service_monitor_crd_present=monitor_crd,
            prometheus_rule_crd_present=PROMETHEUS_RULE_CRD in crds,
        )
        desired = render_customer_stack(stack)
        result: Convergence = converge(self.api, desired, live, uid)
        objects = result.objects

        workloads_ready: list[str] = []
        workloads_waiting: list[str] = []
        for kind, workload in (("StatefulSet", "broker"), ("StatefulSet", "database"), ("StatefulSet", "ingest"), ("Deployment", "api")):
            ready, detail = _ready_replicas(objects.get((kind, namespace_name, workload)))
            (workloads_ready if ready else workloads_waiting).append(f"{workload} {detail}")

        broker_ready, _ = _ready_replicas(objects.get(("StatefulSet", namespace_name, "broker")))
        fleets = self._reconcile_fleets(
            TenantAccess(
                owner=owner,
                limits=claims.limits if claims else None,
                serving=serving,
                not_serving_reason="Suspended" if decision.verified else "NoValidLicence",
                not_serving_message=(
                    "the customer instance is suspended: no device can connect" if decision.verified
                    else f"no valid licence ({decision.message}): no device can connect"
                ),
                broker_ready=serving and broker_ready,
                admin_tls=generated.broker_admin_tls,
                ingest_password=generated.ingest_broker_password,
                api_password=generated.api_broker_password,
                share_group=generated.ingest_share_group,
                max_packet_bytes=stack.broker_limits.maxPacketBytes,
            ),
            fleet_owned,
            body,
        )

        tier = claims.monitoring.tier if claims else None
        if tier == "dedicated":
            monitoring_ok, detail = _ready_replicas(objects.get(("StatefulSet", namespace_name, "prometheus")))
            monitoring = Condition(
                "MonitoringReady",
                TRUE if monitoring_ok else FALSE,
                "PrometheusReady" if monitoring_ok else "PrometheusNotReady",
                f"dedicated Prometheus {detail}",
            )
        elif tier == "shared":
            monitoring = (
                Condition("MonitoringReady", TRUE, "ServiceMonitorCreated", "ServiceMonitor iotenant scrapes ingest and api")
                if monitor_crd
                else Condition(
                    "MonitoringReady",
                    FALSE,
                    "MonitoringCRDMissing",
                    "CRD servicemonitors.monitoring.coreos.com is not installed: install the Prometheus Operator; "
                    "the ServiceMonitor is created as soon as the CRD appears",
                )
            )
        else:
            monitoring = Condition("MonitoringReady", FALSE, "NoValidLicence", "no monitoring tier without a verified licence")

        licence_condition = Condition(
            "LicenceValid", TRUE if decision.valid else FALSE, decision.reason if not decision.valid else "Verified", decision.message
        )
        stalled_reason = decision.reason if decision.verified is None and decision.reason in UNFIXABLE_LICENCE_REASONS else None
        all_ready = not workloads_waiting
        if not serving:
            workloads = Condition("WorkloadsReady", FALSE, "Suspended" if decision.verified else "NoValidLicence", "broker, ingest and api are scaled to zero; data is kept")
        elif all_ready:
            workloads = Condition("WorkloadsReady", TRUE, "AllAvailable", "; ".join(workloads_ready))
        else:
            workloads = Condition("WorkloadsReady", FALSE, "Provisioning", "waiting for " + "; ".join(workloads_waiting))

        if suspended_by_spec or (decision.verified is not None and not decision.serving):
            phase = "Suspended"
            why = "spec.suspended is true" if suspended_by_spec else decision.message
            ready = Condition("Ready", FALSE, "Suspended", why)
        elif decision.verified is None:
            phase = "Failed" if stalled_reason else "Pending"
            ready = Condition("Ready", FALSE, decision.reason, decision.message)
        elif not all_ready:
            phase = "Provisioning"
            ready = Condition("Ready", FALSE, "Provisioning", workloads.message)
        elif decision.expired_in_grace:
            phase = "Degraded"
            ready = Condition("Ready", FALSE, licences.EXPIRED, decision.message)
        else:
            phase = "Degraded" if monitoring.status != TRUE else "Ready"
            message = "licence valid and every workload available"
            if phase == "Degraded":
                message += f"; monitoring degraded: {monitoring.message}"
            ready = Condition("Ready", TRUE, "Ready", message)

        in_progress = phase == "Provisioning" or bool(result.applied)
        conditions = [
            ready,
            licence_condition,
            workloads,
            monitoring,
            Condition("Reconciling", TRUE if in_progress else FALSE, "Progressing" if in_progress else "Converged",
                      workloads.message if in_progress else "the namespace matches the desired state"),
            Condition("Stalled", TRUE if stalled_reason else FALSE, stalled_reason or "NotStalled",
                      decision.message if stalled_reason else "no failure that retrying cannot fix"),
        ]
        extra: dict[str, Any] = {
            "endpoints": {
                # What devices connect to: the address their credentials name.
                "mqtt": "mqtt://" + self.settings.device_broker_address(namespace_name, name),
                "api": f"http://api.{namespace_name}.svc:8080",
            },
            "devices": {"provisioned": fleets.provisioned, "limit": claims.limits.maxDevices if claims else 0},
        }
        if decision.verified:
            verified_claims = decision.verified.claims
            extra["licence"] = {
                "id": verified_claims.jti,
                "plan": verified_claims.plan,
                "issuer": verified_claims.iss,
                "keyId": decision.verified.key_id,
                "issuedAt": licences.iso8601(verified_claims.iat),
                "expiresAt": licences.iso8601(verified_claims.exp),
                "monitoringTier": verified_claims.monitoring.tier,
            }
        written = self._write_status(body, self._status(body, phase, conditions, extra))
        if decision.reason in ("Issued", "Reissued", "Resigned", "Renewed") and decision.verified:
            self.post_event(body, "Normal", f"Licence{decision.reason}", decision.message)
        return Outcome(
            phase=phase,
            applied=result.applied,
            pruned=result.pruned,
            status_written=written,
            licence_kid=decision.verified.key_id if decision.verified else None,
            retry_after=fleets.retry_after,
        )

    def _reconcile_fleets(self, access: TenantAccess, owned: dict[ObjectKey, Manifest], body: Manifest) -> FleetsOutcome:
        """The namespace's DeviceFleets; their trouble is reported on them and never fails the instance."""
        try:
            return self.fleets.reconcile(access, owned)
        except Exception as error:
            log.exception("reconciling the device fleets of %s failed", access.owner.namespace)
            self.post_event(body, "Warning", "DeviceFleetsFailed", f"reconciling device fleets failed: {type(error).__name__}: {error}")
            return FleetsOutcome(retry_after=DEVICE_FLEET_RETRY_SECONDS)

    def report_failure(self, body: Manifest, error: Exception) -> None:
        """A reconcile that raised: Ready=Unknown and Reconciling=True with the error, and a Warning Event."""
        message = f"{type(error).__name__}: {error}"[:1000]
        previous = body.get("status") or {}
        kept = _kept_conditions(body, ("Ready", "Reconciling"))
        conditions = [Condition("Ready", UNKNOWN, "ReconcileError", message), Condition("Reconciling", TRUE, "ReconcileError", message), *kept]
        generation = int(body["metadata"].get("generation", 1))
        try:
            merged = merge_conditions(previous.get("conditions"), conditions, generation)
            self.api.patch_status(CUSTOMER_INSTANCE, body["metadata"]["name"], None, {"conditions": merged})
            self.post_event(body, "Warning", "ReconcileError", message)
        except Exception:  # the API itself may be what failed
            log.exception("could not report the failure of %s", body["metadata"]["name"])

    # ----------------------------------------------------------------------------- deletion

    def finalize(self, body: Manifest) -> None:
        """Delete: the namespace goes (with everything in it). Retain: keep it, labelled, unowned, unmanaged."""
        metadata, spec = body["metadata"], body.get("spec") or {}
        name, uid = metadata["name"], metadata["uid"]
        namespace_name = meta.namespace_for(name)
        namespace = self.api.get(NAMESPACE, namespace_name)
        if namespace is None or not controlled_by(namespace, uid):
            return  # already gone, or never ours: nothing to do, nothing to wait for
        if spec.get("deletionPolicy", "Delete") == "Delete":
            self.api.delete(NAMESPACE, namespace_name)
            self.post_event(body, "Normal", "NamespaceDeleted", f"namespace {namespace_name} and its data are being deleted")
            return
        release = {"metadata": {"ownerReferences": None, "labels": {meta.RETAINED_FROM: name, meta.MANAGED_BY: None}}}
        for kind in (*NAMESPACED_KINDS, PVC):
            try:
                items = self.api.list(kind, namespace_name, f"{meta.CUSTOMER}={name}")
            except ApiException as error:
                if error.status == 404:
                    continue
                raise
            for item in items:
                self.api.merge_patch(kind, item["metadata"]["name"], namespace_name, release)
        self.api.merge_patch(NAMESPACE, namespace_name, None, release)
        self.post_event(body, "Normal", "NamespaceRetained", f"namespace {namespace_name} and its volumes are kept, no longer managed")
