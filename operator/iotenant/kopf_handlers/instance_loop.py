"""One loop per CustomerInstance: reconcile, then wait to be woken or for the resync, with backoff on failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from iotenant.customer_instance.reconciler import Outcome
from iotenant.kopf_handlers.metrics import OBJECTS_APPLIED, OBJECTS_PRUNED, RECONCILE_SECONDS, RECONCILES, count_phases
from iotenant.kopf_handlers.state import OperatorState
from iotenant.kube.kinds import CUSTOMER_INSTANCE
from iotenant.render.meta import namespace_for

log = logging.getLogger("iotenant.operator")
# While provisioning with nothing left to write, look again this soon. A safety net only: the watch cache
# wakes the loop as soon as a workload's readiness changes.
PROVISIONING_RECHECK_SECONDS = 10.0


def holder_of(claimants: list[tuple[str, str]]) -> str | None:
    """The oldest of the CustomerInstances (creation time, name) sharing a customerId: the one it belongs to."""
    return min(claimants)[1] if claimants else None


def _next_wait(s: OperatorState, outcome: Outcome) -> float:
    timeout = PROVISIONING_RECHECK_SECONDS if outcome.phase == "Provisioning" and not outcome.applied else s.settings.resync_seconds
    return min(timeout, outcome.retry_after) if outcome.retry_after is not None else timeout


def _record(s: OperatorState, uid: str, name: str, outcome: Outcome) -> None:
    RECONCILES.labels("ok").inc()
    OBJECTS_APPLIED.inc(len(outcome.applied))
    OBJECTS_PRUNED.inc(len(outcome.pruned))
    s.phases[uid] = outcome.phase
    s.kids[uid] = outcome.licence_kid
    count_phases(s.phases)
    if outcome.applied or outcome.pruned:
        log.info("%s: applied %d, pruned %d objects; phase %s", name, len(outcome.applied), len(outcome.pruned), outcome.phase)


async def run(s: OperatorState, body: Any, stopped: Any, claimants_of: Callable[[str], list[tuple[str, str]]]) -> None:
    """Reconcile now, then whenever woken (spec, annotations, children, CRDs, keys) or at every resync."""
    uid, name = body["metadata"]["uid"], body["metadata"]["name"]
    namespace = namespace_for(name)
    wakeup = s.wakeups.setdefault(uid, asyncio.Event())
    s.namespaces[namespace] = uid
    backoff = 1.0
    try:
        while not stopped:
            wakeup.clear()
            assert s.cache is not None
            snapshot = s.cache.latest(CUSTOMER_INSTANCE, dict(body))
            started = time.monotonic()
            assert s.reconciler is not None
            try:
                customer_id = str((snapshot.get("spec") or {}).get("customerId", ""))
                outcome = await asyncio.to_thread(s.reconciler.reconcile, snapshot, holder_of(claimants_of(customer_id)))
            except Exception as error:
                RECONCILES.labels("error").inc()
                log.exception("reconcile of %s failed, retrying in %.0f s", name, backoff)
                await asyncio.to_thread(s.reconciler.report_failure, snapshot, error)
                timeout, backoff = backoff, min(backoff * 2, s.settings.resync_seconds)
            else:
                _record(s, uid, name, outcome)
                backoff = 1.0
                timeout = _next_wait(s, outcome)
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
            s.reconciler.forget(uid, namespace)
        s.kids.pop(uid, None)
        s.phases.pop(uid, None)
        count_phases(s.phases)
