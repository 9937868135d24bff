"""Kopf glue, and nothing else: what wakes which reconcile. The loop, the state, the key ring and the
metrics live beside this module; ``customer_instance`` and ``device_fleet`` decide what is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kopf

from iotenant.customer_instance import pull_secrets
from iotenant.customer_instance.live_objects import TENANT_WATCHES, cache_dictionary
from iotenant.customer_instance.pull_secrets import read_pull_secrets
from iotenant.customer_instance.reconciler import CustomerInstanceReconciler
from iotenant.device_fleet.status import report_not_in_customer_namespace
from iotenant.kopf_handlers import instance_loop
from iotenant.kopf_handlers.keyring_upkeep import maintain_keyring, publish_jwks
from iotenant.kopf_handlers.state import RECONCILE_THREADS, OperatorState, state
from iotenant.kube import apiserver_endpoints
from iotenant.kube.apiserver_endpoints import settings_with_endpoints
from iotenant.kube.watch_cache import WatchCache
from iotenant.licensing import signing_keys
from iotenant.licensing.plans import load_catalogue
from iotenant.licensing.trusted_issuers import TrustedIssuers
from iotenant.render.image_pull import PullSecret
from iotenant.render.stack import OPTIONAL_CRDS
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.kinds import CRD, DEVICE_FLEET, NAMESPACE
from iotenant.vocabulary.meta import API_VERSION, CUSTOMER, MANAGED_BY, OPERATOR_NAME, PART_OF, is_managed_namespace

log = logging.getLogger("iotenant.operator")
T = TypeVar("T")
GROUP, VERSION = API_VERSION.split("/")
# The watch cache lists every kind once before the first reconcile; an operator that cannot (RBAC, an
# unreachable API server) stops with the kinds it could not list rather than reconcile blind.
CACHE_SYNC_SECONDS = 300.0


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf keeps no "last handled" copy on CustomerInstances: the loop reacts to generation and annotations
    itself and there are no create or update handlers, so that copy was one more write per instance and
    change that nobody read."""

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    s = state()
    settings.persistence.finalizer = "iotenant.io/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="iotenant.io")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=RECONCILE_THREADS, thread_name_prefix="reconcile"))

    catalogue = load_catalogue(s.settings.plan_catalogue)
    trusted = TrustedIssuers.load(s.settings.trusted_issuers, s.settings.issuer)
    ring, s.keyring_version = await asyncio.to_thread(signing_keys.load_or_create, s.api, s.settings.namespace, s.settings.create_signing_keys)
    s.keyring = ring
    s.optional_crds = frozenset(
        [name for name in OPTIONAL_CRDS if await asyncio.to_thread(s.api.get, CRD, name) is not None])
    loop = asyncio.get_running_loop()
    dictionary = cache_dictionary(s.settings, catalogue)
    s.cache = WatchCache(s.api, TENANT_WATCHES, lambda item: loop.call_soon_threadsafe(_wake_owner, item), dictionary,
                         follows=is_managed_namespace)
    s.api.observe_writes(s.cache.record)
    s.cache.start()
    unlisted = await asyncio.to_thread(s.cache.wait_synced, CACHE_SYNC_SECONDS)
    if unlisted:
        raise kopf.PermanentError(f"could not list {', '.join(unlisted)} within {CACHE_SYNC_SECONDS:.0f} s: "
                                  "check the operator's RBAC and the API server")
    log.info("watch cache filled: %d objects", s.cache.size())
    s.reconciler = CustomerInstanceReconciler(
        api=s.api,
        cache=s.cache,
        settings=await asyncio.to_thread(settings_with_endpoints, s.api, s.settings),
        catalogue=catalogue,
        keyring=lambda: s.keyring,  # type: ignore[arg-type, return-value]
        trusted_issuers=trusted,
        optional_crds=lambda: s.optional_crds,
    )
    s.reconciler.pull_secrets = await asyncio.to_thread(read_pull_secrets, s.api, s.settings.namespace, s.settings.image_pull_secrets)
    await asyncio.to_thread(publish_jwks, s)
    s.tasks.append(asyncio.create_task(maintain_keyring(s)))
    s.tasks.append(asyncio.create_task(refresh_every(
        s, apiserver_endpoints.REFRESH_SECONDS, "the API server's endpoints",
        lambda: settings_with_endpoints(s.api, s.settings), lambda current: adopt_endpoints(s, current))))
    if s.settings.image_pull_secrets:
        s.tasks.append(asyncio.create_task(refresh_every(
            s, pull_secrets.REFRESH_SECONDS, "the image pull Secrets",
            lambda: read_pull_secrets(s.api, s.settings.namespace, s.settings.image_pull_secrets),
            lambda current: adopt_pull_secrets(s, current))))
    log.info("iotenant operator started: namespace %s, active signing key %s", s.settings.namespace, ring.active_kid)


