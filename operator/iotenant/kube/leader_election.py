"""One active operator among replicas: a coordination.k8s.io Lease in the operator's namespace.

A replica reconciles only while it holds the Lease. It takes the Lease when it is free, released,
or not renewed within its duration; it renews it every ``renew_seconds``. A leader that cannot renew
before its Lease runs out stops at once (the process exits and is restarted as a standby), so two
replicas never reconcile at the same time for longer than the clocks disagree. On a clean shutdown
the leader releases the Lease and a standby takes over without waiting for it to expire.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException
from prometheus_client import Gauge

from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.vocabulary.kinds import LEASE

log = logging.getLogger("iotenant.leader_election")
LEADING = Gauge("iotenant_operator_leader", "1 while this replica holds the leader Lease and reconciles, 0 while standing by")


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.strptime(value.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


@dataclass
class LeaderElection:
    api: ClusterAPI
    namespace: str
    identity: str
    name: str = "iotenant-operator"
    lease_seconds: int = 15
    renew_seconds: float = 5.0
    retry_seconds: float = 2.0
    clock: Callable[[], float] = time.time

    def _lease(self, spec: dict[str, Any], resource_version: str | None = None) -> Manifest:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        now = self.clock()
        current = self.api.get(LEASE, self.name, self.namespace)
        mine = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds, "renewTime": _micro_time(now)}
        try:
            if current is None:
                self.api.create(self._lease({**mine, "acquireTime": _micro_time(now), "leaseTransitions": 0}))
                return True
            spec = current.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            expires = _parse_time(spec.get("renewTime")) + int(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if holder and holder != self.identity and now < expires:
                return False
            if holder == self.identity:
                updated = {**spec, **mine}
            else:
                transitions = int(spec.get("leaseTransitions") or 0) + 1
                updated = {**mine, "acquireTime": _micro_time(now), "leaseTransitions": transitions}
            self.api.replace(LEASE, self.name, self.namespace, self._lease(updated, current["metadata"]["resourceVersion"]))
            return True
        except ApiException as error:
            if error.status in (409, 422):  # another replica wrote first
                return False
            raise

    def acquire(self, stopping: threading.Event) -> bool:
        """Block until this replica leads (True) or ``stopping`` is set (False)."""
        announced = False
        while not stopping.is_set():
            try:
                if self.try_acquire_or_renew():
                    log.info("leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name)
                    LEADING.set(1)
                    return True
            except Exception as error:  # the API may be briefly unreachable: keep trying
                log.warning("leader election: %s", error)
            if not announced:
                log.info("standing by: another replica holds Lease %s/%s", self.namespace, self.name)
                announced = True
            stopping.wait(self.retry_seconds)
        return False

    def keep(self, lost: Callable[[], None], stopping: threading.Event) -> threading.Thread:
        """Renew in the background; call ``lost`` when the Lease can no longer be held."""

        def renew() -> None:
            last_renewal = self.clock()
            while not stopping.wait(self.renew_seconds):
                try:
                    if self.try_acquire_or_renew():
                        last_renewal = self.clock()
                        continue
                    log.error("another replica took Lease %s/%s", self.namespace, self.name)
                except Exception as error:
                    log.warning("could not renew the Lease: %s", error)
                    if self.clock() - last_renewal < self.lease_seconds - self.renew_seconds:
                        continue
                LEADING.set(0)
                lost()
                return

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the Lease up so that a standby takes over at once."""
        try:
            current = self.api.get(LEASE, self.name, self.namespace)
            if current and (current.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**current["spec"], "holderIdentity": "", "renewTime": _micro_time(self.clock() - self.lease_seconds)}
                self.api.replace(LEASE, self.name, self.namespace, self._lease(spec, current["metadata"]["resourceVersion"]))
                LEADING.set(0)
                log.info("released Lease %s/%s", self.namespace, self.name)
        except Exception as error:
            log.warning("could not release the Lease: %s", error)
