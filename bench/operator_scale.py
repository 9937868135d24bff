"""Operator figures on the local control plane, beside what the API server takes without the operator.

Phases (each on a fresh local cluster):
1. ceiling: the objects the operator renders for --many starter tenants, server-side applied straight to
   the API server by --clients concurrent clients (no operator): objects/s and tenants/s applied, and
   tenants/s until their workloads are available;
2. operator: apply -> Ready latency of one instance (p50/p99 of --samples); 10, then --many instances
   created at once until all are Ready: objects/s and tenants/s, and the ratio to the ceiling; the
   operator's writes per instance by kind (the API server's audit log); writes and API reads during a
   no-op resync of every instance (three resync intervals); the operator's resident memory;
3. failover (--failover): a standby replica waits on the leader Lease; the leader is killed (SIGKILL) and
   a tenant's spec changed at once: seconds until the standby holds the Lease, until it re-checked every
   tenant (and the writes and API reads it made meanwhile), and until the spec change is applied;
4. starvation (--starvation): a tenant whose broker (Debian's Mosquitto, on loopback) admits a 10,000-device
   fleet, then 100 starter tenants created while that sync runs: seconds until all 100 are Ready, and
   until the big fleet is.

Usage: python bench/operator_scale.py [--samples 10] [--many 200] [--clients 8] [--failover] [--starvation]
       [--skip-ceiling] [--skip-operator]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import apiserver_ceiling  # noqa: E402
import audit_log  # noqa: E402
from bench_cluster import fresh_cluster, pause_after_poll, stop  # noqa: E402
from real_services import cpu_seconds, resident_kib, scrape_metrics  # noqa: E402

from iotenant_testbed import cluster as devcluster  # noqa: E402
from iotenant.kube.client import ClusterAPI  # noqa: E402
from iotenant.licensing.plans import DEFAULT_CATALOGUE  # noqa: E402
from iotenant.licensing.signing_keys import KeyRing  # noqa: E402
from iotenant.settings import OperatorSettings  # noqa: E402

GROUP, VERSION, PLURAL = "iotenant.io", "v1alpha1", "customerinstances"
NAME = "iotenant-bench"
OPERATOR_NAMESPACE = "iotenant-system"
# The operator's resync interval: its default (a shorter one makes every tenant's no-op reconcile that much
# more often: at 1,000 tenants and 10 s, a hundred a second).
RESYNC = int(OperatorSettings.resync_seconds)
LEASE_SECONDS = 15
# Pods run nothing here: tenant brokers are a closed loopback port, refused at once (their in-cluster
# names do not resolve here, and each lookup would hold a reconcile for seconds).
NO_BROKER = "127.0.0.1:9"
REPO = Path(__file__).resolve().parents[1]
SERVICE_MONITOR_CRD = REPO / "examples" / "monitoring" / "servicemonitor-crd.yaml"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def instances(custom: client.CustomObjectsApi) -> dict[str, dict]:
    return {i["metadata"]["name"]: i for i in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]}


def create(custom: client.CustomObjectsApi, name: str, plan: str = "starter") -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CustomerInstance", "metadata": {"name": name},
            "spec": {"customerId": f"{name}-id", "plan": plan}}
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)


def wait_ready(custom: client.CustomObjectsApi, names: set[str], timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        polled = time.monotonic()
        current = instances(custom)
        if all((current.get(n, {}).get("status") or {}).get("phase") == "Ready" for n in names):
            return
        pause_after_poll(time.monotonic() - polled, 0.25)
    raise TimeoutError(f"not Ready after {timeout:.0f} s")


def api_reads(port: int) -> dict[str, float]:
    """The operator's API reads so far, by verb (get, list, watch)."""
    reads: dict[str, float] = {}
    for name, value in scrape_metrics(port).items():
        if name.startswith("iotenant_operator_api_requests_total{"):
            verb = name.split('verb="')[1].split('"')[0]
            if verb in ("get", "list", "watch"):
                reads[verb] = reads.get(verb, 0) + value
    return reads


def reads_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {verb: after.get(verb, 0) - before.get(verb, 0) for verb in ("get", "list", "watch")}


def checked_instances(port: int) -> float:
    """How many instances this operator reconciled at least once (the sum of its instances-by-phase gauge)."""
    return sum(value for name, value in scrape_metrics(port).items() if name.startswith("iotenant_operator_instances{"))


