"""The CustomerInstance and DeviceFleet CRDs, judged by the real kube-apiserver."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from conftest import EXAMPLES_DIR, Cluster, load_yaml

GROUP, VERSION = "iotenant.io", "v1alpha1"

CUSTOMER = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "CustomerInstance",
    "metadata": {"name": "schema-probe"},
    "spec": {"customerId": "probe-001", "plan": "starter"},
}
FLEET = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "DeviceFleet",
    "metadata": {"name": "probe-fleet", "namespace": "crd-tests"},
    "spec": {"deviceType": "sensor", "devices": {"count": 3, "idPrefix": "dev-"}},
}


def create(kube: Cluster, body: dict, dry_run: bool = False) -> dict:
    """Create a custom object with strict field validation, as kubectl does."""
    options = {"dry_run": "All" if dry_run else None, "field_validation": "Strict"}
    if body["kind"] == "CustomerInstance":
        return kube.custom.create_cluster_custom_object(GROUP, VERSION, "customerinstances", body, **options)
    return kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, body["metadata"]["namespace"], "devicefleets", body, **options
    )


def rejection(kube: Cluster, body: dict) -> str:
    with pytest.raises(ApiException) as caught:
        create(kube, body, dry_run=True)
    assert caught.value.status in (400, 422), caught.value.body
    return json.loads(caught.value.body)["message"]


@pytest.fixture(scope="module")
def namespaces(kube: Cluster, crds: list[dict]) -> Iterator[None]:
    """Namespaces for the fleets (the tests' own and each example's); afterwards every object these tests made is deleted."""
    examples = {load_yaml(path)["metadata"].get("namespace") for path in EXAMPLES_DIR.glob("*.yaml")}
    names = ("crd-tests", *sorted(name for name in examples if name))
    for name in names:
        kube.kubectl("create", "namespace", name, check=False)
    yield
    kube.kubectl("delete", "customerinstances", "--all", "--wait=true", "--timeout=60s")
    kube.kubectl("delete", "namespace", *names, "--wait=false")


def with_spec(base: dict, **changes: object) -> dict:
    body = copy.deepcopy(base)
    body["spec"].update(changes)
    return body


def with_devices(**devices: object) -> dict:
    body = copy.deepcopy(FLEET)
    body["spec"]["devices"] = devices
    return body


def named(name: str) -> dict:
    body = copy.deepcopy(CUSTOMER)
    body["metadata"]["name"] = name
    return body


# (case id, resource, text the apiserver's message must contain: the field at fault)
INVALID = [
    ("name-too-long", named("a" * 51), "metadata.name must be at most 50 characters"),
    ("name-not-dns-label", named("acme.corp"), "metadata.name must be a DNS-1123 label"),
    ("customer-id-missing", {**CUSTOMER, "spec": {"plan": "starter"}}, "spec.customerId: Required value"),
    ("customer-id-too-short", with_spec(CUSTOMER, customerId="ab"), "spec.customerId"),
    ("customer-id-bad-characters", with_spec(CUSTOMER, customerId="acme/corp"), "spec.customerId"),
    ("plan-unknown", with_spec(CUSTOMER, plan="platinum"), "spec.plan: Unsupported value"),
    ("plan-missing-without-secret-ref", {**CUSTOMER, "spec": {"customerId": "probe-001"}}, "spec.plan"),
    ("validity-days-zero", with_spec(CUSTOMER, licence={"validityDays": 0}), "spec.licence.validityDays"),
    ("secret-ref-without-namespace", with_spec(CUSTOMER, licence={"secretRef": {"name": "x"}}), "spec.licence.secretRef.namespace"),
    ("deletion-policy-unknown", with_spec(CUSTOMER, deletionPolicy="Orphan"), "spec.deletionPolicy"),
    ("ingest-replicas-too-many", with_spec(CUSTOMER, ingest={"replicas": 50}), "spec.ingest.replicas"),
    ("storage-not-a-quantity", with_spec(CUSTOMER, database={"storage": "lots"}), "spec.database.storage"),
    ("storage-class-not-a-name", with_spec(CUSTOMER, database={"storageClassName": "Fast SSD"}), "spec.database.storageClassName"),
    ("storage-class-too-long", with_spec(CUSTOMER, broker={"storageClassName": "a" * 254}), "spec.broker.storageClassName"),
    ("storage-class-empty", with_spec(CUSTOMER, broker={"storageClassName": ""}), "spec.broker.storageClassName"),
    ("storage-too-long", with_spec(CUSTOMER, database={"storage": "1" * 40}), "spec.database.storage"),
    ("maintenance-start-not-a-time", with_spec(CUSTOMER, maintenance={"start": "25:00", "durationMinutes": 60}), "spec.maintenance.start"),
    ("maintenance-too-short", with_spec(CUSTOMER, maintenance={"start": "02:00", "durationMinutes": 5}), "spec.maintenance.durationMinutes"),
    ("maintenance-too-long", with_spec(CUSTOMER, maintenance={"start": "02:00", "durationMinutes": 10**9}), "spec.maintenance.durationMinutes"),
    ("maintenance-day-unknown", with_spec(CUSTOMER, maintenance={"days": ["Funday"], "start": "02:00", "durationMinutes": 60}),
     "spec.maintenance.days[0]"),
    ("maintenance-days-repeated", with_spec(CUSTOMER, maintenance={"days": ["Mon", "Mon"], "start": "02:00", "durationMinutes": 60}),
     "spec.maintenance.days[1]: Duplicate value"),
    ("maintenance-without-start", with_spec(CUSTOMER, maintenance={"durationMinutes": 60}), "spec.maintenance.start: Required value"),
    ("unknown-field", with_spec(CUSTOMER, colour="blue"), 'unknown field "spec.colour"'),
    ("suspended-not-boolean", with_spec(CUSTOMER, suspended="yes"), "spec.suspended"),
    ("fleet-name-too-long", {**FLEET, "metadata": {**FLEET["metadata"], "name": "f" * 64}}, "metadata.name must be at most 63 characters"),
    ("fleet-count-and-ids", with_devices(count=2, idPrefix="d-", ids=["a"]), "exactly one of spec.devices.count"),
    ("fleet-neither-count-nor-ids", with_devices(), "exactly one of spec.devices.count"),
    ("fleet-count-too-large", with_devices(count=10001, idPrefix="d-"), "spec.devices.count"),
    ("fleet-count-without-prefix", with_devices(count=5), "spec.devices.idPrefix"),
    ("fleet-id-with-slash", with_devices(ids=["ok-1", "bad/2"]), "spec.devices.ids[1]"),
    ("fleet-id-with-plus", with_devices(ids=["bad+"]), "spec.devices.ids[0]"),
    ("fleet-id-with-hash", with_devices(ids=["#bad"]), "spec.devices.ids[0]"),
    ("fleet-id-too-long", with_devices(ids=["d" * 64]), "spec.devices.ids[0]"),
    ("fleet-ids-duplicate", with_devices(ids=["a", "b", "a"]), 'spec.devices.ids[2]: Duplicate value: "a"'),
    ("fleet-prefix-with-wildcard", with_devices(count=2, idPrefix="dev/+"), "spec.devices.idPrefix"),
    ("fleet-interval-zero", with_spec(FLEET, telemetry={"intervalSeconds": 0}), "spec.telemetry.intervalSeconds"),
    ("fleet-device-type-missing", {**FLEET, "spec": {"devices": {"count": 1, "idPrefix": "d"}}}, "spec.deviceType: Required value"),
]


@pytest.mark.parametrize("body,expected", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_resources_are_rejected_naming_the_field(kube: Cluster, namespaces: None, body: dict, expected: str) -> None:
    message = rejection(kube, body)
    assert expected in message, message


EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_example_is_accepted(kube: Cluster, namespaces: None, path: Path) -> None:
    body = load_yaml(path)
    create(kube, body, dry_run=True)
    created = create(kube, body)
    assert created["metadata"]["uid"]
    assert contains(created["spec"], body["spec"])


def contains(actual: object, expected: object) -> bool:
    """True when every field of ``expected`` is in ``actual`` with the same value (defaults may add more)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v) for k, v in expected.items())
    return actual == expected


