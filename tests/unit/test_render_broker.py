"""The broker part: its listeners follow the spec's TLS and exposure, it stops serving when the tenant does,
and its certificate names where devices reach it."""

from __future__ import annotations

import dataclasses

from iotenant.render import broker
from stacks import fixture_stack


def by_kind_and_name(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def container_ports(objects: list[dict]) -> set[int]:
    (mosquitto,) = by_kind_and_name(objects)[("StatefulSet", broker.WORKLOAD.name)]["spec"]["template"]["spec"]["containers"]
    return {port["containerPort"] for port in mosquitto["ports"]}


def test_devices_lose_the_plaintext_listener_when_tls_is_the_only_way_in() -> None:
    plain, tls_only = broker.broker(fixture_stack("starter")), broker.broker(fixture_stack("enterprise"))
    assert container_ports(plain) == {1883, 8884}
    assert container_ports(tls_only) == {1884, 8883, 8884}, "plaintext moves to the internal port, devices get 8883"
    devices = by_kind_and_name(tls_only)[("Service", "broker-devices")]
    assert [port["port"] for port in devices["spec"]["ports"]] == [8883] and devices["spec"]["type"] == "NodePort"
    assert ("Service", "broker-devices") not in by_kind_and_name(plain), "not exposed: no device Service"


def test_a_tenant_that_does_not_serve_keeps_its_broker_at_zero_replicas() -> None:
    stopped = broker.broker(dataclasses.replace(fixture_stack("starter"), serving=False))
    assert by_kind_and_name(stopped)[("StatefulSet", "broker")]["spec"]["replicas"] == 0


def test_the_certificate_names_the_cluster_names_and_the_external_host() -> None:
    certificate = by_kind_and_name(broker.broker(fixture_stack("enterprise")))[("Certificate", "broker-tls")]
    assert certificate["spec"]["dnsNames"] == ["broker.customer-acme.svc", "broker.customer-acme.svc.cluster.local", "mqtt.acme.example"]
    without_crd = dataclasses.replace(fixture_stack("enterprise"), certificate_crd_present=False)
    assert ("Certificate", "broker-tls") not in by_kind_and_name(broker.broker(without_crd))
