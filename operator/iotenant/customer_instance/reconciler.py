"""Reconciling one CustomerInstance: licence, namespace, workloads, fleets, monitoring and honest status.

``reconcile`` is a short list of named steps; the rules live beside it (``licence_decision``,
``kept_secrets``, ``status``), the manifests in ``iotenant.render``, the writes in ``iotenant.kube``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from iotenant.customer_instance import kept_secrets, status as rules
from iotenant.customer_instance.broker_tls import BrokerTLS, broker_tls
from iotenant.customer_instance.finalize import finalize
from iotenant.customer_instance.licence_decision import DUPLICATE_CUSTOMER_ID, ISSUING_REASONS, LicenceDecider, LicenceDecision, duplicate
from iotenant.customer_instance.live_objects import LiveObjects, live_objects
from iotenant.customer_instance.maintenance_window import Deferral, plan_restarts
from iotenant.customer_instance.volume_growth import announce_refusals, grow_volumes
from iotenant.device_fleet.reconciler import DeviceFleetReconciler, FleetsOutcome, TenantAccess
from iotenant.kube.apply import Convergence, ObjectKey, apply_if_changed, controlled_by, converge, key_of
from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.kube.conditions import FALSE, UNKNOWN, find
from iotenant.kube.events import post_event
from iotenant.kube.status import write_status
from iotenant.kube.watch_cache import NotListedYet, WatchCache
from iotenant.licensing.plans import STRICTEST_BROKER_LIMITS, Plan
from iotenant.licensing.signing_keys import KeyRing
from iotenant.licensing.trusted_issuers import TrustedIssuers
from iotenant.mosquitto.addresses import split_address
from iotenant.mosquitto.admin_tls import AdminTLS, issue as issue_admin_tls
from iotenant.mosquitto.device_endpoint import DEVICE_SERVICE, BrokerExposure, DeviceEndpoint, device_endpoint
from iotenant.render import broker as broker_part, monitoring, parts
from iotenant.render.broker import broker_tls_secret
from iotenant.render.cert_manager import CERTIFICATE_CRD
from iotenant.render.image_pull import PullSecret
from iotenant.render.ingest_and_api import api_url
from iotenant.render.inputs import StackInput
from iotenant.render.operator_access import secret_reader_binding
from iotenant.render.stack import render_customer_stack
from iotenant.render.tenant_alerts import PROMETHEUS_RULE_CRD
from iotenant.settings import OperatorSettings
from iotenant.vocabulary import meta
from iotenant.vocabulary.kinds import CUSTOMER_INSTANCE, NAMESPACE, ROLE_BINDING, SECRET

log = logging.getLogger("iotenant.customer_instance")

PAUSED_ANNOTATION = rules.PAUSED_ANNOTATION
DEVICE_FLEET_RETRY_SECONDS = 5.0
# While the cache has not listed a namespace's Secrets (its RoleBinding is being made), look this often.
SECRET_ACCESS_RETRY_SECONDS = 1.0
# A customer's own TLS Secret carries no label of ours (the cache does not hold it): while it is awaited, look this often.
TLS_RECHECK_SECONDS = 10.0
# While a tenant provisions, a status that only says how far it got is written at most this often: a
# normal provisioning writes its status twice (started, Ready); a stuck one still tells what it waits for.
PROGRESS_REPORT_SECONDS = 300.0


def volume_class(live: Manifest | None, wanted: str | None) -> str | None:
    """The StorageClass of a StatefulSet's volume: the one it was made with (volume claim templates cannot
    change, so a new operator default never breaks a tenant), else ``wanted``."""
    if live is None:
        return wanted
    templates = (live.get("spec") or {}).get("volumeClaimTemplates") or []
    return templates[0].get("spec", {}).get("storageClassName") if templates else wanted


@dataclass
class Outcome:
    """What a reconcile found; the handler logs it, tests and benchmarks read it."""

    phase: str
    applied: list[ObjectKey] = field(default_factory=list)
    pruned: list[ObjectKey] = field(default_factory=list)
    status_written: bool = False
    licence_kid: str | None = None
    retry_after: float | None = None  # seconds: something (the broker) asked to be tried again soon


class CustomerInstanceReconciler:
    def __init__(
        self,
        api: ClusterAPI,
        cache: WatchCache,
        settings: OperatorSettings,
        catalogue: dict[str, Plan],
        keyring: Callable[[], KeyRing],
        trusted_issuers: TrustedIssuers,
        optional_crds: Callable[[], frozenset[str]],
        fleets: DeviceFleetReconciler | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.cache = cache
        self.settings = settings
        self.catalogue = catalogue
        self.optional_crds = optional_crds
        self.fleets = fleets or DeviceFleetReconciler(api, cache, settings)
        self.licences = LicenceDecider(api, settings, catalogue, keyring, trusted_issuers, clock)
        self._progress_reported: dict[str, float] = {}  # uid -> when a provisioning tenant's progress was last written
        # The operator's image pull Secrets as last read (kube.pull_secrets), copied into every tenant.
        self.pull_secrets: tuple[PullSecret, ...] = ()
        self._volume_refusals: dict[str, dict[str, str]] = {}  # uid -> StatefulSet -> why its volumes cannot grow (announced)
        self._deferred: dict[str, list[str]] = {}  # uid -> workloads whose restart waits for the window (announced)
        self.clock = clock

    def post_event(self, body: Manifest, event_type: str, reason: str, message: str) -> None:
        post_event(self.api, {"apiVersion": meta.API_VERSION, "kind": "CustomerInstance", **body}, event_type, reason, message)

    def _write(self, body: Manifest, status: dict[str, Any], events: Callable[[dict[str, Any], dict[str, Any]], list[Any]] = rules.events
               ) -> bool:
        return write_status(self.api, CUSTOMER_INSTANCE, body, status, events)

    # ----------------------------------------------------------------------------- reconcile

    def reconcile(self, body: Manifest, customer_id_holder: str | None = None) -> Outcome:
        """``customer_id_holder``: the oldest CustomerInstance with this one's customerId; any other is refused."""
        metadata, spec = body["metadata"], body.get("spec") or {}
        if (metadata.get("annotations") or {}).get(PAUSED_ANNOTATION) == "true":
            return self._pause(body)
        owner = meta.Owner(name=metadata["name"], uid=metadata["uid"])
        namespace = self.cache.get(NAMESPACE, owner.namespace)
        is_duplicate = customer_id_holder is not None and customer_id_holder != owner.name
        refusal = self._refusal(body, namespace, customer_id_holder if is_duplicate else None)
        if refusal is not None:
            return refusal
        try:
            live = live_objects(self.cache, owner, namespace)
        except NotListedYet as waiting:
            return self._await_secret_access(body, owner, waiting)
        decision = duplicate(spec.get("customerId", ""), str(customer_id_holder)) if is_duplicate else self._decide_licence(spec, live)
        tls, endpoint = self._broker_tls(spec, owner, live), self._device_endpoint(spec, owner, live)
        stack = self._stack_input(body, owner, decision, live, tls, endpoint)
        deferral = self._deferral(body, render_customer_stack(stack), live.stack)
        growth = grow_volumes(self.api, owner, deferral.desired, deferral.live)
        self._volume_refusals[owner.uid] = announce_refusals(growth, self._volume_refusals.get(owner.uid, {}),
                                                             lambda message: self.post_event(body, "Warning", "VolumeExpansionRefused", message))
        result: Convergence = converge(self.api, growth.desired, growth.live, owner.uid)
        result.objects.update(deferral.waiting)  # they run as they were: their status says whether they are ready
        fleets = self._reconcile_fleets(self._tenant_access(stack, decision, live, result.objects, endpoint), live.fleets, body)
        found = self._findings(stack, decision, live, result, tls)
        phase, conditions = rules.phase_and_conditions(found)
        extra = {**self._status_extra(stack, decision, fleets), **deferral.status()}
        written = self._write_outcome(body, rules.status_document(body, phase, conditions, extra))
        if decision.reason in ISSUING_REASONS and decision.verified and (body.get("status") or {}).get("licence"):
            # A new instance's first licence is named by its status (Ready's message); a later issue is news of its own.
            self.post_event(body, "Normal", f"Licence{decision.reason}", decision.message)
        retry = [delay for delay in (fleets.retry_after, TLS_RECHECK_SECONDS if tls.pending else None) if delay is not None]
        return Outcome(phase=phase, applied=result.applied, pruned=result.pruned, status_written=written,
                       licence_kid=decision.verified.key_id if decision.verified else None, retry_after=min(retry, default=None))

    def _write_outcome(self, body: Manifest, status: dict[str, Any]) -> bool:
        """One status write per outcome: while provisioning, mere progress is written at most every
        PROGRESS_REPORT_SECONDS."""
        uid, now = body["metadata"]["uid"], time.monotonic()
        last = self._progress_reported.get(uid)
        if status.get("phase") != "Provisioning":
            self._progress_reported.pop(uid, None)
        elif last is not None and now - last < PROGRESS_REPORT_SECONDS and rules.only_progress(body.get("status") or {}, status):
            return False
        written = self._write(body, status)
        if written and status.get("phase") == "Provisioning":
            self._progress_reported[uid] = now
        return written

    # ----------------------------------------------------------------------------- steps

    def _pause(self, body: Manifest) -> Outcome:
        previous = body.get("status") or {}
        status = rules.paused_status(body)

        def paused_events(_previous: dict[str, Any], _status: dict[str, Any]) -> list[Any]:
            if find(previous.get("conditions"), "Paused"):
                return []
            return [("Normal", "Paused", f"reconciliation paused: remove annotation {PAUSED_ANNOTATION} to resume")]

        return Outcome(phase=status["phase"], status_written=self._write(body, status, paused_events))

    def _refusal(self, body: Manifest, namespace: Manifest | None, older_holder: str | None) -> Outcome | None:
        """A duplicate customerId with nothing made yet, or a namespace someone else owns: Failed, nothing served."""
        name, namespace_name = body["metadata"]["name"], meta.namespace_for(body["metadata"]["name"])
        if older_holder is not None and namespace is None:  # nothing was made for it: make nothing
            message = (f"customerId {(body.get('spec') or {}).get('customerId')!r} belongs to CustomerInstance {older_holder}, "
                       "which is older; one customer, one instance")
            conditions = rules.refused(DUPLICATE_CUSTOMER_ID, message, FALSE)
        elif namespace is not None and not controlled_by(namespace, body["metadata"]["uid"]):
            message = f"namespace {namespace_name} exists and is not owned by this CustomerInstance; iotenant never adopts it"
            conditions = rules.refused("NamespaceConflict", message, UNKNOWN)
            self.fleets.refuse_all(namespace_name)
        else:
            return None
        log.debug("%s refused: %s", name, message)
        return Outcome(phase="Failed", status_written=self._write(body, rules.status_document(body, "Failed", conditions)))

    def _await_secret_access(self, body: Manifest, owner: meta.Owner, waiting: NotListedYet) -> Outcome:
        """The namespace's Secrets are not listed yet (a new namespace, or one made before the operator read
        Secrets through a RoleBinding): make sure the binding exists and look again soon. Nothing else is
        written: a Secret not yet seen is not a missing one."""
        log.debug("%s: %s", owner.name, waiting)
        applied = []
        for binding in secret_reader_binding(owner, self.settings):
            live = self.cache.get(ROLE_BINDING, binding["metadata"]["name"], owner.namespace)
            if apply_if_changed(self.api, binding, live) is not None:
                applied.append(key_of(binding))
        return Outcome(phase=(body.get("status") or {}).get("phase") or "Pending", applied=applied,
                       retry_after=SECRET_ACCESS_RETRY_SECONDS)

    def _decide_licence(self, spec: dict[str, Any], live: LiveObjects) -> LicenceDecision:
        if spec.get("licence", {}).get("secretRef"):
            return self.licences.external(spec)
        return self.licences.issued(spec, kept_secrets.kept(live.secret("licence"), "licence.jwt"))

    def _broker_admin_tls(self, body: Manifest, live: LiveObjects) -> AdminTLS:
        """The admin listener's certificates as kept, or new ones (and the broker restarts with them) when
        either half is lost: the broker is then driven again with a new CA, never with a guessed credential."""
        server, client = live.secret("broker-admin-listener"), live.secret("broker-admin")
        kept = AdminTLS.from_secrets(kept_secrets.decoded(server), kept_secrets.decoded(client))
        if kept is not None:
            return kept
        if server is not None or client is not None:
            self.post_event(body, "Warning", "BrokerAdminReissued",
                            "the broker's admin certificates were incomplete or lost: new ones are issued and the broker restarts with them")
        return issue_admin_tls(live.namespace_name)

    def _broker_tls(self, spec: dict[str, Any], owner: meta.Owner, live: LiveObjects) -> BrokerTLS:
        """The broker's TLS Secret: cert-manager's carries our labels (the cache holds it); the customer's own
        carries none and is read by name."""
        broker_spec = spec.get("broker") or {}
        secret_name = broker_tls_secret(broker_spec)
        secret = None
        if secret_name and live.namespace_exists:  # a namespace about to be made holds no Secret (nor may we read there yet)
            secret = live.secret(secret_name) or self.api.get(SECRET, secret_name, owner.namespace)
        return broker_tls(broker_spec.get("tls"), secret_name, CERTIFICATE_CRD in self.optional_crds(), secret)

    def _device_endpoint(self, spec: dict[str, Any], owner: meta.Owner, live: LiveObjects) -> DeviceEndpoint:
        in_cluster = split_address(self.settings.device_broker_address(owner.namespace, owner.name))
        exposure = BrokerExposure.from_spec(spec.get("broker") or {})
        return device_endpoint(exposure, in_cluster, live.stack.get(("Service", owner.namespace, DEVICE_SERVICE)))

    def _stack_input(self, body: Manifest, owner: meta.Owner, decision: LicenceDecision, live: LiveObjects,
                     tls: BrokerTLS, endpoint: DeviceEndpoint) -> StackInput:
        spec = body.get("spec") or {}
        claims = decision.claims
        plan = self.catalogue.get(claims.plan) if claims else None
        crds = self.optional_crds()
        return StackInput(
            owner=owner,
            spec=spec,
            settings=self.settings,
            secrets=kept_secrets.generated_secrets(live.secret, self._broker_admin_tls(body, live)),
            claims=claims,
            licence_token=decision.verified.token if decision.verified else "",
            jwks=self.licences.jwks_for(decision, external=bool(spec.get("licence", {}).get("secretRef"))),
            quota=plan.quota if plan else None,
            broker_limits=plan.broker if plan else STRICTEST_BROKER_LIMITS,
            storage_classes=self._storage_classes(spec, live),
            serving=decision.serving and not spec.get("suspended"),
            service_monitor_crd_present=monitoring.SERVICE_MONITOR_CRD in crds,
            prometheus_rule_crd_present=PROMETHEUS_RULE_CRD in crds,
            certificate_crd_present=CERTIFICATE_CRD in crds,
            device_endpoint=endpoint,
            broker_tls_hash=tls.certificate_hash,
            pull_secrets=self.pull_secrets,
        )

    def _deferral(self, body: Manifest, desired: list[Manifest], live: dict[ObjectKey, Manifest]) -> Deferral:
        """Outside the instance's maintenance window, restarts wait (an Event tells each new wait once)."""
        now, uid = datetime.fromtimestamp(self.clock(), timezone.utc), body["metadata"]["uid"]
        deferral = plan_restarts((body.get("spec") or {}).get("maintenance"), now, self.settings.urgent_restarts, desired, live)
        waiting = deferral.waiting_names
        if waiting and self._deferred.get(uid) != waiting and deferral.opening is not None:
            self.post_event(body, "Normal", "RestartDeferred", f"{', '.join(waiting)} will restart with their change in the "
                            f"maintenance window opening {deferral.opening.isoformat()}; they keep running as they are")
        self._deferred[uid] = waiting
        return deferral

    def _storage_classes(self, spec: dict[str, Any], live: LiveObjects) -> dict[str, str]:
        classes = {}
        for workload, section in parts.volumes().items():
            wanted = ((spec.get(section) or {}).get("storageClassName") if section else None) or self.settings.storage_class or None
            chosen = volume_class(live.workload("StatefulSet", workload, live.stack), wanted)
            if chosen:
                classes[workload] = chosen
        return classes

    def _tenant_access(self, stack: StackInput, decision: LicenceDecision, live: LiveObjects,
                       objects: dict[ObjectKey, Manifest], endpoint: DeviceEndpoint) -> TenantAccess:
        broker_ready, _ = rules.ready_replicas(live.workload(broker_part.WORKLOAD.kind, broker_part.WORKLOAD.name, objects))
        return TenantAccess(
            owner=stack.owner,
            limits=decision.claims.limits if decision.claims else None,
            serving=stack.serving,
            not_serving_reason="Suspended" if decision.verified else "NoValidLicence",
            not_serving_message=("the customer instance is suspended: no device can connect" if decision.verified
                                 else f"no valid licence ({decision.message}): no device can connect"),
            broker_ready=stack.serving and broker_ready,
            admin_tls=stack.secrets.broker_admin_tls,
            ingest_password=stack.secrets.ingest_broker_password,
            api_password=stack.secrets.api_broker_password,
            share_group=stack.secrets.ingest_share_group,
            max_packet_bytes=stack.broker_limits.maxPacketBytes,
            device_endpoint=endpoint,
            simulators_internal=stack.exposure.tls_only,
        )

    def _reconcile_fleets(self, access: TenantAccess, owned: dict[ObjectKey, Manifest], body: Manifest) -> FleetsOutcome:
        """The namespace's DeviceFleets; their trouble is reported on them and never fails the instance."""
        try:
            return self.fleets.reconcile(access, owned)
        except Exception as error:
            log.exception("reconciling the device fleets of %s failed", access.owner.namespace)
            self.post_event(body, "Warning", "DeviceFleetsFailed", f"reconciling device fleets failed: {type(error).__name__}: {error}")
            return FleetsOutcome(retry_after=DEVICE_FLEET_RETRY_SECONDS)

    def _findings(self, stack: StackInput, decision: LicenceDecision, live: LiveObjects, result: Convergence,
                  tls: BrokerTLS) -> rules.Findings:
        readiness = {part.workload.name: rules.ready_replicas(live.workload(part.workload.kind, part.workload.name, result.objects))
                     for part in parts.enabled_parts(stack) if part.workload is not None and part.render is not None}
        required = [workload.name for workload in parts.required_workloads(stack)]
        tier = decision.claims.monitoring.tier if decision.claims else None
        prometheus = readiness.get(monitoring.WORKLOAD.name, (False, "not created yet"))
        return rules.Findings(
            decision=decision,
            suspended_by_spec=bool(stack.spec.get("suspended")),
            serving=stack.serving,
            workloads_ready=tuple(f"{name} {readiness[name][1]}" for name in required if readiness[name][0]),
            workloads_waiting=tuple(f"{name} {readiness[name][1]}" for name in required if not readiness[name][0]),
            monitoring=rules.monitoring_condition(tier, prometheus, stack.service_monitor_crd_present),
            applied_anything=bool(result.applied),
            tls=tls.condition,
            readiness=readiness,
        )

    def _status_extra(self, stack: StackInput, decision: LicenceDecision, fleets: FleetsOutcome) -> dict[str, Any]:
        endpoint = stack.device_endpoint
        return {
            "endpoints": {
                # What devices connect to: the address their credentials name.
                "mqtt": endpoint.url if endpoint else "",
                "api": api_url(stack.namespace, stack.spec.get("api") or {}),
            },
            "devices": {"provisioned": fleets.provisioned, "limit": decision.claims.limits.maxDevices if decision.claims else 0},
            **rules.licence_status(decision),
        }

    # ----------------------------------------------------------------------------- failure and deletion

    def report_failure(self, body: Manifest, error: Exception) -> None:
        """A reconcile that raised: Ready=Unknown and Reconciling=True with the error, and a Warning Event."""
        message = f"{type(error).__name__}: {error}"[:1000]
        try:
            self._write(body, rules.failure_status(body, error), lambda _p, _s: [("Warning", "ReconcileError", message)])
        except Exception:  # the API itself may be what failed
            log.exception("could not report the failure of %s", body["metadata"]["name"])

    def forget(self, uid: str, namespace: str) -> None:
        """The instance's loop ended: drop what was kept about it in memory."""
        self._progress_reported.pop(uid, None)
        self._volume_refusals.pop(uid, None)
        self._deferred.pop(uid, None)
        self.fleets.forget(namespace)

    def finalize(self, body: Manifest) -> None:
        finalize(self.api, body, self.post_event)