class Operator:
    """One operator process against the benchmark cluster."""

    def __init__(self, kubeconfig: Path, identity: str, extra: list[str] | None = None) -> None:
        self.metrics_port = free_port()
        self.log = open(kubeconfig.parent / f"operator-{identity}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iotenant", "operator", "--resync-seconds", str(RESYNC), "--metrics-port", str(self.metrics_port),
             "--metrics-address", "127.0.0.1", "--health-port", "0", "--log-format", "text", "--namespace", OPERATOR_NAMESPACE,
             "--leader-election", "true", "--identity", identity, "--lease-seconds", str(LEASE_SECONDS),
             "--broker-address-template", NO_BROKER, *(extra or [])],
            env=dict(os.environ, KUBECONFIG=str(kubeconfig)), stdout=self.log, stderr=subprocess.STDOUT,
        )


def lease_holder(core: client.CoordinationV1Api) -> str:
    try:
        return core.read_namespaced_lease("iotenant-operator", OPERATOR_NAMESPACE).spec.holder_identity or ""
    except client.ApiException:
        return ""


# ----------------------------------------------------------------------------- 1. the ceiling

def ceiling(args: argparse.Namespace, results: dict[str, Any]) -> None:
    kubeconfig, _binaries = fresh_cluster(NAME, SERVICE_MONITOR_CRD, tenants=args.many)
    try:
        ring, settings = KeyRing.new(), OperatorSettings()
        names = [f"c{n}" for n in range(args.many)]
        tenants = [apiserver_ceiling.tenant_manifests(name, ring, settings) for name in names]
        objects = sum(len(manifests) for manifests in tenants)
        started = time.monotonic()
        applied = apiserver_ceiling.apply_concurrently(kubeconfig, tenants, args.clients)
        apiserver_ceiling.wait_available(ClusterAPI(config.new_client_from_config(config_file=str(kubeconfig))), names)
        available = time.monotonic() - started
        results["ceiling"] = {
            "tenants": args.many, "clients": args.clients, "objects_per_tenant": objects / args.many,
            "applied_s": round(applied, 1), "applied_objects_per_s": round(objects / applied, 1),
            "applied_tenants_per_s": round(args.many / applied, 2),
            "all_available_s": round(available, 1), "available_tenants_per_s": round(args.many / available, 2),
        }
    finally:
        devcluster.down(NAME)


# ----------------------------------------------------------------------------- 2. and 3. the operator

def operator_phases(args: argparse.Namespace, results: dict[str, Any]) -> None:
    kubeconfig, _binaries = fresh_cluster(NAME, SERVICE_MONITOR_CRD, tenants=args.many + args.samples + 10)
    audit = devcluster.LocalCluster(NAME).audit_log
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    custom, leases = client.CustomObjectsApi(api_client), client.CoordinationV1Api(api_client)
    leader = Operator(kubeconfig, "leader")
    standby: Operator | None = None
    figures: dict[str, Any] = {}
    results["operator"] = figures
    try:
        while lease_holder(leases) != "leader":
            if leader.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {leader.process.returncode}: see {leader.log.name}")
            time.sleep(0.2)
        time.sleep(2)
        figures.update(creation_figures(custom, audit, args, results))

        total = args.many + 10
        figures.update(quiet_figures(leader, audit, total))

        if args.failover:
            standby = Operator(kubeconfig, "standby")
            time.sleep(5)
            figures["failover"] = failover(custom, leases, audit, leader, standby, total, f"s{args.many}-0")
    finally:
        for replica in (standby, leader):
            if replica is not None and replica.process.poll() is None:
                replica.process.send_signal(signal.SIGINT)
                replica.process.wait(timeout=60)
        devcluster.down(NAME)


