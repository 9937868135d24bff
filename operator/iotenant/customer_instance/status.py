"""A CustomerInstance's status, decided from what the reconcile found. Pure: no I/O, no clock but the one given.

The rules: ``Ready=True`` means a valid licence and every required workload available; monitoring
or device-TLS trouble alone makes the phase ``Degraded`` and never blocks ``Ready``; ``Stalled`` only for what
retrying cannot fix; ``lastTransitionTime`` moves only when a condition flips.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iotenant.customer_instance.licence_decision import UNFIXABLE_LICENCE_REASONS, LicenceDecision
from iotenant.kube.conditions import FALSE, TRUE, UNKNOWN, Condition, find, merge_conditions
from iotenant.kube.status import EventNote
from iotenant.licensing import licence as licences
from iotenant.timestamps import rfc3339
from iotenant.vocabulary import meta

Manifest = dict[str, Any]
PAUSED_ANNOTATION = "iotenant.io/paused"
WARNING_PHASES = ("Degraded", "Failed", "Suspended")


def ready_replicas(workload: Manifest | None) -> tuple[bool, str]:
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


@dataclass(frozen=True)
class Findings:
    """What one reconcile found, as the status rules need it."""

    decision: LicenceDecision
    suspended_by_spec: bool
    serving: bool
    workloads_ready: tuple[str, ...]
    workloads_waiting: tuple[str, ...]
    monitoring: Condition
    applied_anything: bool
    tls: Condition | None = None  # TLSReady, when spec.broker.tls asks for TLS
    # Each running part's workload by name (``render.parts``): (available, what its rollout says).
    readiness: dict[str, tuple[bool, str]] = field(default_factory=dict)


def monitoring_condition(tier: str | None, prometheus: tuple[bool, str], service_monitor_crd: bool) -> Condition:
    """``prometheus``: the dedicated Prometheus's readiness (used for the dedicated tier only)."""
    if tier == "dedicated":
        ok, detail = prometheus
        return Condition("MonitoringReady", TRUE if ok else FALSE, "PrometheusReady" if ok else "PrometheusNotReady",
                         f"dedicated Prometheus {detail}")
    if tier == "shared":
        if service_monitor_crd:
            return Condition("MonitoringReady", TRUE, "ServiceMonitorCreated", "ServiceMonitor iotenant scrapes ingest and api")
        return Condition("MonitoringReady", FALSE, "MonitoringCRDMissing",
                         "CRD servicemonitors.monitoring.coreos.com is not installed: install the Prometheus Operator; "
                         "the ServiceMonitor is created as soon as the CRD appears")
    return Condition("MonitoringReady", FALSE, "NoValidLicence", "no monitoring tier without a verified licence")


def _workloads(found: Findings) -> Condition:
    if not found.serving:
        return Condition("WorkloadsReady", FALSE, "Suspended" if found.decision.verified else "NoValidLicence",
                         "broker, ingest and api are scaled to zero; data is kept")
    if not found.workloads_waiting:
        return Condition("WorkloadsReady", TRUE, "AllAvailable", "; ".join(found.workloads_ready))
    return Condition("WorkloadsReady", FALSE, "Provisioning", "waiting for " + "; ".join(found.workloads_waiting))


def _phase_and_ready(found: Findings, workloads: Condition, stalled_reason: str | None) -> tuple[str, Condition]:
    decision = found.decision
    if found.suspended_by_spec or (decision.verified is not None and not decision.serving):
        return "Suspended", Condition("Ready", FALSE, "Suspended", "spec.suspended is true" if found.suspended_by_spec else decision.message)
    if decision.verified is None:
        return ("Failed" if stalled_reason else "Pending"), Condition("Ready", FALSE, decision.reason, decision.message)
    if found.workloads_waiting:
        return "Provisioning", Condition("Ready", FALSE, "Provisioning", workloads.message)
    if decision.expired_in_grace:
        return "Degraded", Condition("Ready", FALSE, licences.EXPIRED, decision.message)
    # It names the licence: a new instance's first licence is told by this status, not by an Event.
    ready = f"licence {decision.verified.claims.jti} ({decision.verified.claims.plan}) valid and every workload available"
    if found.monitoring.status != TRUE:
        return "Degraded", Condition("Ready", TRUE, "Ready", f"{ready}; monitoring degraded: {found.monitoring.message}")
    if found.tls is not None and found.tls.status != TRUE:
        return "Degraded", Condition("Ready", TRUE, "Ready", f"{ready}; no device TLS yet: {found.tls.message}")
    return "Ready", Condition("Ready", TRUE, "Ready", ready)


@dataclass(frozen=True)
class Verdict:
    """What the conditions are computed from, besides the findings: decided once, in this order."""

    phase: str
    ready: Condition
    workloads: Condition
    stalled_reason: str | None
    in_progress: bool

    @classmethod
    def of(cls, found: Findings) -> "Verdict":
        decision = found.decision
        stalled = decision.reason if decision.verified is None and decision.reason in UNFIXABLE_LICENCE_REASONS else None
        workloads = _workloads(found)
        phase, ready = _phase_and_ready(found, workloads, stalled)
        return cls(phase, ready, workloads, stalled, phase == "Provisioning" or found.applied_anything)