def test_defaults_are_applied(kube: Cluster, namespaces: None) -> None:
    created = create(kube, named("defaults-probe"))
    spec = created["spec"]
    assert spec["suspended"] is False
    assert spec["deletionPolicy"] == "Delete"
    assert spec["licence"] == {"validityDays": 365}
    assert spec["broker"]["storage"] == "1Gi"
    assert spec["ingest"]["replicas"] == 1
    fleet = create(kube, {**FLEET, "metadata": {"name": "defaults-fleet", "namespace": "crd-tests"}})
    assert fleet["spec"]["telemetry"] == {"intervalSeconds": 60}
    assert fleet["spec"]["simulator"] == {"enabled": False}


def test_plan_may_be_omitted_when_a_billing_licence_is_referenced(kube: Cluster, namespaces: None) -> None:
    body = named("billing-probe")
    body["spec"] = {"customerId": "billing-probe", "licence": {"secretRef": {"name": "l", "namespace": "billing"}}}
    create(kube, body, dry_run=True)


def test_customer_id_cannot_change_after_creation(kube: Cluster, namespaces: None) -> None:
    create(kube, named("immutable-probe"))
    patch = {"spec": {"customerId": "someone-else"}}
    with pytest.raises(ApiException) as caught:
        kube.custom.patch_cluster_custom_object(GROUP, VERSION, "customerinstances", "immutable-probe", patch)
    assert caught.value.status == 422
    assert "spec.customerId is immutable" in json.loads(caught.value.body)["message"]
    other = {"spec": {"displayName": "still editable"}}
    patched = kube.custom.patch_cluster_custom_object(GROUP, VERSION, "customerinstances", "immutable-probe", other)
    assert patched["spec"]["displayName"] == "still editable"