def creation_figures(custom: client.CustomObjectsApi, audit: Path, args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """One instance at a time until Ready (--samples), then 10 and --many at once: time and writes per instance."""
    figures: dict[str, Any] = {}
    latencies = []
    for n in range(args.samples):
        started = time.monotonic()
        create(custom, f"single-{n}")
        wait_ready(custom, {f"single-{n}"})
        latencies.append(time.monotonic() - started)
    figures["ready_latency_p50_s"] = round(percentile(latencies, 0.5), 2)
    figures["ready_latency_p99_s"] = round(percentile(latencies, 0.99), 2)
    for n in range(args.samples):
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, f"single-{n}")

    for count in (10, args.many):
        before = stamp()
        names = {f"s{count}-{n}" for n in range(count)}
        started = time.monotonic()
        for name in sorted(names):
            create(custom, name)
        wait_ready(custom, names)
        elapsed = time.monotonic() - started
        time.sleep(2)
        writes = audit_log.by_category([e for e in audit_log.operator_writes(audit, before) if not audit_log.about(e, "single-")])
        by_kind = audit_log.per_instance(writes, count)
        figures[f"all_ready_{count}_s"] = round(elapsed, 1)
        figures[f"ready_tenants_per_s_{count}"] = round(count / elapsed, 2)
        figures[f"writes_per_instance_{count}"] = by_kind
        if count == args.many:
            child_writes = by_kind["= child object writes"] * count
            figures["child_objects_per_s"] = round(child_writes / elapsed, 1)
            if "ceiling" in results:
                figures["ratio_to_ceiling_tenants_per_s"] = round((count / elapsed) / results["ceiling"]["available_tenants_per_s"], 2)
    return figures


def quiet_figures(leader: Operator, audit: Path, total: int) -> dict[str, Any]:
    """Three resyncs of ``total`` instances with nothing to do: writes, reads, reconcile time, CPU and memory."""
    figures: dict[str, Any] = {}
    time.sleep(RESYNC)
    quiet_since, reads_before = stamp(), api_reads(leader.metrics_port)
    cpu_before, reconciles_before = cpu_seconds(leader.process.pid), scrape_metrics(leader.metrics_port)
    time.sleep(RESYNC * 3 + 1)
    reconciles_after = scrape_metrics(leader.metrics_port)
    count = reconciles_after["iotenant_operator_reconcile_seconds_count"] - reconciles_before["iotenant_operator_reconcile_seconds_count"]
    took = reconciles_after["iotenant_operator_reconcile_seconds_sum"] - reconciles_before["iotenant_operator_reconcile_seconds_sum"]
    quiet_writes = audit_log.operator_writes(audit, quiet_since)
    figures[f"noop_resync_{total}_instances"] = {
        "resync_interval_s": RESYNC, "window_s": RESYNC * 3 + 1, "reconciles": int(count),
        "writes_besides_lease_renewals": sum(1 for e in quiet_writes if e.get("objectRef", {}).get("resource") != "leases"),
        "lease_renewals": sum(1 for e in quiet_writes if e.get("objectRef", {}).get("resource") == "leases"),
        "api_reads": reads_between(reads_before, api_reads(leader.metrics_port)),
        "reconcile_ms_mean": round(1000 * took / max(count, 1), 2),
        "wait_for_a_reconcile_thread_ms_mean": round(1000 * (
            reconciles_after["iotenant_operator_reconcile_wait_seconds_sum"] - reconciles_before["iotenant_operator_reconcile_wait_seconds_sum"]
        ) / max(count, 1), 2),
        "operator_cpu_share_of_one_core": round((cpu_seconds(leader.process.pid) - cpu_before) / (RESYNC * 3 + 1), 2),
    }
    figures[f"operator_rss_mib_{total}_instances"] = round(resident_kib(leader.process.pid) / 1024, 1)
    figures[f"watch_cache_mib_{total}_instances"] = round(sum(
        value for name, value in reconciles_after.items() if name.startswith("iotenant_operator_cached_bytes{")) / 2**20, 1)
    return figures


def failover(custom: client.CustomObjectsApi, leases: client.CoordinationV1Api, audit: Path, leader: Operator, standby: Operator,
             total: int, changed: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"lease_seconds": LEASE_SECONDS}
    killed_at_stamp = stamp()
    killed = time.monotonic()
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait()
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, changed, {"spec": {"api": {"replicas": 2}}})
    generation = int(custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, changed)["metadata"]["generation"])
    apps = client.AppsV1Api(custom.api_client)
    lease_taken = rechecked = applied = None
    reads_at_start: dict[str, float] | None = None
    while rechecked is None or applied is None:
        now = time.monotonic() - killed
        if now > 1800:
            raise TimeoutError("failover took more than 30 minutes")
        if lease_taken is None and lease_holder(leases) == "standby":
            lease_taken = now
        if lease_taken is not None and rechecked is None:
            try:
                if reads_at_start is None:
                    reads_at_start = api_reads(standby.metrics_port)
                if checked_instances(standby.metrics_port) >= total:
                    rechecked = now
                    rechecked_stamp = stamp()
            except OSError:
                pass
        if applied is None:
            body = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, changed)
            deployment = apps.read_namespaced_deployment("api", f"customer-{changed}")
            if (body.get("status") or {}).get("observedGeneration") == generation and deployment.spec.replicas == 2:
                applied = now
        time.sleep(0.2)
    writes = [entry for entry in audit_log.operator_writes(audit, killed_at_stamp, rechecked_stamp)
              if entry.get("objectRef", {}).get("resource") != "leases" and not audit_log.about(entry, changed)]
    figures.update({
        "standby_holds_lease_s": round(lease_taken or 0, 1),
        f"every_one_of_{total}_rechecked_s": round(rechecked, 1),
        "writes_while_rechecking_besides_the_changed_tenant_and_lease": len(writes),
        "api_reads_while_rechecking": reads_between(reads_at_start or {}, api_reads(standby.metrics_port)),
        "spec_change_made_at_kill_applied_s": round(applied, 1),
        f"standby_rss_mib_{total}_instances": round(resident_kib(standby.process.pid) / 1024, 1),
    })
    return figures


