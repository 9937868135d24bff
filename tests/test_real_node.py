"""The product on a real node: the chart installs the operator as pods, and each tenant's stack runs.

The cluster of this module has the machine's real node (containerd, runc, the kubelet, kube-proxy,
the cluster DNS) and no fake node, so every pod here really runs, from the images built locally
under the references the chart and the operator render. Devices come in from this machine through
the broker's NodePort; what they send is read back through the tenant's REST API.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from conftest import Cluster, wait_for
from doc_blocks import run_block
from iotenant.mosquitto.identities import INGEST, DeviceCredentials
from iotenant.vocabulary.contract import API_TOKEN_KEY, API_TOKEN_SECRET
from iotenant_testbed import cluster as devcluster, containerd_runtime, real_node
from iotenant_testbed.binaries import Binaries
from iotenant_testbed.node_network import NODE_ADDRESS
from iotenant_testbed.real_node import NODE_NAME
from mqtt_probe import Probe, Refused
from stacks import running_parts

REAL_NODE_CLUSTER = "iotenant-node-test"
GROUP, VERSION, PLURAL = "iotenant.io", "v1alpha1", "customerinstances"
OPERATOR_NAMESPACE = "iotenant-system"
STACK_READY_SECONDS = 300


@pytest.fixture(scope="module")
def node_cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster with the real node and the chart installed by the README's own command: the operator runs
    as pods on the node."""
    devcluster.down(REAL_NODE_CLUSTER)
    kubeconfig = devcluster.up(REAL_NODE_CLUSTER, nodes=0, with_real_node=True)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    cluster = Cluster(name=REAL_NODE_CLUSTER, kubeconfig=kubeconfig, binaries=binaries, api=api)
    try:
        installed = run_block("helm-install", tmp_path_factory.mktemp("readme"), [binaries.path("helm").parent],
                              env=dict(os.environ, KUBECONFIG=str(kubeconfig)))
        assert installed.returncode == 0, installed.stderr
        cluster.kubectl("rollout", "status", "deployment/iotenant-operator", "-n", OPERATOR_NAMESPACE, "--timeout=180s")
        yield cluster
    finally:
        api.close()
        devcluster.down(REAL_NODE_CLUSTER)


def pods(kube: Cluster, namespace: str, selector: str = "") -> list[client.V1Pod]:
    return kube.core.list_namespaced_pod(namespace, label_selector=selector).items


def running_and_ready(pod: client.V1Pod) -> bool:
    statuses = pod.status.container_statuses or []
    return pod.status.phase == "Running" and bool(statuses) and all(status.ready for status in statuses)


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def create_instance(kube: Cluster, name: str, **spec: Any) -> None:
    spec.setdefault("customerId", f"{name}-id")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CustomerInstance", "metadata": {"name": name}, "spec": spec}
    kube.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)


def wait_ready(kube: Cluster, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        body = kube.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return body if condition(body, "Ready").get("status") == "True" else None

    return wait_for(ready, timeout=STACK_READY_SECONDS, interval=2, what=f"CustomerInstance {name} Ready")


def delete_instance(kube: Cluster, name: str) -> None:
    """Delete the instance; its namespace and every pod in it go, and no pod of it is left on the node."""
    kube.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)

    def gone() -> bool:
        try:
            kube.core.read_namespace(f"customer-{name}")
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, timeout=180, interval=2, what=f"namespace customer-{name} to be deleted")


def secret_value(kube: Cluster, namespace: str, name: str, key: str) -> str:
    return base64.b64decode(kube.core.read_namespaced_secret(name, namespace).data[key]).decode()


def test_the_node_registers_as_itself_and_serves_logs_and_exec(node_cluster: Cluster) -> None:
    node = node_cluster.core.read_node(NODE_NAME)
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {}), "a kubelet node, not a fake one"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [NODE_ADDRESS]
    events = [json.loads(line) for line in devcluster.LocalCluster(REAL_NODE_CLUSTER).audit_log.read_text().splitlines()]
    writers = {event["user"]["username"] for event in events
               if event.get("objectRef", {}).get("resource") == "nodes" and event["objectRef"].get("subresource") == "status"}
    assert f"system:node:{NODE_NAME}" in writers, f"the node's status is written by its own identity, not by {writers}"

    operators = [pod for pod in pods(node_cluster, OPERATOR_NAMESPACE) if pod.metadata.name.startswith("iotenant-operator")]
    assert len(operators) == 2 and all(pod.spec.node_name == NODE_NAME and pod.status.phase == "Running" for pod in operators)
    name = operators[0].metadata.name
    logs = node_cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, name).stdout
    assert any(json.loads(line).get("level") for line in logs.splitlines() if line.startswith("{")), logs[-2000:]
    version = node_cluster.kubectl("exec", "-n", OPERATOR_NAMESPACE, name, "--", "iotenant", "--version").stdout
    assert version.strip().startswith("iotenant "), version