# How a condition's flip is announced: by an Event of its own, by the phase's Event when the phase changes
# with it (its own otherwise), or never (the phase always tells it).
ANNOUNCED, TOLD_BY_PHASE_CHANGE, TOLD_BY_PHASE = "announced", "told by a phase change", "told by the phase"


@dataclass(frozen=True)
class ConditionKind:
    """One condition type of a CustomerInstance, in the order the status lists them: how it is computed
    (None: not reported, as TLSReady without TLS), what it says when the instance is refused (reason,
    message, the licence's status; None: not reported), how its flips are announced, whether a new
    message alone, while provisioning, is progress (written now and then, not at every step), and its
    status when all is well (False for the conditions whose True is the trouble)."""

    type: str
    compute: Callable[[Findings, Verdict], Condition | None]
    refusal: Callable[[str, str, str], Condition | None]
    announced: str
    message_is_progress: bool = False
    healthy: str = TRUE


def _licence_valid(found: Findings, _verdict: Verdict) -> Condition:
    decision = found.decision
    return Condition("LicenceValid", TRUE if decision.valid else FALSE, "Verified" if decision.valid else decision.reason, decision.message)


def _reconciling(_found: Findings, verdict: Verdict) -> Condition:
    if verdict.in_progress:
        return Condition("Reconciling", TRUE, "Progressing", verdict.workloads.message)
    return Condition("Reconciling", FALSE, "Converged", "the namespace matches the desired state")


def _stalled(found: Findings, verdict: Verdict) -> Condition:
    if verdict.stalled_reason:
        return Condition("Stalled", TRUE, verdict.stalled_reason, found.decision.message)
    return Condition("Stalled", FALSE, "NotStalled", "no failure that retrying cannot fix")


CONDITIONS: tuple[ConditionKind, ...] = (
    ConditionKind("Ready", lambda _found, verdict: verdict.ready,
                  lambda reason, message, _licence: Condition("Ready", FALSE, reason, message), TOLD_BY_PHASE, message_is_progress=True),
    ConditionKind("LicenceValid", _licence_valid,
                  lambda reason, message, licence: Condition("LicenceValid", licence, reason, message if licence == FALSE else "not evaluated"),
                  ANNOUNCED),
    ConditionKind("WorkloadsReady", lambda _found, verdict: verdict.workloads,
                  lambda reason, message, _licence: Condition("WorkloadsReady", FALSE, reason, message), TOLD_BY_PHASE_CHANGE,
                  message_is_progress=True),
    ConditionKind("MonitoringReady", lambda found, _verdict: found.monitoring,
                  lambda reason, _message, _licence: Condition("MonitoringReady", UNKNOWN, reason, "not evaluated"), ANNOUNCED,
                  message_is_progress=True),
    ConditionKind("TLSReady", lambda found, _verdict: found.tls, lambda _reason, _message, _licence: None, ANNOUNCED),
    ConditionKind("Reconciling", _reconciling,
                  lambda reason, message, _licence: Condition("Reconciling", FALSE, reason, message), TOLD_BY_PHASE, message_is_progress=True,
                  healthy=FALSE),
    ConditionKind("Stalled", _stalled, lambda reason, message, _licence: Condition("Stalled", TRUE, reason, message), ANNOUNCED,
                  healthy=FALSE),
)
_KINDS = {kind.type: kind for kind in CONDITIONS}


def phase_and_conditions(found: Findings) -> tuple[str, list[Condition]]:
    verdict = Verdict.of(found)
    return verdict.phase, [c for c in (kind.compute(found, verdict) for kind in CONDITIONS) if c is not None]


def refused(reason: str, message: str, licence_status: str) -> list[Condition]:
    """Nothing is served and nothing retried: a duplicate customerId, or a namespace someone else owns."""
    return [c for c in (kind.refusal(reason, message, licence_status) for kind in CONDITIONS) if c is not None]


def kept_conditions(body: Manifest, replaced: tuple[str, ...]) -> list[Condition]:
    """The current conditions, except the types about to be replaced."""
    return [Condition(c["type"], c["status"], c["reason"], c["message"])
            for c in (body.get("status") or {}).get("conditions", []) if c["type"] not in replaced]


def status_document(body: Manifest, phase: str, conditions: list[Condition], extra: dict[str, Any] | None = None,
                    timestamp: str | None = None) -> dict[str, Any]:
    generation = int(body["metadata"].get("generation", 1))
    return {
        "namespace": meta.namespace_for(body["metadata"]["name"]),
        "phase": phase,
        "observedGeneration": generation,
        "conditions": merge_conditions((body.get("status") or {}).get("conditions"), conditions, generation, timestamp),
        **(extra or {}),
    }


