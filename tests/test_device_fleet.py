"""DeviceFleets end to end: the operator on a real apiserver drives a real Mosquitto that runs the
broker setup the operator generated. Devices connect with the credentials from the fleet's Secret."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import watch

from conftest import PULL_SECRET, Cluster, RunningOperator, wait_for
from iotenant.mosquitto.dynamic_security import DynamicSecurity
from iotenant.mosquitto.identities import ADMIN, API, INGEST
from iotenant_testbed.local_pods import localise_database_url
from iotenant_testbed.loopback import free_port
from iotenant_testbed.mosquitto import admin_tls_of, generated_broker_files
from mqtt_probe import NOT_AUTHORIZED, Probe, refused
from real_services import PostgresServer
from tenants import GROUP, VERSION, Tenant, delete_tenant, run_generated, start_tenant


@pytest.fixture(scope="module")
def enterprise(kube: Cluster, operator: RunningOperator, broker_addresses: Path, service_root: Path) -> Iterator[Tenant]:
    tenant = start_tenant(kube, broker_addresses, service_root, "fleets-ent", "enterprise")
    yield tenant
    delete_tenant(tenant)


@pytest.fixture(scope="module")
def starter(kube: Cluster, operator: RunningOperator, broker_addresses: Path, service_root: Path) -> Iterator[Tenant]:
    tenant = start_tenant(kube, broker_addresses, service_root, "fleets-starter", "starter")
    yield tenant
    delete_tenant(tenant)


def connect(tenant: Tenant, fleet: str, device: str) -> Probe:
    credentials = tenant.credentials(fleet)[device]
    return Probe.connect(tenant.broker.port, credentials.username, credentials.password, client_id=credentials.client_id)


def accepted(code: int) -> bool:
    return code in (0, 1, 16)  # PUBACK success / no matching subscribers; SUBACK granted QoS


def test_each_device_uses_only_its_own_topics(enterprise: Tenant) -> None:
    enterprise.apply_fleet("meters", {"count": 3, "idPrefix": "meter-"})
    enterprise.apply_fleet("valves", {"ids": ["valve-a", "valve-b"]})
    meters = enterprise.wait_fleet("meters", "True", "Admitted")
    enterprise.wait_fleet("valves", "True", "Admitted")
    assert meters["status"]["provisioned"] == 3
    assert meters["status"]["credentialsSecret"] == "devicefleet-meters-credentials"
    assert sorted(enterprise.credentials("meters")) == ["meter-001", "meter-002", "meter-003"]
    assert sorted(enterprise.credentials("valves")) == ["valve-a", "valve-b"]

    device = connect(enterprise, "meters", "meter-001")
    try:
        assert accepted(device.subscribe("iot/meter-001/#"))
        assert accepted(device.publish("iot/meter-001/telemetry", b'{"v":2}'))
        # Commands come from the API: a device does not publish them, nor any topic outside the layout.
        assert device.publish("iot/meter-001/command", b"own") == NOT_AUTHORIZED
        assert device.publish("iot/meter-001/anything", b"own") == NOT_AUTHORIZED
        assert device.publish("iot/meter-002/telemetry") == NOT_AUTHORIZED, "another device's topic of the same fleet"
        assert device.publish("iot/valve-a/telemetry") == NOT_AUTHORIZED, "another fleet's device topic"
        # A subscription outside its own topics is refused, the share groups included.
        for pattern in ("iot/meter-002/#", "iot/valve-b/#", "iot/+/telemetry", "#", "$share/ingest/iot/+/telemetry"):
            assert device.subscribe(pattern) == NOT_AUTHORIZED, pattern
        neighbours = [connect(enterprise, "meters", "meter-002"), connect(enterprise, "valves", "valve-b")]
        for neighbour in neighbours:
            assert accepted(neighbour.publish(f"iot/{neighbour.username}/telemetry", b"private"))
            assert accepted(neighbour.publish(f"iot/{neighbour.username}/command/ack", b"private"))
            neighbour.close()
        api_password = enterprise.secret("broker-service-credentials")["api-password"]  # type: ignore[index]
        api = Probe.connect(enterprise.broker.port, API, api_password, client_id="api-marker")
        assert accepted(api.publish("iot/meter-001/command", b"marker"))
        api.close()
        wait_for(lambda: any(m.topic == "iot/meter-001/command" for m in device.messages), timeout=5, what="its command")
        time.sleep(0.5)  # anything leaked from the neighbours would have been delivered before the marker
        received = sorted({m.topic for m in device.messages})
        # Its commands only: nothing of its neighbours, and none of its own messages back.
        assert received == ["iot/meter-001/command"], f"meter-001 received {received}"
    finally:
        device.close()
    # A device id is not a password: another device's name with a wrong password is refused.
    assert refused(enterprise.broker.port, "meter-002", enterprise.credentials("meters")["meter-001"].password)

    def counted() -> bool:
        return enterprise.instance()["status"]["devices"] == {"provisioned": 5, "limit": 10000}

    wait_for(counted, timeout=20, what="status.devices of the instance to count both fleets")
    table = enterprise.kube.kubectl("get", "devicefleets", "-n", enterprise.namespace).stdout
    assert any(line.split()[:4] == ["meters", "sensor", "3", "True"] for line in table.splitlines()), table
    assert "Normal Admitted" in enterprise.events("meters")
    enterprise.delete_fleet("meters")
    enterprise.delete_fleet("valves")


def test_a_removed_device_is_refused_and_its_connection_dropped(enterprise: Tenant) -> None:
    enterprise.apply_fleet("pumps", {"ids": ["pump-1", "pump-2", "pump-3"]})
    enterprise.wait_fleet("pumps", "True")
    removed_password = enterprise.credentials("pumps")["pump-2"].password
    kept = connect(enterprise, "pumps", "pump-1")
    removed = connect(enterprise, "pumps", "pump-2")
    try:
        enterprise.apply_fleet("pumps", {"ids": ["pump-1", "pump-3"]})
        assert removed.disconnected.wait(20), "pump-2 is still connected after its removal"
        assert refused(enterprise.broker.port, "pump-2", removed_password)
        assert "pump-2" not in enterprise.credentials("pumps")
        assert not kept.disconnected.is_set(), "removing pump-2 disconnected pump-1"
        assert accepted(kept.publish("iot/pump-1/telemetry"))
        assert enterprise.wait_fleet("pumps", "True")["status"]["provisioned"] == 2
    finally:
        kept.close()
        removed.close()

    survivor = connect(enterprise, "pumps", "pump-3")
    password = enterprise.credentials("pumps")["pump-3"].password
    enterprise.delete_fleet("pumps")
    assert survivor.disconnected.wait(20), "deleting the fleet left pump-3 connected"
    assert refused(enterprise.broker.port, "pump-3", password)
    wait_for(lambda: enterprise.secret("devicefleet-pumps-credentials") is None, timeout=30,
             what="the credentials Secret to be garbage-collected with its fleet")


def watch_ready(tenant: Tenant, name: str, seen: list[tuple[str, int, str, float]], stop: threading.Event) -> None:
    """Record each change of the fleet's Ready reason and provisioned count (with its message and when it
    was seen) until ``stop``."""
    while not stop.is_set():
        stream = watch.Watch().stream(tenant.kube.custom.list_namespaced_custom_object, GROUP, VERSION, tenant.namespace,
                                      "devicefleets", field_selector=f"metadata.name={name}", timeout_seconds=5)
        for event in stream:
            status = event["object"].get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
            if ready is not None and (not seen or seen[-1][:2] != (ready["reason"], status.get("provisioned", 0))):
                seen.append((ready["reason"], int(status.get("provisioned", 0)), ready["message"], time.monotonic()))
            if stop.is_set():
                return


def test_admitting_a_thousand_devices_leaves_connected_devices_connected(enterprise: Tenant) -> None:
    enterprise.apply_fleet("early", {"ids": ["early-1"]})
    enterprise.wait_fleet("early", "True")
    early = connect(enterprise, "early", "early-1")
    acks: list[int] = []
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.is_set():
            acks.append(early.publish("iot/early-1/telemetry"))
            time.sleep(0.1)

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    seen: list[tuple[str, int, str, float]] = []  # the fleet's Ready reason, provisioned count and message, as it changes
    watcher = threading.Thread(target=watch_ready, args=(enterprise, "bulk", seen, stop), daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        enterprise.apply_fleet("bulk", {"count": 1000, "idPrefix": "bulk-"})
        bulk = enterprise.wait_fleet("bulk", "True", timeout=180)
        took = time.monotonic() - started
    finally:
        stop.set()
        publisher.join()
    try:
        assert bulk["status"]["provisioned"] == 1000
        admitting = [(provisioned, message) for reason, provisioned, message, _ in seen if reason == "Admitting"]
        assert admitting and all(0 < provisioned < 1000 for provisioned, _ in admitting), seen
        assert f"{admitting[0][0]:,} of 1,000 new devices in the broker so far" in admitting[0][1], admitting
        wait_for(lambda: "Normal Admitting" in enterprise.events("bulk"), timeout=10, what="a Normal Admitting Event")
        assert not early.disconnected.is_set(), "a connected device was dropped while 1,000 devices were admitted"
        assert acks and all(accepted(code) for code in acks)
        credentials = enterprise.credentials("bulk")
        assert len(credentials) == 1000
        for device in ("bulk-001", "bulk-500", "bulk-1000"):
            connect(enterprise, "bulk", device).close()
        print(f"1,000 devices admitted and connectable in {took:.1f} s; the connected device published {len(acks)} messages meanwhile")
    finally:
        early.close()
        enterprise.delete_fleet("early")
        enterprise.delete_fleet("bulk")


def test_rotation_locks_out_the_old_credentials(enterprise: Tenant) -> None:
    enterprise.apply_fleet("locks", {"ids": ["lock-1", "lock-2"]})
    enterprise.wait_fleet("locks", "True")
    before = enterprise.credentials("locks")
    online = connect(enterprise, "locks", "lock-1")
    try:
        enterprise.kube.kubectl("annotate", "devicefleet", "locks", "-n", enterprise.namespace,
                                "iotenant.io/rotate-credentials=2026-11-25")

        def rotated() -> bool:
            return all(enterprise.credentials("locks")[d].password != before[d].password for d in before)

        wait_for(rotated, timeout=30, what="new passwords in the credentials Secret")
        assert online.disconnected.wait(20), "a device with the old password stayed connected"
        wait_for(lambda: refused(enterprise.broker.port, "lock-1", before["lock-1"].password), timeout=20,
                 what="the old password to be refused")
        assert refused(enterprise.broker.port, "lock-2", before["lock-2"].password)
        connect(enterprise, "locks", "lock-1").close()
        connect(enterprise, "locks", "lock-2").close()
        wait_for(lambda: "Normal CredentialsRotated" in enterprise.events("locks"), timeout=10, what="a CredentialsRotated Event")
        # The same annotation again changes nothing; the passwords stay.
        current = enterprise.credentials("locks")
        enterprise.apply_fleet("locks", {"ids": ["lock-1", "lock-2"]}, annotations={"iotenant.io/rotate-credentials": "2026-11-25"})
        time.sleep(2)
        assert enterprise.credentials("locks") == current
    finally:
        online.close()
        enterprise.delete_fleet("locks")


def test_a_hand_edited_credentials_secret_is_healed_and_the_broker_follows(enterprise: Tenant) -> None:
    enterprise.apply_fleet("edited", {"ids": ["ed-1", "ed-2", "ed-3"]})
    enterprise.wait_fleet("edited", "True")
    before = enterprise.credentials("edited")
    secret = "devicefleet-edited-credentials"
    patch = {"data": {"ed-1": base64.b64encode(b"not a credential").decode(), "ed-2": None}}
    enterprise.kube.kubectl("patch", "secret", secret, "-n", enterprise.namespace, "--type", "merge", "-p", json.dumps(patch))

    def healed() -> bool:
        try:
            now = enterprise.credentials("edited")
        except (AssertionError, ValueError):
            return False
        return set(now) == {"ed-1", "ed-2", "ed-3"}

    wait_for(healed, timeout=30, what="the credentials Secret to be whole again")
    after = enterprise.credentials("edited")
    assert after["ed-3"] == before["ed-3"], "an untouched device's password changed"
    assert after["ed-1"].password != before["ed-1"].password and after["ed-2"].password != before["ed-2"].password
    for device in ("ed-1", "ed-2", "ed-3"):  # the broker took the new passwords at once
        wait_for(lambda: not refused(enterprise.broker.port, device, after[device].password), timeout=20, what=f"{device} to connect")
    assert refused(enterprise.broker.port, "ed-2", before["ed-2"].password)
    enterprise.delete_fleet("edited")


def test_broker_drift_is_healed(enterprise: Tenant, operator: RunningOperator) -> None:
    enterprise.apply_fleet("drift", {"ids": ["drift-1", "drift-2"]})
    enterprise.wait_fleet("drift", "True")
    assert enterprise.secret("broker-admin")["username"] == ADMIN
    admin_tls = admin_tls_of(enterprise.kube.core, enterprise.namespace)
    with DynamicSecurity("127.0.0.1", enterprise.broker.admin_port, admin_tls) as broker:
        broker.execute([{"command": "deleteClient", "username": "drift-1"},
                        {"command": "createClient", "username": "stowaway", "password": "let-me-in"}])

    def healed() -> bool:
        with DynamicSecurity("127.0.0.1", enterprise.broker.admin_port, admin_tls) as broker:
            clients = broker.list_clients()
        return {"drift-1", "drift-2", INGEST, API, ADMIN} <= set(clients) and "stowaway" not in clients

    wait_for(healed, timeout=30, what="the operator to restore drift-1 and remove the stowaway")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    for sample in ('iotenant_operator_broker_syncs_total{result="ok"}', 'iotenant_operator_broker_identity_changes_total{change="deleted"}',
                   'iotenant_operator_fleet_transitions_total{reason="Admitted"}'):
        value = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(sample))
        assert value > 0, sample
    connect(enterprise, "drift", "drift-1").close()
    assert refused(enterprise.broker.port, "stowaway", "let-me-in")
    enterprise.delete_fleet("drift")


def test_devices_the_broker_lost_are_created_again_and_the_fleet_ends_admitted_not_admitting(enterprise: Tenant) -> None:
    enterprise.apply_fleet("lost", {"count": 2000, "idPrefix": "lost-"})
    enterprise.wait_fleet("lost", "True", timeout=120)
    admin_tls = admin_tls_of(enterprise.kube.core, enterprise.namespace)
    seen: list[tuple[str, int, str, float]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_ready, args=(enterprise, "lost", seen, stop), daemon=True)
    watcher.start()
    try:
        with DynamicSecurity("127.0.0.1", enterprise.broker.admin_port, admin_tls) as broker:
            broker.execute([{"command": "deleteClient", "username": f"lost-{n:03d}"} for n in range(1, 2001)])
        # A full check creates them again in several control messages: the fleet reports its progress on
        # the way, and the same reconcile ends it Admitted (the status it had before the loss), not the next
        # resync (5 s later here).
        wait_for(lambda: any(reason == "Admitted" for reason, *_ in seen[1:]) and seen[-1][0] == "Admitted", timeout=60,
                 what="the fleet Admitted again after its progress")
    finally:
        stop.set()
    reasons = [reason for reason, *_ in seen]
    last_progress = max(index for index, reason in enumerate(reasons) if reason == "Admitting")
    assert seen[last_progress + 1][0] == "Admitted" and seen[last_progress + 1][3] - seen[last_progress][3] < 2, seen
    assert seen[-1][1] == 2000
    connect(enterprise, "lost", "lost-1000").close()
    enterprise.delete_fleet("lost")


def test_fleets_are_admitted_whole_oldest_first_within_the_licence(starter: Tenant) -> None:
    """starter: 25 devices, 2 fleets."""
    starter.apply_fleet("first", {"count": 20, "idPrefix": "first-"})
    starter.wait_fleet("first", "True")
    time.sleep(1.1)  # creation timestamps have one-second resolution: make the age order unambiguous
    starter.apply_fleet("second", {"count": 10, "idPrefix": "second-"})
    refused_fleet = starter.wait_fleet("second", "False", "DeviceLimitExceeded")
    assert refused_fleet["status"]["provisioned"] == 0
    assert "25" in next(c for c in refused_fleet["status"]["conditions"] if c["type"] == "Ready")["message"]
    assert next(c for c in refused_fleet["status"]["conditions"] if c["type"] == "Stalled")["status"] == "True"
    assert starter.secret("devicefleet-second-credentials") is None
    assert refused(starter.broker.port, "second-001", "any-password")
    wait_for(lambda: "Warning DeviceLimitExceeded" in starter.events("second"), timeout=10, what="a DeviceLimitExceeded Event")

    time.sleep(1.1)
    starter.apply_fleet("third", {"count": 3, "idPrefix": "third-"})
    starter.wait_fleet("third", "True")  # 20 + 3 devices in 2 fleets fit
    time.sleep(1.1)
    starter.apply_fleet("fourth", {"ids": ["fourth-1"]})
    fourth = starter.wait_fleet("fourth", "False", "DeviceLimitExceeded")
    assert "2 fleets" in next(c for c in fourth["status"]["conditions"] if c["type"] == "Ready")["message"]
    wait_for(lambda: starter.instance()["status"]["devices"] == {"provisioned": 23, "limit": 25}, timeout=20,
             what="status.devices to show 23 of 25")

    # The oldest fleet leaves: the next oldest (second) now fits and is admitted, fourth still does not.
    starter.delete_fleet("first")
    starter.wait_fleet("second", "True", "Admitted")
    connect(starter, "second", "second-007").close()
    starter.wait_fleet("fourth", "False", "DeviceLimitExceeded")
    wait_for(lambda: starter.instance()["status"]["devices"] == {"provisioned": 13, "limit": 25}, timeout=20,
             what="status.devices to show 13 of 25")
    for name in ("second", "third", "fourth"):
        starter.delete_fleet(name)


def test_the_same_device_id_in_two_fleets_is_refused_for_the_newer(starter: Tenant) -> None:
    starter.apply_fleet("one", {"ids": ["twin-1", "solo-1"]})
    starter.wait_fleet("one", "True")
    time.sleep(1.1)
    starter.apply_fleet("two", {"ids": ["twin-1", "solo-2"]})
    body = starter.wait_fleet("two", "False", "DuplicateDeviceIds")
    assert "twin-1" in next(c for c in body["status"]["conditions"] if c["type"] == "Ready")["message"]
    connect(starter, "one", "twin-1").close()
    starter.delete_fleet("one")
    starter.delete_fleet("two")


def cached_fleets(operator: RunningOperator) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith('iotenant_operator_cached_objects{kind="DeviceFleet"}'))


def test_a_fleet_outside_a_customer_namespace_is_told_so_and_never_held(kube: Cluster, operator: RunningOperator) -> None:
    """Anyone who may create fleets in some namespace: the operator tells them, and holds nothing of it."""
    held_before = cached_fleets(operator)
    kube.kubectl("create", "namespace", "not-a-customer", check=False)
    body = {
        "apiVersion": "iotenant.io/v1alpha1", "kind": "DeviceFleet",
        "metadata": {"name": "stray", "namespace": "not-a-customer"},
        "spec": {"deviceType": "sensor", "devices": {"ids": ["stray-1"]}},
    }
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(body))

    def told() -> dict | None:
        fleet = kube.custom.get_namespaced_custom_object("iotenant.io", "v1alpha1", "not-a-customer", "devicefleets", "stray")
        ready = next((c for c in fleet.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        return fleet if ready.get("reason") == "NotInCustomerNamespace" and ready.get("status") == "False" else None

    fleet = wait_for(told, timeout=30, what="NotInCustomerNamespace on the stray fleet")
    assert fleet["status"]["provisioned"] == 0

    def warned() -> bool:
        events = kube.core.list_namespaced_event("not-a-customer", field_selector="involvedObject.name=stray").items
        return any(event.reason == "NotInCustomerNamespace" and event.type == "Warning" for event in events)

    wait_for(warned, timeout=10, what="a NotInCustomerNamespace Warning Event")
    assert cached_fleets(operator) == held_before, "a fleet outside the customer namespaces was held in the operator's memory"
    kube.kubectl("delete", "namespace", "not-a-customer", "--wait=false")


def test_suspension_leaves_every_fleet_not_ready(starter: Tenant) -> None:
    starter.apply_fleet("paused", {"ids": ["p-1"]})
    starter.wait_fleet("paused", "True")
    starter.kube.custom.patch_cluster_custom_object("iotenant.io", "v1alpha1", "customerinstances", starter.name,
                                                   {"spec": {"suspended": True}})
    assert starter.wait_fleet("paused", "False", "Suspended")["status"]["provisioned"] == 0
    starter.kube.custom.patch_cluster_custom_object("iotenant.io", "v1alpha1", "customerinstances", starter.name,
                                                   {"spec": {"suspended": False}})
    starter.wait_fleet("paused", "True", "Admitted")
    starter.delete_fleet("paused")


def test_simulator_traffic_is_queryable_through_the_api(enterprise: Tenant, postgres: PostgresServer, tmp_path: Path) -> None:
    """The simulator Deployment, ingest and api run here as the operator rendered them, against the tenant's broker."""
    enterprise.apply_fleet("sims", {"count": 3, "idPrefix": "sim-"}, simulator=True, interval=1)
    enterprise.wait_fleet("sims", "True")
    deployment = wait_for(lambda: _deployment(enterprise, "simulator-sims"), timeout=30, what="the simulator Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["simulate"]
    assert pod["volumes"][0]["secret"]["secretName"] == "devicefleet-sims-credentials"
    assert pod["imagePullSecrets"] == [{"name": f"image-pull-{PULL_SECRET}"}], "the simulator pulls the iotenant image as ingest and api do"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "simulator"
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "DeviceFleet"
    assert pod["containers"][0]["resources"]["requests"]["memory"] == "65Mi"  # grows with the fleet

    # The namespace enforces Pod Security "restricted": a pod exists only if admission accepted it.
    def simulator_pod() -> bool:
        pods = enterprise.kube.core.list_namespaced_pod(enterprise.namespace, label_selector="iotenant.io/fleet=sims").items
        return bool(pods)

    wait_for(simulator_pod, timeout=30, what="the simulator pod, admitted under Pod Security restricted")

    # The database as the operator set it up: ingest's init container makes the roles with the superuser,
    # then ingest and api log in (SCRAM) with their own roles and generated passwords.
    database = postgres.create_database("fleet_simulator")
    credentials = enterprise.secret("database-credentials")
    setup = run_generated(enterprise, "statefulset", "ingest", tmp_path / "setup",
                          {"IOTENANT_DATABASE_ADMIN_URL": database, "IOTENANT_LOG_FORMAT": "text"}, init_container="database-setup")
    assert setup.process.wait(timeout=60) == 0, setup.log.read_text()
    broker = {"IOTENANT_MQTT_HOST": "127.0.0.1", "IOTENANT_MQTT_PORT": str(enterprise.broker.port)}
    local = {"IOTENANT_METRICS_ADDRESS": "127.0.0.1", "IOTENANT_LOG_FORMAT": "text"}
    api_port = free_port()
    processes = [
        run_generated(enterprise, "statefulset", "ingest", tmp_path / "ingest",
                      {**broker, **local, "IOTENANT_DATABASE_URL": localise_database_url(credentials["ingest-url"], database),
                       "IOTENANT_METRICS_PORT": str(free_port()), "IOTENANT_CLIENT_ID": "ingest-0"}),
        run_generated(enterprise, "deployment", "api", tmp_path / "api",
                      {**broker, **local, "IOTENANT_DATABASE_URL": localise_database_url(credentials["api-url"], database),
                       "IOTENANT_METRICS_PORT": str(free_port()), "IOTENANT_API_ADDRESS": "127.0.0.1", "IOTENANT_API_PORT": str(api_port)}),
        run_generated(enterprise, "deployment", "simulator-sims", tmp_path / "simulator",
                      {**broker, **local, "IOTENANT_METRICS_PORT": "0"}),
    ]
    token = enterprise.secret("api-token")["token"]
    try:
        def stored() -> bool:
            status, body = _get(api_port, "/api/v1/devices", token)
            simulated = [d for d in (body or {}).get("devices", []) if d["id"].startswith("sim-")] if status == 200 else []
            return len(simulated) == 3 and all(d["online"] for d in simulated)

        wait_for(stored, timeout=60, what="the three simulated devices, online, through the API")
        wait_for(lambda: len(_get(api_port, "/api/v1/devices/sim-002/telemetry?limit=5", token)[1]["measurements"]) == 5,
                 timeout=30, what="simulated telemetry of sim-002 through the API")
        assert _get(api_port, "/api/v1/licence", token)[1]["plan"] == "enterprise"
    finally:
        for process in processes:
            process.stop()
        for process in processes:
            if process.process.returncode not in (0, -15):
                print(process.log.read_text()[-2000:])

    enterprise.apply_fleet("sims", {"count": 3, "idPrefix": "sim-"}, simulator=False, interval=1)
    wait_for(lambda: _deployment(enterprise, "simulator-sims") is None, timeout=30, what="the simulator to be removed")
    enterprise.delete_fleet("sims")


def _get(port: int, path: str, token: str) -> tuple[int, dict | None]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError:
        return 0, None


def _deployment(tenant: Tenant, name: str) -> dict | None:
    found = tenant.kube.kubectl("get", "deployment", name, "-n", tenant.namespace, "-o", "yaml", check=False)
    return yaml.safe_load(found.stdout) if found.returncode == 0 else None


def test_a_lost_admin_secret_is_reissued_and_revocation_still_reaches_the_broker(enterprise: Tenant) -> None:
    enterprise.apply_fleet("keys", {"ids": ["key-1", "key-2"]})
    enterprise.wait_fleet("keys", "True", "Admitted")
    password = enterprise.credentials("keys")["key-1"].password
    old_ca = enterprise.secret("broker-admin-listener")["ca.crt"]
    template = lambda: enterprise.kube.apps.read_namespaced_stateful_set("broker", enterprise.namespace).spec.template  # noqa: E731
    old_stamp = template().metadata.annotations["iotenant.io/admin-tls"]
    enterprise.kube.core.delete_namespaced_secret("broker-admin", enterprise.namespace)

    def reissued() -> bool:
        client, server = enterprise.secret("broker-admin"), enterprise.secret("broker-admin-listener")
        return bool(client and server and server["ca.crt"] != old_ca and client["ca.crt"] == server["ca.crt"])

    wait_for(reissued, timeout=30, what="both halves of the admin certificates issued anew")
    # The Secrets are written before the StatefulSet in the same convergence: wait for the restart stamp too.
    wait_for(lambda: template().metadata.annotations["iotenant.io/admin-tls"] != old_stamp, timeout=30,
             what="the broker restarted with the new admin certificates")
    events = enterprise.kube.core.list_namespaced_event("default", field_selector=f"involvedObject.name={enterprise.name}").items
    assert "BrokerAdminReissued" in {event.reason for event in events}
    assert refused(enterprise.broker.port, ADMIN, "")  # still no password on the device listener

    # The StatefulSet rolls the broker onto the new certificates; here the local broker restarts with them,
    # keeping its data (the identities) as the pod keeps its volume.
    enterprise.broker.stop()
    enterprise.broker.write_generated(*wait_for(lambda: generated_broker_files(enterprise.kube.core, enterprise.namespace),
                                                timeout=10, what="the generated broker files"))
    enterprise.broker.start()
    device = connect(enterprise, "keys", "key-1")
    enterprise.delete_fleet("keys")
    assert device.disconnected.wait(30), "a device of a deleted fleet kept its connection"
    wait_for(lambda: refused(enterprise.broker.port, "key-1", password), timeout=10, what="key-1 to be refused")