@pytest.mark.parametrize("plan", ["starter", "enterprise"])
def test_each_plan_runs_its_stack_under_restricted_pod_security(node_cluster: Cluster, plan: str) -> None:
    """Plans one after another: the node has two cores, and each stack asks for most of one."""
    name = f"run-{plan}"
    create_instance(node_cluster, name, plan=plan)
    wait_ready(node_cluster, name)
    namespace = f"customer-{name}"
    labels = node_cluster.core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    running = pods(node_cluster, namespace)
    components = {pod.metadata.labels["app.kubernetes.io/component"] for pod in running}
    assert {part.component for part in running_parts(plan)} <= components, components
    assert all(pod.spec.node_name == NODE_NAME and running_and_ready(pod) for pod in running), \
        [(pod.metadata.name, pod.status.phase) for pod in running]
    if plan == "enterprise":
        prometheus = next(pod for pod in running if pod.metadata.labels["app.kubernetes.io/component"] == "monitoring")
        ready = node_cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{prometheus.metadata.name}:9090/proxy/-/ready",
                                     check=False)
        assert "Ready" in ready.stdout, ready.stderr
    delete_instance(node_cluster, name)


def api_request_from_pod(kube: Cluster, namespace: str, pod: str, path: str, token: str) -> tuple[int, Any]:
    """A request to the tenant's API by its Service name, made inside ``pod`` (cluster DNS, kube-proxy)."""
    script = ("import json, sys, urllib.error, urllib.request\n"
              "request = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.stdin.read()})\n"
              "try:\n"
              "    response = urllib.request.urlopen(request, timeout=10); print(response.status, response.read().decode())\n"
              "except urllib.error.HTTPError as error:\n"
              "    print(error.code, error.read().decode())\n")
    url = f"http://api.{namespace}.svc:8080{path}"
    result = kube.kubectl("exec", "-i", "-n", namespace, pod, "--", "python3", "-c", script, url, stdin=token, check=False)
    if result.returncode != 0 or " " not in result.stdout:
        return 0, result.stderr
    status, body = result.stdout.split(" ", 1)
    return int(status), json.loads(body)


def api_request(kube: Cluster, namespace: str, path: str, token: str) -> tuple[int, Any]:
    """A request to the tenant's API Service from this machine (kube-proxy routes Service addresses here)."""
    service = kube.core.read_namespaced_service("api", namespace)
    port = next(p.port for p in service.spec.ports if p.name == "http")
    request = urllib.request.Request(f"http://{service.spec.cluster_ip}:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError as error:
        return 0, str(error)


def apply_fleet(kube: Cluster, namespace: str, name: str, devices: dict[str, Any], simulator: bool) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceFleet", "metadata": {"name": name, "namespace": namespace},
            "spec": {"deviceType": "sensor", "devices": devices, "telemetry": {"intervalSeconds": 1},
                     "simulator": {"enabled": simulator}}}
    kube.kubectl("apply", "--server-side", "--field-manager=real-node-tests", "-f", "-", stdin=json.dumps(body))


def device_credentials(kube: Cluster, namespace: str, fleet: str) -> dict[str, DeviceCredentials]:
    def present() -> dict[str, DeviceCredentials] | None:
        try:
            data = kube.core.read_namespaced_secret(f"devicefleet-{fleet}-credentials", namespace).data or {}
        except ApiException:
            return None
        return {key: DeviceCredentials.from_url(base64.b64decode(value).decode()) for key, value in data.items()} or None

    return wait_for(present, timeout=60, what=f"Secret devicefleet-{fleet}-credentials")