# ----------------------------------------------------------------------------- 4. starvation

def starvation(args: argparse.Namespace, results: dict[str, Any]) -> None:
    import pytest
    from conftest import Cluster
    from tenants import start_tenant

    kubeconfig, binaries = fresh_cluster(NAME, SERVICE_MONITOR_CRD, tenants=101)
    kube = Cluster(name=NAME, kubeconfig=kubeconfig, binaries=binaries, api=config.new_client_from_config(config_file=str(kubeconfig)))
    root = Path(tempfile.mkdtemp(prefix="iotenant-scale-bench-"))
    root.chmod(0o755)
    addresses = root / "addresses.json"
    addresses.write_text("{}")
    plans = root / "plans.yaml"
    plans.write_text(yaml.safe_dump(copy.deepcopy(DEFAULT_CATALOGUE)))
    operator = Operator(kubeconfig, "solo", ["--broker-addresses-file", str(addresses), "--plan-catalogue", str(plans)])
    tenant = None
    try:
        tenant = start_tenant(kube, addresses, root, "big", "enterprise")
        wait_ready(kube.custom, {"big"})
        started = time.monotonic()
        tenant.apply_fleet("huge", {"count": args.big_fleet, "idPrefix": "dev-"})
        time.sleep(5)  # the broker sync of 10,000 identities is under way
        names = {f"other-{n}" for n in range(100)}
        before = scrape_metrics(operator.metrics_port)
        others_started = time.monotonic()
        for name in sorted(names):
            create(kube.custom, name)
        wait_ready(kube.custom, names)
        others_ready = time.monotonic() - others_started
        after = scrape_metrics(operator.metrics_port)
        fleet_ready_then = (tenant.fleet("huge").get("status") or {}).get("provisioned", 0) == args.big_fleet
        waits = after["iotenant_operator_reconcile_wait_seconds_count"] - before["iotenant_operator_reconcile_wait_seconds_count"]
        results["starvation"] = {
            "big_fleet_devices": args.big_fleet,
            "other_100_all_ready_s": round(others_ready, 1),
            "big_fleet_was_still_syncing_when_the_100_were_ready": not fleet_ready_then,
            "reconciles_meanwhile": int(waits),
            "wait_for_a_reconcile_thread_ms_mean": round(1000 * (
                after["iotenant_operator_reconcile_wait_seconds_sum"] - before["iotenant_operator_reconcile_wait_seconds_sum"]) / max(waits, 1), 2),
        }
        try:
            tenant.wait_fleet("huge", "True", timeout=args.big_fleet_timeout)
            results["starvation"]["big_fleet_apply_to_ready_s"] = round(time.monotonic() - started, 1)
        except pytest.fail.Exception:  # the tests' wait_for: timed out
            provisioned = (tenant.fleet("huge").get("status") or {}).get("provisioned", 0)
            results["starvation"]["big_fleet_apply_to_ready_s"] = f"not Ready after {time.monotonic() - started:.0f} s ({provisioned} provisioned)"
    finally:
        if tenant is not None:
            tenant.stop()
        stop(operator.process, NAME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--many", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the ceiling phase")
    parser.add_argument("--big-fleet", type=int, default=10000)
    parser.add_argument("--big-fleet-timeout", type=float, default=3600, help="seconds to wait for the big fleet once the 100 are Ready")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument("--skip-operator", action="store_true")
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--starvation", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    try:
        if not args.skip_ceiling:
            ceiling(args, results)
        if not args.skip_operator:
            operator_phases(args, results)
        if args.starvation:
            starvation(args, results)
    finally:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
