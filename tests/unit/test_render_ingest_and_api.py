"""The ingest and api parts: replicas and their spread, the internal broker port under TLS only, the API's
Ingress and the address customers are given."""

from __future__ import annotations

from iotenant.render import ingest_and_api
from iotenant.vocabulary.contract import Env
from stacks import fixture_stack


def env_of(workload: dict) -> dict[str, str]:
    (main,) = workload["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value", "") for item in main["env"]}


def test_ingest_replicas_spread_and_each_knows_how_many_share_the_subscription() -> None:
    (statefulset, _service) = ingest_and_api.ingest(fixture_stack("enterprise"))
    assert statefulset["spec"]["replicas"] == 2 and statefulset["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert env_of(statefulset)[Env.INGEST_REPLICAS] == "2"
    assert env_of(statefulset)[Env.MQTT_PORT] == "1884", "devices take TLS only: our services use the internal listener"
    (single, _service) = ingest_and_api.ingest(fixture_stack("starter"))
    assert "topologySpreadConstraints" not in single["spec"]["template"]["spec"] and env_of(single)[Env.MQTT_PORT] == "1883"


def test_the_api_is_published_through_its_ingress_and_customers_are_given_that_address() -> None:
    objects = {o["kind"]: o for o in ingest_and_api.api(fixture_stack("enterprise"))}
    assert objects["Ingress"]["spec"]["tls"] == [{"hosts": ["api.acme.example"], "secretName": "api-tls"}]
    assert ingest_and_api.api_url("customer-acme", fixture_stack("enterprise").spec["api"]) == "https://api.acme.example"
    assert ingest_and_api.api_url("customer-acme", {}) == "http://api.customer-acme.svc:8080"
    assert "Ingress" not in {o["kind"] for o in ingest_and_api.api(fixture_stack("starter"))}