def test_status_is_a_subresource(kube: Cluster, namespaces: None) -> None:
    create(kube, named("status-probe"))
    ignored = {"status": {"phase": "Ready"}}
    kube.custom.patch_cluster_custom_object(GROUP, VERSION, "customerinstances", "status-probe", ignored)
    assert "status" not in kube.custom.get_cluster_custom_object(GROUP, VERSION, "customerinstances", "status-probe")
    kube.custom.patch_cluster_custom_object_status(GROUP, VERSION, "customerinstances", "status-probe", ignored)
    stored = kube.custom.get_cluster_custom_object(GROUP, VERSION, "customerinstances", "status-probe")
    assert stored["status"]["phase"] == "Ready"


def test_kubectl_get_cust_shows_the_printer_columns(kube: Cluster, namespaces: None) -> None:
    create(kube, named("columns-probe"))
    status = {
        "status": {
            "phase": "Ready",
            "namespace": "customer-columns-probe",
            "licence": {"plan": "starter", "monitoringTier": "shared", "expiresAt": "2030-01-01T00:00:00Z"},
        }
    }
    kube.custom.patch_cluster_custom_object_status(GROUP, VERSION, "customerinstances", "columns-probe", status)
    output = kube.kubectl("get", "cust", "columns-probe").stdout.splitlines()
    assert output[0].split() == ["NAME", "CUSTOMER", "PLAN", "TIER", "PHASE", "NAMESPACE", "EXPIRES", "AGE"]
    assert output[1].split()[:6] == ["columns-probe", "probe-001", "starter", "shared", "Ready", "customer-columns-probe"]
    assert "ci" in kube.kubectl("api-resources", "--api-group=iotenant.io", "-o", "wide").stdout
    assert "columns-probe" in kube.kubectl("get", "iotenant").stdout


def test_kubectl_get_fleet_shows_devices_and_readiness(kube: Cluster, namespaces: None) -> None:
    create(kube, {**FLEET, "metadata": {"name": "columns-fleet", "namespace": "crd-tests"}})
    header = kube.kubectl("get", "df", "-n", "crd-tests", "columns-fleet").stdout.splitlines()[0].split()
    assert header == ["NAME", "TYPE", "DEVICES", "READY", "AGE"]


def test_kubectl_explain_teaches_the_licence_field(kube: Cluster, crds: list[dict]) -> None:
    def explained() -> str:
        result = kube.kubectl("explain", "customerinstance.spec.licence", check=False)
        return result.stdout if result.returncode == 0 else ""

    from conftest import wait_for

    text = wait_for(explained, timeout=30, what="kubectl explain to know the CRD (OpenAPI publication)")
    assert "billing-issued" in text or "licence issued elsewhere" in text
    assert "validityDays" in text and "secretRef" in text
    assert "re-issued before 20% of its validity remains" in kube.kubectl("explain", "cust.spec.licence.validityDays").stdout


def _undocumented(schema: dict, path: str) -> list[str]:
    missing = [] if schema.get("description") or path.endswith(".metadata") else [path]
    for name, child in schema.get("properties", {}).items():
        missing += _undocumented(child, f"{path}.{name}")
    if "items" in schema:
        missing += _undocumented(schema["items"], f"{path}[]")
    return missing


def test_every_field_has_a_description(crds: list[dict]) -> None:
    for crd in crds:
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            assert _undocumented(schema, crd["spec"]["names"]["kind"]) == []
            assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(schema)
