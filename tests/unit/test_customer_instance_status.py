"""The CustomerInstance status rules without a cluster: phase, conditions, Events, paused and failure statuses."""

from __future__ import annotations

from iotenant.customer_instance import status as rules
from iotenant.customer_instance.licence_decision import DUPLICATE_CUSTOMER_ID, LicenceDecision
from iotenant.kube.conditions import FALSE, TRUE, UNKNOWN, Condition, find
from iotenant.licensing import licence as licences
from iotenant.licensing.plans import load_catalogue
from iotenant.render.parts import PARTS

STAMP = "2026-11-25T10:00:00Z"
CLAIMS = load_catalogue()["professional"].claims("acme-0001", "iotenant-operator", 86400, now=1_790_000_000)
VERIFIED = licences.VerifiedLicence("token", CLAIMS, "kid-1")
VALID = LicenceDecision(VERIFIED, "Verified", "licence verified", serving=True)
MONITORED = rules.monitoring_condition("shared", (False, "unused"), service_monitor_crd=True)


def findings(decision: LicenceDecision = VALID, waiting: tuple[str, ...] = (), monitoring: Condition = MONITORED,
             suspended: bool = False, applied: bool = False) -> rules.Findings:
    return rules.Findings(decision=decision, suspended_by_spec=suspended, serving=decision.serving and not suspended,
                          workloads_ready=("broker 1/1 ready",), workloads_waiting=waiting, monitoring=monitoring,
                          applied_anything=applied, readiness={part.workload.name: (not waiting, "1/1 ready") for part in PARTS if part.workload})


def by_type(conditions: list[Condition]) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conditions}


def test_a_valid_licence_and_available_workloads_are_ready_and_converged() -> None:
    phase, conditions = rules.phase_and_conditions(findings())
    assert phase == "Ready"
    assert {c.type: c.status for c in conditions} == {kind.type: kind.healthy for kind in rules.CONDITIONS if kind.type != "TLSReady"}, \
        "every condition (TLSReady only with TLS) says all is well"
    expected = {"Ready": (TRUE, "Ready"), "LicenceValid": (TRUE, "Verified"), "WorkloadsReady": (TRUE, "AllAvailable"),
                "MonitoringReady": (TRUE, "ServiceMonitorCreated"), "Reconciling": (FALSE, "Converged"), "Stalled": (FALSE, "NotStalled")}
    assert {kind: said for kind, said in by_type(conditions).items() if kind in expected} == expected


def test_monitoring_trouble_degrades_but_never_blocks_ready() -> None:
    missing = rules.monitoring_condition("shared", (False, ""), service_monitor_crd=False)
    phase, conditions = rules.phase_and_conditions(findings(monitoring=missing))
    assert phase == "Degraded" and by_type(conditions)["Ready"] == (TRUE, "Ready")
    assert by_type(conditions)["MonitoringReady"] == (FALSE, "MonitoringCRDMissing")
    dedicated = rules.monitoring_condition("dedicated", (False, "0/1 ready"), service_monitor_crd=True)
    assert (dedicated.status, dedicated.reason, dedicated.message) == (FALSE, "PrometheusNotReady", "dedicated Prometheus 0/1 ready")


def test_waiting_workloads_are_provisioning_and_reconciling() -> None:
    phase, conditions = rules.phase_and_conditions(findings(waiting=("api 0/1 ready",)))
    assert phase == "Provisioning"
    assert by_type(conditions)["Ready"] == (FALSE, "Provisioning") and by_type(conditions)["Reconciling"] == (TRUE, "Progressing")
    assert by_type(rules.phase_and_conditions(findings(applied=True))[1])["Reconciling"] == (TRUE, "Progressing")


