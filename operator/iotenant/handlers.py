"""Kopf glue: one reconcile loop per CustomerInstance, woken by changes and by a resync timer.

Handlers stay thin: they decide *when* to reconcile; ``customer_instance`` decides *what*.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import Counter, Gauge, Histogram

from iotenant import signing_keys
from iotenant.cluster_api import ClusterAPI, kind_of
from iotenant.customer_instance import CustomerInstanceReconciler
from iotenant.plans import load_catalogue
from iotenant.device_fleet import report_not_in_customer_namespace
from iotenant.render.meta import CUSTOMER, MANAGED_BY, OPERATOR_NAME, PART_OF, namespace_for
from iotenant.render.monitoring import MONITORING_CRDS
from iotenant.settings import OperatorSettings
from iotenant.trusted_issuers import TrustedIssuers

log = logging.getLogger("iotenant.operator")
GROUP, VERSION = "iotenant.io", "v1alpha1"
CRD = kind_of("apiextensions.k8s.io/v1", "CustomResourceDefinition")
CONFIG_MAP = kind_of("v1", "ConfigMap")
NAMESPACE = kind_of("v1", "Namespace")
RECONCILE_THREADS = 32

RECONCILES = Counter("iotenant_operator_reconciles_total", "Reconciles of CustomerInstances by outcome", ["result"])
RECONCILE_SECONDS = Histogram(
    "iotenant_operator_reconcile_seconds", "Time of one CustomerInstance reconcile",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OBJECTS_APPLIED = Counter("iotenant_operator_objects_applied_total", "Objects applied (server-side) because they differed")
OBJECTS_PRUNED = Counter("iotenant_operator_objects_pruned_total", "Stale objects deleted")
INSTANCES_BY_PHASE = Gauge("iotenant_operator_instances", "CustomerInstances by phase", ["phase"])
SIGNING_KEYS = Gauge("iotenant_operator_signing_keys", "Licence signing keys in the key ring")


@dataclass
class OperatorState:
    """Shared by every handler of one operator process (Kopf's memo)."""

    settings: OperatorSettings
    api: ClusterAPI
    reconciler: CustomerInstanceReconciler | None = None
    keyring: signing_keys.KeyRing | None = None
    keyring_version: str = ""
    monitoring_crds: frozenset[str] = frozenset()  # the Prometheus Operator CRDs that are established
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)  # customer namespace -> CustomerInstance uid
    fleets_seen: dict[str, tuple[int, str]] = field(default_factory=dict)
    seen: dict[str, tuple[int, str]] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    kids: dict[str, str | None] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def wake(self, uid: str | None = None) -> None:
        targets = [self.wakeups[uid]] if uid in self.wakeups else [] if uid else list(self.wakeups.values())
        for event in targets:
            event.set()


STATE: OperatorState | None = None


def configure(settings: OperatorSettings, api: ClusterAPI) -> None:
    global STATE
    STATE = OperatorState(settings=settings, api=api)


def state() -> OperatorState:
    if STATE is None:
        raise RuntimeError("the operator was not configured")
    return STATE


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    s = state()
    settings.persistence.finalizer = "iotenant.io/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="iotenant.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="iotenant.io", key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # Reconciles run in threads; a tenant whose broker takes minutes to admit a big fleet must not
    # hold up the others, so there are more threads than the default (cores + 4).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=RECONCILE_THREADS, thread_name_prefix="reconcile"))

    catalogue = load_catalogue(s.settings.plan_catalogue)
    trusted = TrustedIssuers.load(s.settings.trusted_issuers, s.settings.issuer)
    ring, s.keyring_version = await asyncio.to_thread(signing_keys.load_or_create, s.api, s.settings.namespace, s.settings.create_signing_keys)
    s.keyring = ring
    s.monitoring_crds = frozenset(
        [name for name in MONITORING_CRDS if await asyncio.to_thread(s.api.get, CRD, name) is not None])
    s.reconciler = CustomerInstanceReconciler(
        api=s.api,
        settings=s.settings,
        catalogue=catalogue,
        keyring=lambda: s.keyring,  # type: ignore[arg-type, return-value]
        trusted_issuers=trusted,
        monitoring_crds=lambda: s.monitoring_crds,
    )
    await asyncio.to_thread(_publish_jwks, s)
    s.tasks.append(asyncio.create_task(_maintain_keyring(s)))
    log.info("iotenant operator started: namespace %s, active signing key %s", s.settings.namespace, ring.active_kid)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in state().tasks:
        task.cancel()


def _publish_jwks(s: OperatorState) -> None:
    assert s.keyring is not None
    manifest = signing_keys.jwks_config_map(s.settings.namespace, s.keyring.public_jwks)
    live = s.api.get(CONFIG_MAP, signing_keys.JWKS_CONFIG_MAP, s.settings.namespace)
    if live is None or live.get("data") != manifest["data"]:
        s.api.apply(manifest)
    SIGNING_KEYS.set(len(s.keyring.keys))


