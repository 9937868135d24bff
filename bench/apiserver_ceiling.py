"""What the API server takes without the operator: the objects the operator would render for N starter
tenants, server-side applied by several concurrent clients, and the time until their workloads are available.

The manifests come from the operator's own renderer with the inputs it would decide (a signed licence,
generated secrets and admin certificates, the in-cluster device endpoint), with the desired-hash
annotation the operator adds. They carry no ownerReferences: there is no CustomerInstance to own them,
and the garbage collector would delete them.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from bench_cluster import pause_after_poll
from kubernetes import config

from iotenant.customer_instance import kept_secrets
from iotenant.customer_instance.status import ready_replicas
from iotenant.kube.apply import with_hash
from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.licensing import licence as licences
from iotenant.licensing.plans import load_catalogue
from iotenant.licensing.signing_keys import KeyRing
from iotenant.mosquitto.addresses import split_address
from iotenant.mosquitto.admin_tls import issue as issue_admin_tls
from iotenant.mosquitto.device_endpoint import BrokerExposure, device_endpoint
from iotenant.render.inputs import StackInput
from iotenant.render.parts import required_workloads
from iotenant.render.stack import render_customer_stack
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.kinds import ResourceKind, kind_of
from iotenant.vocabulary.meta import Owner


def tenant_manifests(name: str, ring: KeyRing, settings: OperatorSettings) -> list[Manifest]:
    """What the operator applies for a new starter CustomerInstance ``name`` (the ServiceMonitor CRD installed)."""
    plan = load_catalogue()["starter"]
    spec = {"customerId": f"{name}-id", "plan": "starter"}
    owner = Owner(name, f"uid-{name}")
    claims = plan.claims(spec["customerId"], settings.issuer, 365 * 86400)
    endpoint = device_endpoint(BrokerExposure.from_spec({}), split_address(settings.device_broker_address(owner.namespace, name)), None)
    stack = StackInput(
        owner=owner, spec=spec, settings=settings,
        secrets=kept_secrets.generated_secrets(lambda _name: None, issue_admin_tls(owner.namespace)),
        claims=claims, licence_token=licences.sign(claims, ring.active), jwks=ring.public_jwks, quota=plan.quota,
        serving=True, service_monitor_crd_present=True, broker_limits=plan.broker, device_endpoint=endpoint,
    )
    manifests = []
    for manifest in render_customer_stack(stack):
        annotated = with_hash(manifest)
        annotated["metadata"].pop("ownerReferences", None)
        manifests.append(annotated)
    return manifests


def apply_concurrently(kubeconfig: Path, tenants: list[list[Manifest]], clients: int) -> float:
    """Server-side apply every tenant's objects (in order within a tenant), ``clients`` tenants at a time; seconds taken."""
    work: queue.Queue[list[Manifest]] = queue.Queue()
    for manifests in tenants:
        work.put(manifests)
    failures: list[BaseException] = []

    def client_loop() -> None:
        api = ClusterAPI(config.new_client_from_config(config_file=str(kubeconfig)))
        while True:
            try:
                manifests = work.get_nowait()
            except queue.Empty:
                return
            try:
                for manifest in manifests:
                    api.apply(manifest)
            except BaseException as error:  # reported after the run
                failures.append(error)
                return

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} clients failed; first: {failures[0]}")
    return time.monotonic() - started


def every(api: ClusterAPI, kind: ResourceKind) -> list[Manifest]:
    """Every object of ``kind`` in the cluster, listed in pages."""
    items: list[Manifest] = []
    token = None
    while True:
        page = api.list_page(kind, None, 500, token)
        items += page.get("items", [])
        token = page.get("metadata", {}).get("continue") or None
        if token is None:
            return items


def wait_available(api: ClusterAPI, names: list[str], timeout: float = 3600) -> None:
    """Until every tenant's required workloads (broker, database, ingest, api) are available."""
    deadline = time.monotonic() + timeout
    namespaces = {f"customer-{name}" for name in names}
    while time.monotonic() < deadline:
        polled = time.monotonic()
        workloads = {}
        for kind_name in ("StatefulSet", "Deployment"):
            for item in every(api, kind_of("apps/v1", kind_name)):
                item["kind"] = kind_name
                workloads[(kind_name, item["metadata"]["namespace"], item["metadata"]["name"])] = item
        waiting = [namespace for namespace in namespaces
                   if not all(ready_replicas(workloads.get((w.kind, namespace, w.name)))[0] for w in required_workloads())]
        if not waiting:
            return
        pause_after_poll(time.monotonic() - polled, 1.0)
    raise TimeoutError(f"workloads not available after {timeout:.0f} s")
