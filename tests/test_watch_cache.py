"""The operator's watch cache against the real API server: what it holds, what it reports, what it hands out."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import config

from conftest import Cluster, token_kubeconfig, wait_for
from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.kube.watch_cache import NotListedYet, WatchCache, Watched
from iotenant.vocabulary.kinds import CONFIG_MAP, NAMESPACE, SECRET, ResourceKind
from iotenant.vocabulary.meta import CUSTOMER

NS = "cache-test"
WIDGET = ResourceKind("cache-test.iotenant.io/v1", "Widget", "widgets", True)
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.cache-test.iotenant.io"},
    "spec": {"group": "cache-test.iotenant.io", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


class Reports:
    """What the cache reported as changed."""

    def __init__(self) -> None:
        self.seen: list[Manifest] = []
        self.lock = threading.Lock()

    def __call__(self, item: Manifest) -> None:
        with self.lock:
            self.seen.append(item)

    def of(self, name: str) -> list[str]:
        with self.lock:
            return [str(i["metadata"].get("resourceVersion")) for i in self.seen if i["metadata"].get("name") == name]


def config_map(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS, "labels": labels or {}}, "data": data}


@pytest.fixture
def cache_api(kube: Cluster) -> Iterator[ClusterAPI]:
    kube.kubectl("create", "namespace", NS, check=False)
    api = ClusterAPI(config.new_client_from_config(config_file=str(kube.kubeconfig)))
    yield api
    kube.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    kube.kubectl("delete", "crd", WIDGET_CRD["metadata"]["name"], "--wait=false", check=False)


def test_the_cache_holds_labelled_objects_reports_changes_of_others_and_not_its_own_writes(kube: Cluster, cache_api: ClusterAPI) -> None:
    admin = ClusterAPI(config.new_client_from_config(config_file=str(kube.kubeconfig)))  # "someone else"
    admin.apply(config_map("kept", {"k": "1"}, {CUSTOMER: "acme"}))
    admin.apply(config_map("unlabelled", {"k": "1"}))
    reports = Reports()
    cache = WatchCache(cache_api, (Watched(NAMESPACE), Watched(CONFIG_MAP, CUSTOMER)), reports)
    cache_api.observe_writes(cache.record)
    cache.start()
    try:
        assert cache.wait_synced(30) == []
        kept = cache.get(CONFIG_MAP, "kept", NS)
        assert kept is not None and kept["data"] == {"k": "1"} and "managedFields" not in kept["metadata"]
        assert kept["kind"] == "ConfigMap" and kept["apiVersion"] == "v1"
        assert cache.get(CONFIG_MAP, "unlabelled", NS) is None, "only what the selector names is held"
        assert cache.get(NAMESPACE, NS) is not None
        assert reports.of("kept") == [], "the first list is the starting point, not a change"

        # A copy is handed out: changing it changes nothing held.
        kept["data"]["k"] = "tampered"
        assert cache.get(CONFIG_MAP, "kept", NS)["data"] == {"k": "1"}

        # Someone else changes it: reported, and held as changed.
        changed = admin.apply(config_map("kept", {"k": "2"}, {CUSTOMER: "acme"}))
        wait_for(lambda: changed["metadata"]["resourceVersion"] in reports.of("kept"), timeout=10, what="the change reported")
        assert cache.get(CONFIG_MAP, "kept", NS)["data"] == {"k": "2"}

        # Its own write is held at once (the next reconcile reads it without waiting for the watch), and the
        # watch's echo of it, however late, never takes the object back to an older version.
        written = cache_api.apply(config_map("kept", {"k": "3"}, {CUSTOMER: "acme"}))
        assert cache.get(CONFIG_MAP, "kept", NS)["data"] == {"k": "3"}
        admin.apply(config_map("marker", {"k": "1"}, {CUSTOMER: "acme"}))  # a later event: the echo came before it
        wait_for(lambda: reports.of("marker"), timeout=10, what="the marker reported")
        assert cache.get(CONFIG_MAP, "kept", NS)["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]

        # A label that stops matching is a deletion; so is a real one, by someone else.
        admin.merge_patch(CONFIG_MAP, "marker", NS, {"metadata": {"labels": {CUSTOMER: None}}})
        wait_for(lambda: cache.get(CONFIG_MAP, "marker", NS) is None, timeout=10, what="the unlabelled marker dropped")
        admin.delete(CONFIG_MAP, "kept", NS)
        wait_for(lambda: cache.get(CONFIG_MAP, "kept", NS) is None, timeout=10, what="the deleted object dropped")
        assert len(reports.of("kept")) >= 2

        # Namespaced reads filter by namespace and labels: a look-alike elsewhere is not the tenant's.
        kube.kubectl("create", "namespace", "cache-test-other", check=False)
        admin.apply({**config_map("look-alike", {"k": "1"}, {CUSTOMER: "acme"}), "metadata": {
            "name": "look-alike", "namespace": "cache-test-other", "labels": {CUSTOMER: "acme"}}})
        admin.apply(config_map("other-tenant", {"k": "1"}, {CUSTOMER: "globex"}))
        wait_for(lambda: cache.get(CONFIG_MAP, "other-tenant", NS), timeout=10, what="the other tenant's object")
        assert [i["metadata"]["name"] for i in cache.in_namespace(CONFIG_MAP, NS, {CUSTOMER: "acme"})] == []
        assert [i["metadata"]["name"] for i in cache.in_namespace(CONFIG_MAP, NS, {CUSTOMER: "globex"})] == ["other-tenant"]
    finally:
        cache.stop()
        kube.kubectl("delete", "namespace", "cache-test-other", "--wait=false", check=False)


def test_a_kind_whose_crd_is_missing_is_empty_until_the_crd_appears_and_after_it_goes(kube: Cluster, cache_api: ClusterAPI) -> None:
    namespace = "cache-test-crd"  # not the first test's: that one is still being deleted
    kube.kubectl("create", "namespace", namespace, check=False)
    reports = Reports()
    cache = WatchCache(cache_api, (Watched(WIDGET, CUSTOMER),), reports)
    cache.start()
    try:
        assert cache.wait_synced(30) == [], "a kind not installed counts as listed, empty"
        assert cache.in_namespace(WIDGET, namespace) == []
        kube.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(WIDGET_CRD))
        kube.kubectl("wait", "--for=condition=Established", f"crd/{WIDGET_CRD['metadata']['name']}", "--timeout=30s")
        widget = {"apiVersion": WIDGET.api_version, "kind": "Widget", "metadata": {"name": "w1", "namespace": namespace, "labels": {CUSTOMER: "acme"}},
                  "size": "x" * 10_000, "deep": json.loads("[" * 60 + "]" * 60)}
        kube.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(widget))
        started = time.monotonic()
        cache.list_absent_kinds()  # as the operator does when a CRD it cares for is established
        held = wait_for(lambda: cache.get(WIDGET, "w1", namespace), timeout=10, what="the widget listed once its CRD appeared")
        assert time.monotonic() - started < 10 and held["size"] == "x" * 10_000
        kube.kubectl("delete", "crd", WIDGET_CRD["metadata"]["name"], "--timeout=60s")
        wait_for(lambda: cache.get(WIDGET, "w1", namespace) is None, timeout=30, what="the widgets dropped with their CRD")
    finally:
        cache.stop()
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_a_kind_held_by_namespace_prefix_ignores_every_other_namespace(kube: Cluster, cache_api: ClusterAPI) -> None:
    """What anyone may create in any namespace (a DeviceFleet) is held only in customer namespaces."""
    admin = ClusterAPI(config.new_client_from_config(config_file=str(kube.kubeconfig)))
    held, outside = "prefix-held", "prefix-outside"
    for namespace in (held, outside):
        kube.kubectl("create", "namespace", namespace, check=False)

    def in_namespace(name: str, namespace: str) -> Manifest:
        return {**config_map(name, {"k": "1"}), "metadata": {"name": name, "namespace": namespace}}

    admin.apply(in_namespace("elsewhere", outside))
    admin.apply(in_namespace("inside", held))
    reports = Reports()
    cache = WatchCache(cache_api, (Watched(CONFIG_MAP, namespace_prefix=held),), reports)
    cache_api.observe_writes(cache.record)
    cache.start()
    try:
        assert cache.wait_synced(30) == []
        assert cache.get(CONFIG_MAP, "inside", held) is not None
        assert cache.get(CONFIG_MAP, "elsewhere", outside) is None, "listed outside the prefix: not held"
        admin.apply(in_namespace("elsewhere-later", outside))  # watched outside the prefix: not held, not reported
        cache_api.apply(in_namespace("written-elsewhere", outside))  # its own write outside the prefix: not held
        admin.apply(in_namespace("marker", held))
        wait_for(lambda: reports.of("marker"), timeout=10, what="the marker inside the prefix")
        assert cache.get(CONFIG_MAP, "elsewhere-later", outside) is None and cache.get(CONFIG_MAP, "written-elsewhere", outside) is None
        assert reports.of("elsewhere-later") == []
    finally:
        cache.stop()
        kube.kubectl("delete", "namespace", held, outside, "--wait=false", check=False)


def test_a_per_namespace_kind_is_read_only_in_followed_namespaces_and_never_across_the_cluster(
        kube: Cluster, tmp_path: Path) -> None:
    """Secrets as the operator holds them: listed and watched in each followed namespace alone, with an
    identity that may read them nowhere else; a followed namespace not yet readable is never taken as empty."""
    followed, other, account = "per-ns-followed", "per-ns-other", "per-ns-reader"
    for namespace in (followed, other):
        kube.kubectl("create", "namespace", namespace, check=False)
    kube.kubectl("label", "--overwrite", "namespace", followed, "follow=yes")
    kube.kubectl("create", "serviceaccount", account, "-n", followed, check=False)
    kube.kubectl("create", "clusterrole", account, "--verb=list,watch", "--resource=namespaces", check=False)
    kube.kubectl("create", "clusterrolebinding", account, f"--clusterrole={account}", f"--serviceaccount={followed}:{account}", check=False)
    kube.kubectl("create", "clusterrole", f"{account}-secrets", "--verb=get,list,watch", "--resource=secrets", check=False)
    kube.kubectl("create", "rolebinding", account, "-n", followed, f"--clusterrole={account}-secrets", f"--serviceaccount={followed}:{account}",
                 check=False)
    admin = ClusterAPI(config.new_client_from_config(config_file=str(kube.kubeconfig)))
    reader = ClusterAPI(config.new_client_from_config(config_file=str(token_kubeconfig(kube, account, followed, tmp_path))))

    def secret(name: str, namespace: str, value: str = "1") -> Manifest:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace, "labels": {CUSTOMER: "acme"}},
                "stringData": {"k": value}}

    admin.apply(secret("held", followed))
    admin.apply(secret("elsewhere", other))
    reports = Reports()
    cache = WatchCache(reader, (Watched(NAMESPACE), Watched(SECRET, CUSTOMER, per_namespace=True)), reports,
                       follows=lambda namespace: (namespace["metadata"].get("labels") or {}).get("follow") == "yes")
    cache.start()
    try:
        assert cache.wait_synced(30) == []
        assert cache.get(SECRET, "held", followed) is not None
        assert cache.in_namespace(SECRET, other) == [] and cache.get(SECRET, "elsewhere", other) is None, "not followed: nothing held"
        changed = admin.apply(secret("held", followed, "2"))
        wait_for(lambda: changed["metadata"]["resourceVersion"] in reports.of("held"), timeout=10, what="a change reported")

        # Followed, but this identity may not read there yet: never "empty", always "not listed yet".
        kube.kubectl("label", "--overwrite", "namespace", other, "follow=yes")
        wait_for(lambda: other in cache.followed(), timeout=10, what="the newly labelled namespace followed")
        time.sleep(1.5)
        with pytest.raises(NotListedYet):
            cache.in_namespace(SECRET, other)
        kube.kubectl("create", "rolebinding", account, "-n", other, f"--clusterrole={account}-secrets", f"--serviceaccount={followed}:{account}",
                     check=False)

        def listed_there() -> Manifest | None:
            try:
                return cache.get(SECRET, "elsewhere", other)
            except NotListedYet:
                return None

        wait_for(listed_there, timeout=15, what="the namespace listed once readable")

        # No longer followed: what was held there goes.
        kube.kubectl("label", "namespace", followed, "follow-")
        wait_for(lambda: followed not in cache.followed(), timeout=10, what="the namespace no longer followed")
        assert cache.get(SECRET, "held", followed) is None
    finally:
        cache.stop()
        kube.kubectl("delete", "namespace", followed, other, "--wait=false", check=False)
        kube.kubectl("delete", "clusterrolebinding", account, check=False)
        kube.kubectl("delete", "clusterrole", account, f"{account}-secrets", check=False)