def publish_reading(credentials: DeviceCredentials, seq: int, value: float) -> None:
    """One telemetry datagram from the device, through the node port its credentials name (QoS 1, acknowledged)."""
    probe = Probe.connect(credentials.port, credentials.username, credentials.password, host=credentials.host)
    try:
        datagram = {"v": 2, "device_id": credentials.device_id, "ts": time.time(), "seq": seq, "msg_type": "telemetry",
                    "measurements": [{"ts": time.time(), "type": "temperature", "val": value, "unit": "C"}]}
        probe.publish(f"iot/{credentials.device_id}/telemetry", json.dumps(datagram).encode())
    finally:
        probe.close()


def last_measurements(kube: Cluster, namespace: str, device: str, token: str, kind: str = "") -> list[dict[str, Any]]:
    query = f"?type={kind}" if kind else ""
    status, body = api_request(kube, namespace, f"/api/v1/devices/{device}/telemetry/last{query}", token)
    return list(body.get("measurements", [])) if status == 200 else []


def last_value(kube: Cluster, namespace: str, device: str, token: str) -> float | None:
    """The device's last temperature, as the API serves it."""
    measurements = last_measurements(kube, namespace, device, token, "temperature")
    return measurements[0]["val"] if measurements else None


def replace_pod(kube: Cluster, namespace: str, name: str) -> None:
    """Delete a pod of a StatefulSet and wait for its successor to run and be ready."""
    old_uid = kube.core.read_namespaced_pod(name, namespace).metadata.uid
    kube.core.delete_namespaced_pod(name, namespace)
    wait_for(lambda: _pod_replaced(kube, namespace, name, old_uid), timeout=180, interval=1, what=f"{namespace}/{name} to run again")


def test_devices_reach_the_api_through_a_node_port_and_survive_broker_and_database_restarts(node_cluster: Cluster) -> None:
    name, namespace = "field", "customer-field"
    create_instance(node_cluster, name, plan="professional",
                    broker={"service": {"type": "NodePort"}, "externalHost": NODE_ADDRESS})
    wait_ready(node_cluster, name)
    token = secret_value(node_cluster, namespace, API_TOKEN_SECRET, API_TOKEN_KEY)
    apply_fleet(node_cluster, namespace, "simulated", {"count": 2, "idPrefix": "meter-"}, simulator=True)
    apply_fleet(node_cluster, namespace, "probes", {"ids": ["probe-1"]}, simulator=False)
    simulated_telemetry_reaches_another_pod(node_cluster, namespace, token)

    device = device_credentials(node_cluster, namespace, "probes")["probe-1"]
    node_port = node_cluster.core.read_namespaced_service("broker-devices", namespace).spec.ports[0].node_port
    assert (device.host, device.port) == (NODE_ADDRESS, node_port), "credentials name the node port that reaches the broker"
    publish_reading(device, 1, 21.5)
    wait_for(lambda: last_value(node_cluster, namespace, "probe-1", token) == 21.5, timeout=60, what="probe-1's first reading")
    broker_restart_keeps_retained_status_and_identities(node_cluster, namespace, device, token)
    database_restart_loses_no_reading(node_cluster, namespace, device, token)

    delete_instance(node_cluster, name)
    assert_nothing_left(node_cluster, namespace)


def simulated_telemetry_reaches_another_pod(kube: Cluster, namespace: str, token: str) -> None:
    """The simulator's pod publishes with its fleet's credentials, ingest stores it, and another pod
    reads it from the API by its Service's name."""
    wait_for(lambda: any(running_and_ready(pod) for pod in pods(kube, namespace, "app.kubernetes.io/component=simulator")),
             timeout=120, what="the simulator's pod")
    reader = next(pod.metadata.name for pod in pods(kube, namespace, "app.kubernetes.io/component=api"))

    def simulated_telemetry() -> list[dict[str, Any]]:
        status, body = api_request_from_pod(kube, namespace, reader, "/api/v1/devices/meter-001/telemetry/last", token)
        return body.get("measurements", []) if status == 200 else []

    wait_for(simulated_telemetry, timeout=180, interval=2, what="telemetry of the simulated meter-001 through the API's Service")


