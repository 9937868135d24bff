"""What a DeviceFleet owns: its credentials Secret (one URL per device) and its simulator, both owned by the
fleet and kept apart from the instance's own objects by the fleet label."""

from __future__ import annotations

import base64

from iotenant.device_fleet import manifests
from iotenant.device_fleet.admission import Fleet
from iotenant.mosquitto.identities import DeviceCredentials
from iotenant.render.parts import SIMULATOR_PART
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.meta import FLEET, Owner

OWNER = Owner("acme", "uid-acme")
FLEET_BODY = {"metadata": {"name": "meters", "namespace": "customer-acme", "uid": "uid-fleet", "generation": 1},
              "spec": {"devices": {"ids": ["m-1", "m-2"]}, "telemetry": {"intervalSeconds": 5}}}


def test_the_credentials_secret_holds_one_url_per_device_and_belongs_to_the_fleet() -> None:
    fleet = Fleet.from_body(FLEET_BODY)
    credentials = [DeviceCredentials(device, "pw-" + device, "broker.customer-acme.svc", 1883) for device in fleet.devices]
    secret = manifests.credentials_secret(OWNER, fleet, credentials, rotated_for="r1")
    assert secret["metadata"]["name"] == "devicefleet-meters-credentials"
    assert secret["metadata"]["labels"][FLEET] == "meters" and secret["metadata"]["ownerReferences"][0]["uid"] == "uid-fleet"
    assert base64.b64decode(secret["data"]["m-1"]).decode() == "mqtt://m-1:pw-m-1@broker.customer-acme.svc:1883"
    assert manifests.credentials_data_size(credentials) == sum(len(c.url()) for c in credentials)


def test_the_simulator_is_the_simulator_part_and_restarts_when_its_devices_change() -> None:
    fleet = Fleet.from_body(FLEET_BODY)
    deployment = manifests.simulator(OWNER, fleet, OperatorSettings(), rotated_for="r1", internal_listener=True)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(key) == value for key, value in SIMULATOR_PART.selector().items()), "the broker's policies admit it"
    assert deployment["spec"]["selector"]["matchLabels"][FLEET] == "meters"
    env = {item["name"]: item["value"] for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IOTENANT_MQTT_PORT"] == "1884", "devices take TLS only: the simulator uses the internal listener"
    fingerprint = deployment["spec"]["template"]["metadata"]["annotations"]
    renamed = Fleet.from_body({**FLEET_BODY, "spec": {**FLEET_BODY["spec"], "devices": {"ids": ["m-1", "m-3"]}}})
    assert manifests.simulator(OWNER, renamed, OperatorSettings(), rotated_for="r1")["spec"]["template"]["metadata"]["annotations"] != fingerprint
    assert manifests.simulator_resources(10_000)["requests"]["memory"] == "143Mi"
