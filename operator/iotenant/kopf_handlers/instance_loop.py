"""One loop per CustomerInstance: reconcile, then wait to be woken or for the resync, with backoff on failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from iotenant.customer_instance.reconciler import Outcome
from iotenant.kopf_handlers.metrics import (
    OBJECTS_APPLIED, OBJECTS_PRUNED, RECONCILE_SECONDS, RECONCILE_WAIT_SECONDS, RECONCILES, count_phases,
)
from iotenant.kopf_handlers.state import OperatorState
from iotenant.vocabulary.kinds import CUSTOMER_INSTANCE
from iotenant.vocabulary.meta import namespace_for

log = logging.getLogger("iotenant.operator")


def holder_of(claimants: list[tuple[str, str]]) -> str | None:
    """The oldest of the CustomerInstances (creation time, name) sharing a customerId: the one it belongs to."""
    return min(claimants)[1] if claimants else None


def _next_wait(s: OperatorState, outcome: Outcome) -> float:
    """Until the resync, or sooner when something asked to be tried again. A provisioning tenant needs no
    sooner look: the watch cache wakes it as soon as a workload's readiness changes (looking every 10 s
    was a thousand provisioning tenants' 100 reconciles a second, a core the control plane lacked)."""
    timeout = s.settings.resync_seconds
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


async def _reconcile_once(s: OperatorState, body: Any, uid: str, name: str, backoff: float,
                          claimants_of: Callable[[str], list[tuple[str, str]]]) -> tuple[float, float]:
    """One reconcile from the newest copy of the instance; returns (seconds to wait, next backoff).

    The copy is taken when a reconcile thread is free, not while queueing for one (a thousand loops
    starting at once hold no thousand copies, and none grows stale in the queue), and dropped when this
    returns."""
    assert s.cache is not None and s.reconciler is not None
    due = time.monotonic()
    async with s.reconcile_slots:
        started = time.monotonic()
        RECONCILE_WAIT_SECONDS.observe(started - due)
        snapshot = s.cache.latest(CUSTOMER_INSTANCE, dict(body))
        try:
            customer_id = str((snapshot.get("spec") or {}).get("customerId", ""))
            outcome = await asyncio.to_thread(s.reconciler.reconcile, snapshot, holder_of(claimants_of(customer_id)))
        except Exception as error:
            RECONCILES.labels("error").inc()
            log.exception("reconcile of %s failed, retrying in %.0f s", name, backoff)
            await asyncio.to_thread(s.reconciler.report_failure, snapshot, error)
            return backoff, min(backoff * 2, s.settings.resync_seconds)
        else:
            _record(s, uid, name, outcome)
            return _next_wait(s, outcome), 1.0
        finally:
            RECONCILE_SECONDS.observe(time.monotonic() - started)


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
            timeout, backoff = await _reconcile_once(s, body, uid, name, backoff, claimants_of)
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