def broker_restart_keeps_retained_status_and_identities(kube: Cluster, namespace: str, device: DeviceCredentials, token: str) -> None:
    """The broker's volume keeps its retained messages and the device identities across a new pod. The
    device waits for ingest to be back: until then Mosquitto (2.0.21 and 2.1.2) delivers nothing to its restored
    shared subscription (the known gap docs/data-plane.md names)."""
    status = json.dumps({"v": 2, "device_id": device.device_id, "online": True, "fw": "e2e"}).encode()
    publish_retained(device, status)
    replace_pod(kube, namespace, "broker-0")
    wait_for(lambda: "as ingest-ingest-0" in kube.kubectl("logs", "-n", namespace, "broker-0", "-c", "mosquitto").stdout,
             timeout=60, interval=1, what="ingest to be connected to the new broker")
    wait_for(lambda: _published(device, 2, 22.5), timeout=60, interval=2, what="the broker to take the device again")
    wait_for(lambda: last_value(kube, namespace, "probe-1", token) == 22.5, timeout=90, what="a reading after the broker restarted")
    assert retained_status(kube, namespace, device) == status, "the retained status survives the broker's pod"


def database_restart_loses_no_reading(kube: Cluster, namespace: str, device: DeviceCredentials, token: str) -> None:
    """Readings sent while the database is down wait in ingest's session and are all stored after it."""
    old_database = kube.core.read_namespaced_pod("database-0", namespace).metadata.uid
    kube.core.delete_namespaced_pod("database-0", namespace)
    during = [30.0 + index for index in range(10)]
    for index, value in enumerate(during):
        wait_for(lambda: _published(device, 10 + index, value), timeout=60, interval=1, what=f"reading {value} accepted by the broker")
    wait_for(lambda: _pod_replaced(kube, namespace, "database-0", old_database), timeout=180, interval=1,
             what="the database's pod to run again")
    wait_for(lambda: {21.5, 22.5, *during} <= set(temperatures(kube, namespace, "probe-1", token)), timeout=180, interval=2,
             what="every reading, the ones sent while the database was down included")


def publish_retained(credentials: DeviceCredentials, payload: bytes) -> None:
    probe = Probe.connect(credentials.port, credentials.username, credentials.password, host=credentials.host)
    try:
        acknowledged = probe.client.publish(f"iot/{credentials.device_id}/status", payload, qos=1, retain=True)
        acknowledged.wait_for_publish(10)
    finally:
        probe.close()


def retained_status(kube: Cluster, namespace: str, credentials: DeviceCredentials) -> bytes | None:
    """The retained message on the device's status topic, as a new subscription gets it (ingest's identity:
    a device receives only its commands)."""
    password = secret_value(kube, namespace, "broker-service-credentials", "ingest-password")
    probe = Probe.connect(credentials.port, INGEST, password, host=credentials.host, client_id="retained-status-check")
    try:
        probe.subscribe(f"iot/{credentials.device_id}/status")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not probe.messages:
            time.sleep(0.1)
        return probe.messages[0].payload if probe.messages else None
    finally:
        probe.close()


def temperatures(kube: Cluster, namespace: str, device: str, token: str) -> list[float]:
    status, body = api_request(kube, namespace, f"/api/v1/devices/{device}/telemetry?type=temperature&limit=100", token)
    return [measurement["val"] for measurement in body.get("measurements", [])] if status == 200 else []


def _pod_replaced(kube: Cluster, namespace: str, name: str, old_uid: str) -> bool:
    try:
        pod = kube.core.read_namespaced_pod(name, namespace)
    except ApiException:
        return False
    return pod.metadata.uid != old_uid and running_and_ready(pod)


def assert_nothing_left(kube: Cluster, namespace: str) -> None:
    """No container of the namespace is left on the node, and its volumes are released for reuse."""
    def containers_left() -> list[str]:
        listed = containerd_runtime.ctr(real_node.folder() / "containerd", "containers", "list", "--quiet",
                                        f"labels.\"io.kubernetes.pod.namespace\"=={namespace}", check=False)
        return listed.stdout.split()

    wait_for(lambda: not containers_left(), timeout=120, interval=2, what=f"the node's containers of {namespace} to be removed")
    volumes = kube.core.list_persistent_volume().items
    claimed = [volume.metadata.name for volume in volumes
               if volume.spec.claim_ref is not None and volume.spec.claim_ref.namespace == namespace and volume.status.phase == "Bound"]
    assert claimed == [], f"volumes still bound to {namespace}: {claimed}"


def _published(device: DeviceCredentials, seq: int, value: float) -> bool:
    try:
        publish_reading(device, seq, value)
    except (OSError, TimeoutError, Refused):
        return False
    return True