def _refresh_keyring(s: OperatorState) -> bool:
    """Re-read the key ring; retire keys no licence uses. True when the ring changed."""
    assert s.keyring is not None
    found = signing_keys.read(s.api, s.settings.namespace, known=(s.keyring, s.keyring_version))
    if found is None:
        return False
    ring, version = found
    changed = version != s.keyring_version
    s.keyring, s.keyring_version = ring, version
    in_use = {kid for kid in s.kids.values() if kid}
    reported_all = all(uid in s.kids for uid in s.wakeups)
    if reported_all and set(ring.keys) - in_use - {ring.active_kid}:
        retired = ring.retired(in_use)
        try:
            new_version = signing_keys.replace(s.api, s.settings.namespace, retired, version)
        except Exception as error:  # a concurrent rotation wins; we retire on the next pass
            log.info("key retirement deferred: %s", error)
            return changed
        log.info("retired signing keys %s", sorted(set(ring.keys) - set(retired.keys)))
        s.keyring, s.keyring_version = retired, new_version
        changed = True
    if changed:
        _publish_jwks(s)
    return changed


async def _maintain_keyring(s: OperatorState) -> None:
    interval = max(1.0, min(10.0, s.settings.resync_seconds / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            if await asyncio.to_thread(_refresh_keyring, s):
                s.wake()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("key ring maintenance failed; retrying")


@kopf.index(GROUP, VERSION, "customerinstances")
def customer_ids(body: kopf.Body, **_: Any) -> dict[str, tuple[str, str]]:
    """Every CustomerInstance by its customerId (Kopf fills the index before any reconcile starts)."""
    metadata = body.get("metadata", {})
    return {str((body.get("spec") or {}).get("customerId", "")): (str(metadata.get("creationTimestamp", "")), str(metadata.get("name", "")))}


def holder_of(index: kopf.Index[str, tuple[str, str]], customer_id: str) -> str | None:
    """The oldest CustomerInstance with this customerId (creation time, then name): the one it belongs to."""
    claimants = list(index.get(customer_id, []))
    return min(claimants)[1] if claimants else None


@kopf.daemon(GROUP, VERSION, "customerinstances", cancellation_timeout=10.0)
async def customer_instance_loop(body: kopf.Body, stopped: kopf.DaemonStopped, customer_ids: kopf.Index[str, tuple[str, str]],
                                 **_: Any) -> None:
    """Reconcile now, then whenever woken (spec, annotations, children, CRDs, keys) or at every resync."""
    s = state()
    uid = body["metadata"]["uid"]
    namespace = namespace_for(body["metadata"]["name"])
    wakeup = s.wakeups.setdefault(uid, asyncio.Event())
    s.namespaces[namespace] = uid
    backoff = 1.0
    try:
        while not stopped:
            wakeup.clear()
            snapshot = json.loads(json.dumps(dict(body)))
            started = time.monotonic()
            assert s.reconciler is not None
            try:
                holder = holder_of(customer_ids, str((snapshot.get("spec") or {}).get("customerId", "")))
                outcome = await asyncio.to_thread(s.reconciler.reconcile, snapshot, holder)
            except Exception as error:
                RECONCILES.labels("error").inc()
                log.exception("reconcile of %s failed, retrying in %.0f s", body["metadata"]["name"], backoff)
                await asyncio.to_thread(s.reconciler.report_failure, snapshot, error)
                timeout = backoff
                backoff = min(backoff * 2, s.settings.resync_seconds)
            else:
                RECONCILES.labels("ok").inc()
                OBJECTS_APPLIED.inc(len(outcome.applied))
                OBJECTS_PRUNED.inc(len(outcome.pruned))
                s.phases[uid] = outcome.phase
                s.kids[uid] = outcome.licence_kid
                _count_phases(s)
                if outcome.applied or outcome.pruned:
                    log.info(
                        "%s: applied %d, pruned %d objects; phase %s",
                        body["metadata"]["name"], len(outcome.applied), len(outcome.pruned), outcome.phase,
                    )
                backoff = 1.0
                timeout = 2.0 if outcome.phase == "Provisioning" and not outcome.applied else s.settings.resync_seconds
                if outcome.retry_after is not None:
                    timeout = min(timeout, outcome.retry_after)
            finally:
                RECONCILE_SECONDS.observe(time.monotonic() - started)
            try:
                await asyncio.wait_for(wakeup.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
    finally:
        s.wakeups.pop(uid, None)
        if s.namespaces.get(namespace) == uid:
            s.namespaces.pop(namespace, None)
        if s.reconciler is not None:
            s.reconciler.fleets.forget(namespace)
        s.kids.pop(uid, None)
        s.phases.pop(uid, None)
        _count_phases(s)


def _count_phases(s: OperatorState) -> None:
    counts: dict[str, int] = {}
    for phase in s.phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase in ("Pending", "Provisioning", "Ready", "Degraded", "Suspended", "Failed", "Terminating"):
        INSTANCES_BY_PHASE.labels(phase).set(counts.get(phase, 0))


def _intent(metadata: dict[str, Any]) -> tuple[int, str]:
    """What a user changes (spec via generation, annotations), not what the operator writes (status)."""
    return int(metadata.get("generation", 0)), json.dumps(metadata.get("annotations", {}), sort_keys=True)


@kopf.on.event(GROUP, VERSION, "customerinstances")
def customer_instance_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Wake the loop when the spec or the annotations changed (not for our own status writes)."""
    s = state()
    metadata = body.get("metadata", {})
    uid = metadata.get("uid")
    if not uid:
        return
    fingerprint = _intent(metadata)
    if s.seen.get(uid) != fingerprint:
        s.seen[uid] = fingerprint
        s.wake(uid)
    if type == "DELETED":
        s.seen.pop(uid, None)
        s.wake()  # an instance that shared its customerId may now be the one it belongs to


@kopf.on.delete(GROUP, VERSION, "customerinstances")
def customer_instance_deleted(body: kopf.Body, **_: Any) -> None:
    s = state()
    assert s.reconciler is not None
    s.reconciler.finalize(json.loads(json.dumps(dict(body))))


def _wake_owner(body: kopf.Body) -> None:
    """Wake the loop of the CustomerInstance whose object (or whose fleet's object) changed."""
    s = state()
    metadata = body.get("metadata", {})
    labels = metadata.get("labels", {})
    if labels.get(PART_OF) != "iotenant" or CUSTOMER not in labels:
        return
    for references in metadata.get("ownerReferences", []):
        if references.get("kind") == "CustomerInstance":
            s.wake(references.get("uid"))
        elif references.get("kind") == "DeviceFleet" and metadata.get("namespace") in s.namespaces:
            s.wake(s.namespaces[metadata["namespace"]])


def _is_customer_namespace(s: OperatorState, namespace: str) -> bool:
    if namespace in s.namespaces:
        return True
    found = s.api.get(NAMESPACE, namespace)
    labels = (found or {}).get("metadata", {}).get("labels", {})
    owned = any(ref.get("kind") == "CustomerInstance" and ref.get("controller") for ref in (found or {}).get("metadata", {}).get("ownerReferences", []))
    return owned and labels.get(MANAGED_BY) == OPERATOR_NAME and CUSTOMER in labels


@kopf.on.event(GROUP, VERSION, "devicefleets")
def device_fleet_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Admission is decided per namespace: a fleet's spec, annotations or existence wakes its customer's loop.

    A fleet outside every customer namespace is told so in its status."""
    s = state()
    metadata = body.get("metadata", {})
    uid, namespace = metadata.get("uid"), metadata.get("namespace", "")
    if not uid:
        return
    fingerprint = _intent(metadata)
    changed = type == "DELETED" or s.fleets_seen.get(uid) != fingerprint or metadata.get("deletionTimestamp") is not None
    if type == "DELETED":
        s.fleets_seen.pop(uid, None)
    else:
        s.fleets_seen[uid] = fingerprint
    if not changed:
        return
    if namespace in s.namespaces:
        s.wake(s.namespaces[namespace])
    elif type != "DELETED" and not _is_customer_namespace(s, namespace):
        report_not_in_customer_namespace(s.api, json.loads(json.dumps(dict(body))))


@kopf.on.event("apps", "v1", "deployments", labels={PART_OF: "iotenant"})
def deployment_changed(body: kopf.Body, **_: Any) -> None:
    _wake_owner(body)


@kopf.on.event("apps", "v1", "statefulsets", labels={PART_OF: "iotenant"})
def stateful_set_changed(body: kopf.Body, **_: Any) -> None:
    _wake_owner(body)


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", field="spec.group", value="monitoring.coreos.com")
def monitoring_crd_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
    """The ServiceMonitor and PrometheusRule CRDs: shared-tier objects appear as soon as their CRD does."""
    s = state()
    name = body.get("metadata", {}).get("name", "")
    if name not in MONITORING_CRDS:
        return
    present = type != "DELETED" and body.get("metadata", {}).get("deletionTimestamp") is None
    established = any(
        c.get("type") == "Established" and c.get("status") == "True" for c in (body.get("status") or {}).get("conditions") or []
    )
    now = s.monitoring_crds | {name} if present and established else s.monitoring_crds - {name}
    if now != s.monitoring_crds:
        s.monitoring_crds = now
        log.info("CRD %s %s", name, "available" if name in now else "gone")
        s.wake()
