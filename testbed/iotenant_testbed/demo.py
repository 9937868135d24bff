"""The main job: a local control plane, the CRDs, the operator and the examples, shown until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from iotenant.licensing import licence as licences

from iotenant.licensing import keys as licence_keys
from iotenant_testbed import cluster
from iotenant_testbed.binaries import cache_dir, ensure_binaries, source_dir
from iotenant_testbed.local_stacks import LocalStacks
from iotenant.licensing.plans import load_catalogue

OPERATOR_NAMESPACE = "iotenant-system"
BILLING_NAMESPACE = "billing"


def repository_root() -> Path:
    return source_dir().parents[1]


DEMO_BILLING_ISSUER = "demo-billing"


def billing_issuer(folder: Path) -> tuple[licence_keys.SigningKey, Path]:
    """A demo billing system's key (made once) and the trusted issuers file naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "billing-key.pem", folder / "billing-jwks.json"
    key = licence_keys.write_key_pair(private, public) if not private.is_file() or not public.is_file() else \
        licence_keys.SigningKey.from_pem(private.read_bytes())
    trusted = folder / "trusted-issuers.json"
    trusted.write_text(json.dumps({DEMO_BILLING_ISSUER: json.loads(public.read_text())}))
    return key, trusted


def run(name: str) -> int:
    binaries = ensure_binaries()
    kubeconfig = cluster.up(name)
    repo = repository_root()

    def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(binaries, kubeconfig, *args, stdin=stdin, check=check)

    print(f"iotenant: cluster {name!r} is up; KUBECONFIG={kubeconfig}", file=sys.stderr)
    kubectl("apply", "--server-side", "--field-manager=iotenant-demo", "-f", str(repo / "crds"))
    # Stands in for the Prometheus Operator, so shared-tier customers get their ServiceMonitor.
    kubectl("apply", "--server-side", "--field-manager=iotenant-demo", "-f", str(repo / "examples" / "monitoring"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for namespace in (OPERATOR_NAMESPACE, BILLING_NAMESPACE):
        kubectl("create", "namespace", namespace, check=False)

    billing_key, trusted_issuers = billing_issuer(cache_dir() / "demo")
    claims = load_catalogue()["professional"].claims("umbrella-corp", DEMO_BILLING_ISSUER, 30 * 86400)
    token = licences.sign(claims, billing_key)
    secret = kubectl(
        "create", "secret", "generic", "umbrella-licence", "-n", BILLING_NAMESPACE,
        f"--from-literal=licence.jwt={token}", "--dry-run=client", "-o", "yaml",
    ).stdout
    kubectl("apply", "-f", "-", stdin=secret)

    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    # Tenant brokers run here (pods on the fake nodes run nothing); the operator finds them in this file.
    addresses = cache_dir() / "clusters" / name / "broker-addresses.json"
    addresses.write_text("{}")
    stacks = LocalStacks(kubeconfig, addresses)
    log_path = cache_dir() / "clusters" / name / "operator.log"
    print(f"iotenant: starting the operator (log: {log_path})", file=sys.stderr)
    with log_path.open("a") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "iotenant", "operator", "--namespace", OPERATOR_NAMESPACE,
             "--trusted-issuers", str(trusted_issuers), "--resync-seconds", "30",
             "--broker-addresses-file", str(addresses),
             "--metrics-address", "127.0.0.1", "--metrics-port", "9100", "--health-port", "8081"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        examples = sorted((repo / "examples").glob("customerinstance-*.yaml"))
        for example in examples:
            kubectl("apply", "-f", str(example))
        fleets_applied = False
        while True:
            if operator.poll() is not None:
                print(f"iotenant: the operator exited with {operator.returncode}; see {log_path}", file=sys.stderr)
                return 1
            if not fleets_applied:
                fleets = sorted((repo / "examples").glob("devicefleet-*.yaml"))
                fleets_applied = all(kubectl("apply", "-f", str(f), check=False).returncode == 0 for f in fleets)
            stacks.step()
            table = kubectl("get", "customerinstances", check=False).stdout
            fleet_table = kubectl("get", "devicefleets", "-A", check=False).stdout
            print(f"\n{time.strftime('%H:%M:%S')}  (Ctrl-C stops the operator; `iotenant dev down` stops the cluster)")
            print(table.rstrip())
            if fleet_table.strip():
                print(fleet_table.rstrip())
            for line in stacks.report():
                print(line)
            time.sleep(5)
    except KeyboardInterrupt:
        print("\niotenant: stopping the operator", file=sys.stderr)
        return 0
    finally:
        stacks.stop()
        if operator.poll() is None:
            operator.send_signal(signal.SIGINT)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