def test_no_licence_is_pending_and_an_unfixable_one_is_failed_and_stalled() -> None:
    missing = LicenceDecision(None, licences.MISSING, "Secret billing/x does not exist", serving=False)
    phase, conditions = rules.phase_and_conditions(findings(missing))
    assert phase == "Pending" and by_type(conditions)["Stalled"] == (FALSE, "NotStalled")
    assert by_type(conditions)["WorkloadsReady"] == (FALSE, "NoValidLicence")
    forged = LicenceDecision(None, licences.BAD_SIGNATURE, "signature does not verify", serving=False)
    phase, conditions = rules.phase_and_conditions(findings(forged))
    assert phase == "Failed" and by_type(conditions)["Stalled"] == (TRUE, licences.BAD_SIGNATURE)
    assert by_type(conditions)["LicenceValid"] == (FALSE, licences.BAD_SIGNATURE)


def test_suspension_and_expiry() -> None:
    phase, conditions = rules.phase_and_conditions(findings(suspended=True))
    assert phase == "Suspended" and find([vars(c) for c in conditions], "Ready")["message"] == "spec.suspended is true"
    grace = LicenceDecision(VERIFIED, licences.EXPIRED, "expired; service continues", serving=True, expired_in_grace=True)
    phase, conditions = rules.phase_and_conditions(findings(grace))
    assert phase == "Degraded" and by_type(conditions)["Ready"] == (FALSE, licences.EXPIRED)
    over = LicenceDecision(VERIFIED, licences.EXPIRED, "grace period over", serving=False)
    phase, conditions = rules.phase_and_conditions(findings(over))
    assert phase == "Suspended" and by_type(conditions)["WorkloadsReady"] == (FALSE, "Suspended")


def test_refusals_say_what_was_not_evaluated() -> None:
    duplicate = by_type(rules.refused(DUPLICATE_CUSTOMER_ID, "older instance", FALSE))
    conflict = {c.type: c for c in rules.refused("NamespaceConflict", "not ours", UNKNOWN)}
    assert duplicate["Stalled"] == (TRUE, DUPLICATE_CUSTOMER_ID) and duplicate["LicenceValid"] == (FALSE, DUPLICATE_CUSTOMER_ID)
    assert conflict["LicenceValid"].message == "not evaluated" and conflict["MonitoringReady"].status == UNKNOWN


def body(status: dict | None = None, generation: int = 3) -> dict:
    return {"metadata": {"name": "acme", "uid": "u", "generation": generation}, **({"status": status} if status else {})}


def test_status_documents_keep_transition_times_and_paused_keeps_the_generation_acted_on() -> None:
    first = rules.status_document(body(), "Ready", rules.phase_and_conditions(findings())[1], timestamp=STAMP)
    assert first["observedGeneration"] == 3 and first["namespace"] == "customer-acme"
    later = rules.status_document(body(first), "Ready", rules.phase_and_conditions(findings())[1], timestamp="2027-01-01T00:00:00Z")
    assert {c["lastTransitionTime"] for c in later["conditions"]} == {STAMP}
    acted_on = {**first, "observedGeneration": 2, "conditions": [{**c, "observedGeneration": 2} for c in first["conditions"]]}
    paused = rules.paused_status(body(acted_on, generation=5), timestamp=STAMP)
    assert paused["observedGeneration"] == 2 and paused["phase"] == "Ready"
    assert {c["observedGeneration"] for c in paused["conditions"]} == {2}, "conditions re-stamped with a generation never acted on"
    assert find(paused["conditions"], "Paused")["status"] == TRUE and find(paused["conditions"], "Reconciling")["reason"] == "Paused"
    failed = rules.failure_status(body(first), RuntimeError("boom"), timestamp=STAMP)
    assert find(failed["conditions"], "Ready")["message"] == "RuntimeError: boom" and find(failed["conditions"], "Stalled")


def test_events_tell_phase_changes_and_condition_flips_once() -> None:
    ready = rules.status_document(body(), "Ready", rules.phase_and_conditions(findings())[1], timestamp=STAMP)
    missing = LicenceDecision(None, licences.MISSING, "gone", serving=False)
    pending = rules.status_document(body(ready), "Pending", rules.phase_and_conditions(findings(missing))[1], timestamp=STAMP)
    notes = rules.events(ready, pending)
    assert notes[0] == ("Normal", "Pending", "gone")
    assert ("Warning", licences.MISSING, "LicenceValid=False: gone") in notes
    assert all(reason not in ("Ready", "Reconciling") for _, reason, _ in notes[1:])
    assert rules.events(pending, pending) == []