async def refresh_every(s: OperatorState, seconds: float, what: str, read: Callable[[], T], adopt: Callable[[T], bool]) -> None:
    """Read ``what`` again every ``seconds``; when ``adopt`` takes a changed value, every tenant is reconciled again."""
    while True:
        await asyncio.sleep(seconds)
        try:
            value = await asyncio.to_thread(read)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading %s failed; retrying", what)
            continue
        if adopt(value):
            s.wake()


def adopt_endpoints(s: OperatorState, current: OperatorSettings) -> bool:
    """The API server's addresses as read now; a change re-renders every tenant's egress."""
    assert s.reconciler is not None
    if current == s.reconciler.settings:
        return False
    log.info("the API server's endpoints changed: %s on %s", ",".join(current.apiserver_cidrs), current.apiserver_ports)
    s.reconciler.settings = current
    return True


def adopt_pull_secrets(s: OperatorState, current: tuple[PullSecret, ...]) -> bool:
    """The image pull Secrets as read now; a change re-renders every tenant's copies."""
    assert s.reconciler is not None
    if current == s.reconciler.pull_secrets:
        return False
    log.info("image pull Secrets changed: %s", ", ".join(secret.name for secret in current) or "none readable")
    s.reconciler.pull_secrets = current
    return True


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    s = state()
    for task in s.tasks:
        task.cancel()
    if s.cache is not None:
        s.cache.stop()


@kopf.index(GROUP, VERSION, "customerinstances")
def customer_ids(body: kopf.Body, **_: Any) -> dict[str, tuple[str, str]]:
    """Every CustomerInstance by its customerId (Kopf fills the index before any reconcile starts)."""
    metadata = body.get("metadata", {})
    return {str((body.get("spec") or {}).get("customerId", "")): (str(metadata.get("creationTimestamp", "")), str(metadata.get("name", "")))}


@kopf.daemon(GROUP, VERSION, "customerinstances", cancellation_timeout=10.0)
async def customer_instance_loop(body: kopf.Body, stopped: kopf.DaemonStopped, customer_ids: kopf.Index[str, tuple[str, str]],
                                 **_: Any) -> None:
    await instance_loop.run(state(), body, stopped, lambda customer_id: list(customer_ids.get(customer_id, [])))


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


def _wake_owner(body: dict[str, Any]) -> None:
    """Wake the loop of the CustomerInstance whose object (or whose fleet's object) changed: the watch
    cache reports every change it did not make itself (a workload's readiness, a cloud's load balancer
    address, a hand edit or deletion to heal)."""
    s = state()
    metadata = body.get("metadata", {})
    if body.get("kind") == DEVICE_FLEET.kind:
        # Kopf's own watch of fleets may wake the loop before this cache, from which the reconcile
        # reads the fleets, has the change: without this second wake the reconcile would find the
        # fleets unchanged and the change would wait for the next resync.
        if metadata.get("namespace") in s.namespaces:
            s.wake(s.namespaces[metadata["namespace"]])
        return
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
    found = s.cache.get(NAMESPACE, namespace) if s.cache is not None else None
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


def _is_optional_crd(name: str, **_: Any) -> bool:
    return name in OPTIONAL_CRDS


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_is_optional_crd)
def optional_crd_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
    """The ServiceMonitor, PrometheusRule and cert-manager Certificate CRDs: the objects that need them
    appear as soon as their CRD does (and their conditions say so until then)."""
    s = state()
    name = body.get("metadata", {}).get("name", "")
    present = type != "DELETED" and body.get("metadata", {}).get("deletionTimestamp") is None
    established = any(
        c.get("type") == "Established" and c.get("status") == "True" for c in (body.get("status") or {}).get("conditions") or []
    )
    now = s.optional_crds | {name} if present and established else s.optional_crds - {name}
    if now != s.optional_crds:
        s.optional_crds = now
        log.info("CRD %s %s", name, "available" if name in now else "gone")
        if s.cache is not None:
            s.cache.list_absent_kinds()
        s.wake()
