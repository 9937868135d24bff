"""High availability: replicas share one Lease; only its holder reconciles.

The session's operator runs as the chart runs it (leader election on, the chart's ServiceAccount),
so it holds the Lease iotenant-operator; these tests use that same identity.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from conftest import OPERATOR_IDENTITY, OPERATOR_NAMESPACE, Cluster, RunningOperator, wait_for

from iotenant.kube.client import ClusterAPI
from iotenant_testbed.loopback import free_port
from iotenant.kube.leader_election import LeaderElection

from kubernetes import config


def lease_holder(kube: Cluster, name: str) -> str:
    lease = json.loads(kube.kubectl("get", "lease", name, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout)
    return str(lease["spec"].get("holderIdentity") or "")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_the_running_operator_holds_the_lease(kube: Cluster, operator: RunningOperator) -> None:
    assert lease_holder(kube, "iotenant-operator") == OPERATOR_IDENTITY
    assert metric(operator.metrics_port, "iotenant_operator_leader") == 1.0


def test_a_second_replica_stands_by_and_stops_cleanly(kube: Cluster, operator: RunningOperator, operator_kubeconfig: Path,
                                                      tmp_path: Path) -> None:
    metrics_port, health_port = free_port(), free_port()
    log = tmp_path / "standby.log"
    standby = subprocess.Popen(
        [sys.executable, "-m", "iotenant", "operator", "--namespace", OPERATOR_NAMESPACE, "--leader-election", "true",
         "--identity", "standby-replica", "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
         "--health-port", str(health_port), "--log-format", "text"],
        env=dict(os.environ, KUBECONFIG=str(operator_kubeconfig)), stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "standing by" in log.read_text(), timeout=30, what="the second replica to stand by")

        def healthy() -> dict | None:
            try:
                return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2).read())
            except OSError:
                return None

        assert wait_for(healthy, timeout=10, what="the standby's /healthz") == {"status": "standby"}
        assert metric(metrics_port, "iotenant_operator_leader") == 0.0
        time.sleep(3)
        assert lease_holder(kube, "iotenant-operator") == OPERATOR_IDENTITY
        assert "iotenant operator started" not in log.read_text(), "the standby began reconciling"
    finally:
        standby.send_signal(signal.SIGTERM)
        code = standby.wait(timeout=20)
    assert code == 0, log.read_text()[-2000:]
    assert lease_holder(kube, "iotenant-operator") == OPERATOR_IDENTITY


def test_a_lease_passes_on_release_and_on_expiry_and_a_leader_that_loses_it_is_told(
    kube: Cluster, operator: RunningOperator, operator_kubeconfig: Path
) -> None:
    api = ClusterAPI(config.new_client_from_config(config_file=str(operator_kubeconfig)))
    name = f"ha-test-{int(time.time())}"
    first = LeaderElection(api, OPERATOR_NAMESPACE, "replica-a", name=name, lease_seconds=3, renew_seconds=1)
    second = LeaderElection(api, OPERATOR_NAMESPACE, "replica-b", name=name, lease_seconds=3, renew_seconds=1)
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew(), "two replicas led at once"
    assert first.try_acquire_or_renew(), "the leader could not renew"

    first.release()
    assert second.try_acquire_or_renew(), "a released Lease was not free"
    assert lease_holder(kube, name) == "replica-b"

    # replica-b stops renewing (as if it hung): replica-a takes over once the Lease has run out.
    assert not first.try_acquire_or_renew()
    stopping = threading.Event()
    threading.Timer(10, stopping.set).start()
    assert first.acquire(stopping), "replica-a did not take over within 10 s of replica-b's last renewal"
    stopping.set()
    lost = threading.Event()
    second.keep(lost.set, threading.Event())
    assert lost.wait(5), "replica-b was not told that it lost the Lease"
    kube.kubectl("delete", "lease", name, "-n", OPERATOR_NAMESPACE)