def test_a_new_instance_reaches_ready_without_events_and_later_transitions_have_them() -> None:
    def step(previous: dict | None, waiting: tuple[str, ...], stamp: str, generation: int = 1, suspended: bool = False) -> dict:
        phase, conditions = rules.phase_and_conditions(findings(waiting=waiting, suspended=suspended))
        return rules.status_document(body(previous, generation), phase, conditions, timestamp=stamp)

    provisioning = step(None, ("broker not created yet",), STAMP)
    assert rules.events({}, provisioning) == [], "a new instance provisioning: its first status says so"
    further = step(provisioning, ("broker 0/1 ready",), "2026-11-25T10:00:05Z")
    assert rules.only_progress(provisioning, further), "only the message moved on"
    ready = step(further, (), "2026-11-25T10:00:09Z")
    assert not rules.only_progress(further, ready)
    assert rules.events(further, ready) == [], "its first Ready is told by the status"
    assert CLAIMS.jti in find(ready["conditions"], "Ready")["message"], "which names the licence"

    rolling = step(ready, ("api 1/2 ready",), "2026-11-25T11:00:00Z")
    assert [reason for _, reason, _ in rules.events(ready, rolling)] == ["Provisioning"]
    again = step(rolling, (), "2026-11-25T11:00:30Z")
    assert [reason for _, reason, _ in rules.events(rolling, again)] == ["Ready"], "a later Ready is news"
    assert not rules.only_progress(ready, rolling) and not rules.only_progress(rolling, again)

    # All within one second (transition times have whole seconds): suspended and back is still news.
    quick = step(step(None, ("broker not created yet",), STAMP), (), STAMP)
    suspended = step(quick, (), STAMP, generation=2, suspended=True)
    resumed = step(suspended, ("broker 0/1 ready",), STAMP, generation=3)
    back = step(resumed, (), STAMP, generation=3)
    assert [reason for _, reason, _ in rules.events(quick, suspended)] == ["Suspended"]
    assert [reason for _, reason, _ in rules.events(resumed, back)] == ["Ready"]


def test_ready_replicas_reads_the_rollout_honestly() -> None:
    def workload(kind: str, wanted: int, ready: int, observed: int = 1, updated: int | None = None) -> dict:
        count = "availableReplicas" if kind == "Deployment" else "readyReplicas"
        return {"kind": kind, "metadata": {"generation": 1}, "spec": {"replicas": wanted},
                "status": {"observedGeneration": observed, count: ready, "updatedReplicas": ready if updated is None else updated}}

    assert rules.ready_replicas(None) == (False, "not created yet")
    assert rules.ready_replicas(workload("Deployment", 2, 2)) == (True, "2/2 ready")
    assert rules.ready_replicas(workload("StatefulSet", 2, 1)) == (False, "1/2 ready")
    assert rules.ready_replicas(workload("StatefulSet", 1, 1, observed=0)) == (False, "rollout not yet observed")
    assert rules.ready_replicas(workload("Deployment", 1, 1, updated=0)) == (False, "1/1 ready")
    assert rules.ready_replicas(workload("Deployment", 0, 0)) == (True, "scaled to zero")



def test_the_conditions_table_decides_the_status_the_refusals_and_the_events() -> None:
    """A condition is added in one place: each kind of the table is computed, refused and announced from it."""
    types = [kind.type for kind in rules.CONDITIONS]
    assert len(types) == len(set(types))
    computed = [c.type for c in rules.phase_and_conditions(findings())[1]]
    assert computed == [t for t in types if t != "TLSReady"], "in the table's order; TLSReady only with TLS"
    refused_types = [c.type for c in rules.refused("NamespaceConflict", "not ours", UNKNOWN)]
    assert refused_types == [t for t in types if t != "TLSReady"]
    told_by_phase = {kind.type for kind in rules.CONDITIONS if kind.announced == rules.TOLD_BY_PHASE}
    assert told_by_phase == {"Ready", "Reconciling"}
