"""Operator figures on the local control plane: latency to Ready, wall time at scale, writes, memory.

Prints:
- apply -> Ready latency of one instance, p50/p99 over --samples (each created and deleted in turn);
- wall time until 10 and until --many instances (default 100) are all Ready, created at once;
- API write calls per instance (from the apiserver's audit log, user agent iotenant-operator);
- writes during a no-op resync of all instances (goal 0), over three resync intervals;
- the operator's resident memory with all instances.

Usage: python bench/operator_scale.py [--samples 20] [--many 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_cluster import fresh_cluster, stop  # noqa: E402
from real_services import resident_kib  # noqa: E402

from iotenant.devcluster import cluster as devcluster  # noqa: E402

GROUP, VERSION, PLURAL = "iotenant.io", "v1alpha1", "customerinstances"
NAME = "iotenant-bench"
RESYNC = 10
REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def phases(custom: client.CustomObjectsApi) -> dict[str, str]:
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]}


def create(custom: client.CustomObjectsApi, name: str) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CustomerInstance", "metadata": {"name": name},
            "spec": {"customerId": f"{name}-id", "plan": "starter"}}
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)


def wait_ready(custom: client.CustomObjectsApi, names: set[str], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = phases(custom)
        if all(current.get(n) == "Ready" for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"not Ready: {sorted(n for n in names if phases(custom).get(n) != 'Ready')[:5]}")


def operator_writes(audit: Path, since: str) -> int:
    count = 0
    for line in audit.read_text().splitlines():
        entry = json.loads(line)
        if (entry.get("userAgent", "").startswith(("iotenant-operator/", "kopf/")) and entry["requestReceivedTimestamp"] > since
                and entry["verb"] in ("create", "update", "patch", "delete", "deletecollection")):
            count += 1
    return count


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--many", type=int, default=100)
    args = parser.parse_args()
    kubeconfig, _binaries = fresh_cluster(NAME, REPO / "examples" / "monitoring" / "servicemonitor-crd.yaml")
    audit = devcluster.LocalCluster(NAME).audit_log
    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))
    log = open(kubeconfig.parent / "operator.log", "wb")
    operator = subprocess.Popen(
        [sys.executable, "-m", "iotenant", "operator", "--resync-seconds", str(RESYNC), "--metrics-port", "0",
         "--health-port", "0", "--log-format", "text"],
        env=dict(os.environ, KUBECONFIG=str(kubeconfig)), stdout=log, stderr=subprocess.STDOUT,
    )
    results: dict[str, float] = {}
    try:
        time.sleep(3)
        latencies = []
        for n in range(args.samples):
            name = f"single-{n}"
            started = time.monotonic()
            create(custom, name)
            wait_ready(custom, {name})
            latencies.append(time.monotonic() - started)
        results["ready_latency_p50_s"] = percentile(latencies, 0.5)
        results["ready_latency_p99_s"] = percentile(latencies, 0.99)
        for name in [f"single-{n}" for n in range(args.samples)]:
            custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)

        for count in (10, args.many):
            before = stamp()
            names = {f"s{count}-{n}" for n in range(count)}
            started = time.monotonic()
            for name in sorted(names):
                create(custom, name)
            wait_ready(custom, names)
            results[f"wall_time_{count}_instances_s"] = time.monotonic() - started
            time.sleep(2)
            results[f"writes_per_instance_at_{count}"] = operator_writes(audit, before) / count
        time.sleep(RESYNC)
        quiet_since = stamp()
        time.sleep(RESYNC * 3 + 1)
        results[f"noop_resync_writes_{args.many + 10}_instances"] = operator_writes(audit, quiet_since)
        results[f"operator_rss_mib_{args.many + 10}_instances"] = resident_kib(operator.pid) / 1024
    finally:
        stop(operator, NAME)
    print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
