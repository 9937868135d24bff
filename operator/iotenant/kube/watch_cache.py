"""A watch cache: what the operator reads of every tenant, kept current by one list-then-watch per kind.

A converged tenant's reconcile reads from here, never from the API server, so a resync of a thousand
tenants makes no API reads at all. Each watched kind is listed once (in pages), then watched from that
list's resourceVersion with bookmarks; a watch the server calls too old (410) is followed by a fresh
list, whose differences are reported as changes. Objects are kept as compressed JSON (no managedFields,
no status unless the reconcile reads it; ``object_store``), and every read hands out a fresh copy that the
caller may change.

A kind that may be read only where a RoleBinding allows it (Secrets) is held ``per_namespace``: listed and
watched in each namespace the caller ``follows`` (for the operator: the customer namespaces it manages), one
reflector each, never across the cluster. Until a followed namespace was listed, reading that kind there
raises ``NotListedYet``: a reconcile never takes "not listed" for "absent" (and generates a new password).

The operator's own writes are recorded as they succeed (``record``, wired to ``ClusterAPI``'s write
hook): the next reconcile sees what was just written without waiting for the watch, an older event
never replaces a newer object, and the watch's echo of that write (the same resourceVersion) is not
reported as a change unless it arrived before the write's own response.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.kube.object_store import CompressedJSON, ObjectStore, newer
from iotenant.vocabulary.kinds import NAMESPACE, ResourceKind

log = logging.getLogger("iotenant.watch_cache")

# Objects per list request. Each page is decoded whole while it is compacted, and every kind lists at
# once when the operator starts: pages of 500 took a new leader of 1,000 tenants to 313 MiB.
PAGE_SIZE = 100
WATCH_SECONDS = 300  # the server ends each watch after this long; it is resumed from the last resourceVersion
ABSENT_KIND_RECHECK_SECONDS = 30.0  # a kind whose CRD is not installed is listed again this often (or when one appears)
RETRY_SECONDS = 1.0
# Namespace-by-namespace watches each hold a connection: the pool keeps up to this many open between watches.
FOLLOWED_CONNECTIONS = 5000
# Followed namespaces listed at once: a new leader of a thousand tenants lists them in turn, not in one burst.
FOLLOWED_LISTS_AT_ONCE = 16
# A followed namespace refused (403: the operator's RoleBinding there is not in place yet) is retried every
# RETRY_SECONDS and logged as a warning only every this many refusals.
REFUSALS_PER_WARNING = 60

CACHE_RELISTS = Counter("iotenant_operator_cache_relists_total",
                        "Full lists of a watched kind, by reason (start, expired: the watch was too old, error, installed)",
                        ["kind", "reason"])

# A change is reported with the object as the watch delivered it (for a deletion: its last state).
ChangeHandler = Callable[[Manifest], None]


@dataclass(frozen=True)
class Watched:
    """One kind the cache holds: objects matching ``label_selector`` in every namespace."""

    kind: ResourceKind
    label_selector: str | None = None
    keep_status: bool = False  # keep .status (workload readiness, load balancer addresses); else dropped
    # Only objects in namespaces whose name starts with this are held (None: every namespace): what
    # anyone may create in any namespace must not take the operator's memory.
    namespace_prefix: str | None = None

    # Listed and watched in each followed namespace on its own, never across the cluster (see the module).
    per_namespace: bool = False

    def holds(self, namespace: str) -> bool:
        return self.namespace_prefix is None or namespace.startswith(self.namespace_prefix)


class NotListedYet(Exception):
    """A per-namespace kind read in a followed namespace before its first list there completed."""


@dataclass(frozen=True)
class _Scope:
    """What one reflector lists and watches: a kind across the cluster (namespace None) or in one namespace."""

    kind: ResourceKind
    namespace: str | None
    stop: threading.Event  # set: this reflector ends (the cache stops, or the namespace is no longer followed)
    listed: threading.Event  # set after the first complete list
    poke: threading.Event  # set: list again now (a CRD appeared)
    refused: threading.Event = field(default_factory=threading.Event)  # the last list was refused (403)


class _Expired(Exception):
    """The server no longer has the history the watch asked for (410 Gone): list again."""


class WatchCache:
    """Holds every ``Watched`` kind; ``start`` it, wait until ``synced``, then read with ``get`` and ``in_namespace``."""

    def __init__(self, api: ClusterAPI, watched: Sequence[Watched], on_change: ChangeHandler, dictionary: bytes = b"",
                 follows: Callable[[Manifest], bool] = lambda namespace: True) -> None:
        """``dictionary``: text like the objects to be held (their JSON), which makes each compress better.
        ``follows``: the Namespaces in which the ``per_namespace`` kinds are held (Namespace must be watched)."""
        per_namespace = tuple(w.kind for w in watched if w.per_namespace)
        if per_namespace and not any(w.kind == NAMESPACE and not w.per_namespace for w in watched):
            raise ValueError("per-namespace kinds need the cache to watch Namespaces")
        self._codec = CompressedJSON(dictionary)
        self._api = api.with_own_connections(len(watched) + 2 + (FOLLOWED_CONNECTIONS if per_namespace else 0))
        self._watched = {w.kind: w for w in watched}
        self._stores = {w.kind: ObjectStore(w.kind) for w in watched}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scopes = {w.kind: _Scope(w.kind, None, self._stopping, threading.Event(), threading.Event())
                        for w in watched if not w.per_namespace}
        self._per_namespace = per_namespace
        self._follows = follows
        self._followed: dict[str, dict[ResourceKind, _Scope]] = {}  # namespace -> its reflectors' scopes
        self._followed_lists = threading.BoundedSemaphore(FOLLOWED_LISTS_AT_ONCE)
        self._on_change = on_change

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for scope in self._scopes.values():
            self._start(scope)

    def _start(self, scope: _Scope) -> None:
        name = f"watch-{scope.kind.plural}" + (f"-{scope.namespace}" if scope.namespace else "")
        threading.Thread(target=self._reflect, args=(scope,), name=name, daemon=True).start()

    def wait_synced(self, timeout: float) -> list[str]:
        """Block until every kind was listed once (a kind not installed counts as listed, empty), and each
        per-namespace kind in every followed namespace (or refused there: the operator's access is made by the
        reconcile, which therefore must run); returns what is still not listed after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for scope in self._scopes.values():
            scope.listed.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            followed = [scope for scopes in self._followed.values() for scope in scopes.values()]
        while time.monotonic() < deadline and not all(s.listed.is_set() or s.refused.is_set() for s in followed):
            self._stopping.wait(0.05)
        return [scope.kind.kind for scope in self._scopes.values() if not scope.listed.is_set()] + [
            f"{scope.kind.kind} in {scope.namespace}" for scope in followed if not (scope.listed.is_set() or scope.refused.is_set())]

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for scopes in self._followed.values():
                for scope in scopes.values():
                    scope.stop.set()
        self.list_absent_kinds()  # wakes the threads waiting for a CRD, so that they see the stop

    def list_absent_kinds(self) -> None:
        """A CRD appeared: the kinds not installed at their last list are listed now, not at the next recheck."""
        for scope in self._scopes.values():
            scope.poke.set()

    # ----------------------------------------------------------------------------- followed namespaces

    def _follow(self, namespaces: Iterable[tuple[str, Manifest | None]]) -> None:
        """Hold the per-namespace kinds in each of these Namespaces that ``follows`` admits (None: deleted), and
        stop holding them in the others."""
        if not self._per_namespace:
            return
        started: list[_Scope] = []
        for name, namespace in namespaces:
            wanted = namespace is not None and self._follows(namespace)
            with self._lock:
                current = self._followed.get(name)
                if wanted and current is None:
                    stop = threading.Event()
                    scopes = {kind: _Scope(kind, name, stop, threading.Event(), threading.Event()) for kind in self._per_namespace}
                    self._followed[name] = scopes
                    started += scopes.values()
                elif not wanted and current is not None:
                    del self._followed[name]
                    for kind, scope in current.items():
                        scope.stop.set()
                        for held in list(self._stores[kind].objects.get(name, {})):
                            self._stores[kind].pop(name, held)
        for scope in started:
            self._start(scope)

    def followed(self) -> list[str]:
        """The namespaces in which the per-namespace kinds are held."""
        with self._lock:
            return sorted(self._followed)

    def _readable(self, kind: ResourceKind, namespace: str) -> bool:
        """Whether ``kind`` is held in ``namespace``; raises NotListedYet for a followed namespace not yet listed."""
        if not self._watched[kind].per_namespace:
            return True
        with self._lock:
            scope = self._followed.get(namespace, {}).get(kind)
        if scope is None:
            return False
        if not scope.listed.is_set():
            raise NotListedYet(f"{kind.plural} in namespace {namespace} are not listed yet")
        return True

    # ----------------------------------------------------------------------------- reads

    def get(self, kind: ResourceKind, name: str, namespace: str | None = None) -> Manifest | None:
        if not self._readable(kind, namespace or ""):
            return None
        with self._lock:
            found = self._stores[kind].objects.get(namespace or "", {}).get(name)
        return self._codec.expand(found[1]) if found else None

    def latest(self, kind: ResourceKind, body: Manifest) -> Manifest:
        """The newer of ``body`` (as another watcher saw it) and the cache's copy (which holds the operator's
        own last write at once): a status just written is never compared with the one before it."""
        metadata = body.get("metadata", {})
        held = self.get(kind, metadata.get("name", ""), metadata.get("namespace"))
        if held is not None and newer(str(held["metadata"].get("resourceVersion", "")), str(metadata.get("resourceVersion", ""))):
            return held
        return json.loads(json.dumps(body))

    def in_namespace(self, kind: ResourceKind, namespace: str, labels: dict[str, str] | None = None) -> list[Manifest]:
        """Copies of the objects of ``kind`` in ``namespace`` whose labels include ``labels``."""
        if not self._readable(kind, namespace):
            return []
        with self._lock:
            data = [entry[1] for entry in self._stores[kind].objects.get(namespace, {}).values()]
        items = [self._codec.expand(raw) for raw in data]
        if not labels:
            return items
        return [item for item in items
                if all((item["metadata"].get("labels") or {}).get(key) == value for key, value in labels.items())]

    def size(self) -> int:
        with self._lock:
            return sum(store.count for store in self._stores.values())

    # ----------------------------------------------------------------------------- the operator's own writes

    def record(self, kind: ResourceKind, written: Manifest | None, name: str, namespace: str | None) -> None:
        """A write of ours succeeded: ``written`` is the object the server returned (None: it was deleted)."""
        if kind not in self._watched or not self._watched[kind].holds(namespace or ""):
            return
        store, namespace_key = self._stores[kind], namespace or ""
        if kind == NAMESPACE:
            self._follow([(name, written)])
        if written is None:
            with self._lock:
                store.pop(namespace_key, name)
            return
        version = str(written.get("metadata", {}).get("resourceVersion", ""))
        data = self._codec.compact(written, kind, self._watched[kind].keep_status)  # outside the lock: reads wait for no compression
        with self._lock:
            if self._watched[kind].per_namespace and namespace_key not in self._followed:
                return
            store.offer(namespace_key, name, version, data)

    # ----------------------------------------------------------------------------- list and watch, one thread per scope

    def _reflect(self, scope: _Scope) -> None:
        version: str | None = None
        reason, refusals = "start", 0
        while not scope.stop.is_set():
            try:
                if version is None:
                    scope.poke.clear()
                    with self._followed_lists if scope.namespace is not None else contextlib.nullcontext():
                        version = self._list(scope, reason)
                    if version is None:  # not installed: look again later
                        scope.poke.wait(ABSENT_KIND_RECHECK_SECONDS)
                        reason = "installed"
                        continue
                    refusals = 0
                version = self._watch(scope, version)
            except _Expired:
                version, reason = None, "expired"
            except Exception as error:  # the server restarting, a dropped connection: resume, list again if need be
                if scope.stop.is_set():
                    return
                if isinstance(error, ApiException) and error.status == 404:
                    version, reason = None, "installed"
                    self._replace(scope, {})
                    continue
                if isinstance(error, ApiException) and error.status == 403 and scope.namespace is not None:
                    scope.refused.set()  # the operator's RoleBinding there is not in place (yet)
                    refusals += 1
                    if refusals % REFUSALS_PER_WARNING == 0:
                        log.warning("reading %s in %s is still refused (403) after %d attempts", scope.kind.plural, scope.namespace, refusals)
                else:
                    log.warning("watch of %s%s interrupted (%s); resuming", scope.kind.plural,
                                f" in {scope.namespace}" if scope.namespace else "", error)
                scope.stop.wait(RETRY_SECONDS)
                if version is None:
                    reason = "error"

    def _list(self, scope: _Scope, reason: str) -> str | None:
        """List the scope in full and make it the store's content; returns the list's resourceVersion (None: not installed)."""
        kind, watched = scope.kind, self._watched[scope.kind]
        fresh: dict[tuple[str, str], tuple[str, bytes]] = {}  # compact only: a page's decoded items go with the page
        token: str | None = None
        try:
            while True:
                page = self._api.list_page(kind, watched.label_selector, PAGE_SIZE, token, scope.namespace)
                for item in page.get("items", []):
                    metadata = item.get("metadata", {})
                    if not watched.holds(metadata.get("namespace", "")):
                        continue
                    item.setdefault("kind", kind.kind)
                    item.setdefault("apiVersion", kind.api_version)
                    fresh[(metadata.get("namespace", ""), metadata["name"])] = (
                        str(metadata.get("resourceVersion", "")), self._codec.compact(item, kind, watched.keep_status))
                token = page.get("metadata", {}).get("continue") or None
                if token is None:
                    version = str(page.get("metadata", {}).get("resourceVersion", ""))
                    break
        except ApiException as error:
            if error.status == 404:
                self._replace(scope, {})
                scope.listed.set()
                return None
            if error.status == 410:  # the continue token expired mid-list: start over
                raise _Expired() from error
            raise
        CACHE_RELISTS.labels(kind.kind, reason).inc()
        self._replace(scope, fresh)
        scope.refused.clear()
        scope.listed.set()
        return version

    def _replace(self, scope: _Scope, fresh: dict[tuple[str, str], tuple[str, bytes]]) -> None:
        """Make ``fresh`` the scope's content in the store; report what changed (a deleted object as last held),
        unless this is the first list: that is the starting point, not news."""
        kind = scope.kind
        store, news = self._stores[kind], scope.listed.is_set()
        changed: list[bytes] = []
        with self._lock:
            if scope.namespace is not None and self._followed.get(scope.namespace, {}).get(kind) is not scope:
                return  # no longer followed: what this reflector listed is not held
            held = [scope.namespace] if scope.namespace is not None else list(store.objects)
            gone = [(namespace, name) for namespace in held for name in store.objects.get(namespace, {}) if (namespace, name) not in fresh]
            for namespace, name in gone:
                removed = store.pop(namespace, name)
                if removed is not None and news:
                    changed.append(removed[1])
            for (namespace, name), (version, data) in fresh.items():
                if store.offer(namespace, name, version, data) and news:
                    changed.append(data)
        if kind == NAMESPACE:
            self._follow([(name, self._codec.expand(data)) for (_namespace, name), (_version, data) in fresh.items()]
                         + [(name, None) for _namespace, name in gone])
        self._report(self._codec.expand(data) for data in changed)

    def _watch(self, scope: _Scope, version: str) -> str:
        """Follow the scope from ``version`` until the server ends the watch; returns the last resourceVersion seen."""
        kind = scope.kind
        watched, store = self._watched[kind], self._stores[kind]
        for event in self._api.watch(kind, watched.label_selector, version, WATCH_SECONDS, scope.namespace):
            if scope.stop.is_set():
                break
            kind_of_event, item = event.get("type"), event.get("object") or {}
            if kind_of_event == "ERROR":
                if item.get("code") == 410:
                    raise _Expired()
                raise RuntimeError(f"watch error: {item.get('message', item)}")
            metadata = item.get("metadata", {})
            version = str(metadata.get("resourceVersion", version))
            if kind_of_event == "BOOKMARK":
                continue
            namespace, name = metadata.get("namespace", ""), metadata.get("name", "")
            if not watched.holds(namespace):
                continue
            item.setdefault("kind", kind.kind)
            item.setdefault("apiVersion", kind.api_version)
            data = None if kind_of_event == "DELETED" else self._codec.compact(item, kind, watched.keep_status)
            with self._lock:
                if scope.namespace is not None and self._followed.get(scope.namespace, {}).get(kind) is not scope:
                    break
                if data is None:
                    news = store.pop(namespace, name) is not None
                else:
                    news = store.offer(namespace, name, version, data)
            if kind == NAMESPACE:
                self._follow([(name, None if data is None else item)])
            if news:
                self._report([item])
        return version

    def _report(self, changed: Iterable[Manifest]) -> None:
        for item in changed:
            try:
                self._on_change(item)
            except Exception:
                log.exception("reporting a change of %s failed", item.get("metadata", {}).get("name"))