def paused_status(body: Manifest, timestamp: str | None = None) -> dict[str, Any]:
    """Paused: the phase and the conditions stay as they were, stamped with the generation they were computed
    for (a spec changed while paused was never acted on, and kstatus readers must see that)."""
    previous = body.get("status") or {}
    acted_on = int(previous.get("observedGeneration", 0))
    conditions = kept_conditions(body, ("Paused", "Reconciling"))
    conditions.append(Condition("Paused", TRUE, "Paused", f"reconciliation paused by annotation {PAUSED_ANNOTATION}"))
    conditions.append(Condition("Reconciling", FALSE, "Paused", "reconciliation is paused"))
    return {
        "namespace": meta.namespace_for(body["metadata"]["name"]),
        "phase": previous.get("phase", "Pending"),
        "observedGeneration": acted_on,
        "conditions": merge_conditions(previous.get("conditions"), conditions, acted_on, timestamp),
    }


def failure_status(body: Manifest, error: Exception, timestamp: str | None = None) -> dict[str, Any]:
    """A reconcile that raised: Ready=Unknown and Reconciling=True with the error; the rest as it was."""
    message = f"{type(error).__name__}: {error}"[:1000]
    conditions = [Condition("Ready", UNKNOWN, "ReconcileError", message), Condition("Reconciling", TRUE, "ReconcileError", message),
                  *kept_conditions(body, ("Ready", "Reconciling"))]
    generation = int(body["metadata"].get("generation", 1))
    return {"conditions": merge_conditions((body.get("status") or {}).get("conditions"), conditions, generation, timestamp)}


def licence_status(decision: LicenceDecision) -> dict[str, Any]:
    """``status.licence``: what the verified licence says (nothing without one)."""
    if decision.verified is None:
        return {}
    claims = decision.verified.claims
    return {"licence": {
        "id": claims.jti, "plan": claims.plan, "issuer": claims.iss, "keyId": decision.verified.key_id,
        "issuedAt": rfc3339(claims.iat), "expiresAt": rfc3339(claims.exp), "monitoringTier": claims.monitoring.tier,
    }}


def only_progress(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    """Whether ``status`` differs from ``previous`` only in the messages of a tenant still provisioning
    ("waiting for broker 0/1 ready" becoming "1/1"): progress worth telling now and then, not at every step."""
    if previous.get("phase") != "Provisioning" or status.get("phase") != "Provisioning":
        return False

    def without_messages(document: dict[str, Any]) -> dict[str, Any]:
        def kept(condition: dict[str, Any]) -> dict[str, Any]:
            progress = condition.get("type") in _KINDS and _KINDS[condition["type"]].message_is_progress
            return {k: v for k, v in condition.items() if not (progress and k == "message")}
        return {**{key: document.get(key) for key in status}, "conditions": [kept(c) for c in document.get("conditions") or []]}

    return without_messages(previous) == without_messages(status)


def _first_steps(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    """A new instance provisioning, or becoming Ready for the first time: still at its first generation,
    and its Ready condition has not flipped since its first status (every condition of that status shares
    one transition time; times have whole seconds, so the generation tells a quick second round apart)."""
    if previous.get("phase") is None:
        return status.get("phase") == "Provisioning"
    conditions = previous.get("conditions") or []
    ready = find(conditions, "Ready")
    if status.get("phase") != "Ready" or previous.get("phase") != "Provisioning" or not ready or ready.get("status") != FALSE:
        return False
    if int(previous.get("observedGeneration", 0) or 0) != 1 or int(status.get("observedGeneration", 0) or 0) != 1:
        return False
    return str(ready.get("lastTransitionTime", "")) <= min(str(c.get("lastTransitionTime", "")) for c in conditions)


def events(previous: dict[str, Any], status: dict[str, Any]) -> list[EventNote]:
    """An Event per phase change and per condition flip, except what the status alone tells well: a new
    instance's first steps (provisioning, then Ready, whose message names the licence), Ready and
    Reconciling (the phase tells them), and WorkloadsReady when the phase changes with it. Every later
    transition and every warning is an Event."""
    notes: list[EventNote] = []
    phase_changed = "phase" in status and previous.get("phase") != status["phase"]
    if phase_changed and not _first_steps(previous, status):
        ready = find(status.get("conditions"), "Ready") or {}
        notes.append(("Warning" if status["phase"] in WARNING_PHASES else "Normal", status["phase"], ready.get("message", status["phase"])))
    told_by_phase = {kind.type for kind in CONDITIONS
                     if kind.announced == TOLD_BY_PHASE or (phase_changed and kind.announced == TOLD_BY_PHASE_CHANGE)}
    for condition in status.get("conditions", []):
        before = find(previous.get("conditions"), condition["type"])
        if before and before.get("status") != condition["status"] and condition["type"] not in told_by_phase:
            kind = "Warning" if condition["status"] == FALSE or condition["type"] == "Stalled" else "Normal"
            notes.append((kind, condition["reason"], f"{condition['type']}={condition['status']}: {condition['message']}"))
    return notes
