"""The operator process's shared state: what every handler of one process reads and wakes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from iotenant.customer_instance.reconciler import CustomerInstanceReconciler
from iotenant.kube.client import ClusterAPI
from iotenant.kube.watch_cache import WatchCache
from iotenant.licensing import signing_keys
from iotenant.settings import OperatorSettings

# Reconciles run in threads; a tenant whose broker takes minutes to admit a big fleet must not hold
# up the others, so there are more threads than the default (cores + 4).
RECONCILE_THREADS = 32


@dataclass
class OperatorState:
    """Shared by every handler of one operator process (Kopf's memo)."""

    settings: OperatorSettings
    api: ClusterAPI
    reconciler: CustomerInstanceReconciler | None = None
    cache: WatchCache | None = None
    keyring: signing_keys.KeyRing | None = None
    keyring_version: str = ""
    optional_crds: frozenset[str] = frozenset()  # the established CRDs of render.stack.OPTIONAL_CRDS
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)  # customer namespace -> CustomerInstance uid
    fleets_seen: dict[str, tuple[int, str]] = field(default_factory=dict)
    seen: dict[str, tuple[int, str]] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    kids: dict[str, str | None] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # One per reconcile thread: an instance's loop takes one before it reads the instance to reconcile.
    reconcile_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(RECONCILE_THREADS))

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
