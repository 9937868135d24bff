"""Where devices reach the broker, and whether its TLS Secret may serve: pure rules, judged without a cluster."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotenant.customer_instance.broker_tls import broker_tls
from iotenant.mosquitto.device_endpoint import BrokerExposure, DeviceEndpoint, device_endpoint
from iotenant.mosquitto.identities import DeviceCredentials

IN_CLUSTER = ("broker.customer-acme.svc", 1883)


def exposure(**broker: Any) -> BrokerExposure:
    return BrokerExposure.from_spec(broker)


def load_balancer(*ingress: dict[str, str]) -> dict[str, Any]:
    return {"spec": {"ports": [{"name": "mqtt", "port": 1883}]}, "status": {"loadBalancer": {"ingress": list(ingress)}}}


def node_ports(**ports: int) -> dict[str, Any]:
    return {"spec": {"ports": [{"name": name, "nodePort": port} for name, port in ports.items()]}}


@pytest.mark.parametrize(("spec", "service", "expected"), [
    ({}, None, DeviceEndpoint("mqtt", "broker.customer-acme.svc", 1883)),
    ({"tls": {"secretName": "c", "only": True}}, None, DeviceEndpoint("mqtts", "broker.customer-acme.svc", 8883)),
    ({"externalHost": "mqtt.acme.example"}, None, DeviceEndpoint("mqtt", "mqtt.acme.example", 1883)),
    # A load balancer: pending until the cloud assigns it, then its hostname or IP, unless externalHost says otherwise.
    ({"service": {"type": "LoadBalancer"}}, None, DeviceEndpoint("mqtt", "broker.customer-acme.svc", 1883, assigned=False)),
    ({"service": {"type": "LoadBalancer"}}, load_balancer(), DeviceEndpoint("mqtt", "broker.customer-acme.svc", 1883, assigned=False)),
    ({"service": {"type": "LoadBalancer"}}, load_balancer({"ip": "198.51.100.7"}), DeviceEndpoint("mqtt", "198.51.100.7", 1883)),
    ({"service": {"type": "LoadBalancer"}}, load_balancer({"hostname": "lb.example", "ip": "198.51.100.7"}),
     DeviceEndpoint("mqtt", "lb.example", 1883)),
    ({"service": {"type": "LoadBalancer"}, "externalHost": "mqtt.acme.example"}, load_balancer({"ip": "198.51.100.7"}),
     DeviceEndpoint("mqtt", "mqtt.acme.example", 1883)),
    # A node port: the assigned port of the device listener, on the host the customer named.
    ({"service": {"type": "NodePort"}, "externalHost": "203.0.113.5"}, node_ports(mqtt=30001, mqtts=30002),
     DeviceEndpoint("mqtt", "203.0.113.5", 30001)),
    ({"service": {"type": "NodePort"}, "externalHost": "203.0.113.5", "tls": {"issuerRef": {"name": "ca"}, "only": True}},
     node_ports(mqtts=30002), DeviceEndpoint("mqtts", "203.0.113.5", 30002)),
    ({"service": {"type": "NodePort"}, "externalHost": "203.0.113.5"}, None,
     DeviceEndpoint("mqtt", "broker.customer-acme.svc", 1883, assigned=False)),
])
def test_the_device_endpoint_is_what_the_cluster_assigned(spec: dict, service: dict | None, expected: DeviceEndpoint) -> None:
    assert device_endpoint(exposure(**spec), IN_CLUSTER, service) == expected


@pytest.mark.parametrize("service", [
    {"status": {"loadBalancer": {"ingress": [{"ip": None}, {"hostname": 7}, "junk"]}}},
    {"status": {"loadBalancer": {"ingress": "not a list"}}},
    {"status": None, "spec": {"ports": [{"name": "mqtt", "nodePort": "30001"}]}},
])
def test_a_malformed_service_status_leaves_the_endpoint_pending(service: dict) -> None:
    for spec in ({"service": {"type": "LoadBalancer"}}, {"service": {"type": "NodePort"}, "externalHost": "h.example"}):
        try:
            found = device_endpoint(exposure(**spec), IN_CLUSTER, service)
        except (AttributeError, TypeError) as error:
            pytest.fail(f"a malformed Service stopped the reconcile: {error!r}")
        assert found.assigned is False and found.host == "broker.customer-acme.svc"


def test_credentials_carry_the_scheme_and_bracket_ipv6_hosts() -> None:
    for credentials in (DeviceCredentials("d-1", "pw", "2001:db8::1", 8883, "mqtts"), DeviceCredentials("d-1", "pw", "h.example", 30001)):
        assert DeviceCredentials.from_url(credentials.url()) == credentials
    assert DeviceCredentials.from_url("mqtts://d-1:pw@h.example").port == 8883
    for hostile in ("http://d-1:pw@h:80", "mqtts://d-1@h:8883", "mqtt://a%2Fb:pw@h:1883", "mqtts://:pw@h"):
        with pytest.raises(ValueError):
            DeviceCredentials.from_url(hostile)


def _pair() -> tuple[str, str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    foreign = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return pem, private, foreign


def secret(**values: str | bytes) -> dict[str, Any]:
    return {"data": {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for k, v in values.items()}}


def test_a_good_secret_serves_and_changes_of_it_restart_the_broker() -> None:
    certificate, key, _ = _pair()
    found = broker_tls({"secretName": "c"}, "c", False, secret(**{"tls.crt": certificate, "tls.key": key}))
    assert found.condition is not None and found.condition.status == "True" and found.certificate_hash
    renewed, renewed_key, _ = _pair()
    assert broker_tls({"secretName": "c"}, "c", False, secret(**{"tls.crt": renewed, "tls.key": renewed_key})).certificate_hash != found.certificate_hash
    assert broker_tls(None, None, True, None).condition is None


@pytest.mark.parametrize(("tls", "crd", "values", "reason"), [
    ({"issuerRef": {"name": "ca"}}, False, None, "CertManagerMissing"),
    ({"issuerRef": {"name": "ca"}}, True, None, "CertificatePending"),
    ({"secretName": "c"}, False, None, "SecretMissing"),
    ({"secretName": "c"}, False, {"tls.crt": "x"}, "SecretMissing"),
    ({"secretName": "c"}, False, {"tls.crt": b"\xff\xfe", "tls.key": "k"}, "SecretInvalid"),
    ({"secretName": "c"}, False, {"tls.crt": "not pem", "tls.key": "not pem"}, "SecretInvalid"),
    ({"secretName": "c"}, False, {"tls.crt": "-----BEGIN CERTIFICATE-----\n" + "A" * 70000, "tls.key": "k"}, "SecretInvalid"),
    ({"secretName": "c"}, False, "foreign key", "SecretInvalid"),
    ({"secretName": "c"}, False, "key as certificate", "SecretInvalid"),
])
def test_a_bad_tls_secret_never_reaches_mosquitto(tls: dict, crd: bool, values: Any, reason: str) -> None:
    certificate, key, foreign = _pair()
    if values == "foreign key":
        values = {"tls.crt": certificate, "tls.key": foreign}
    elif values == "key as certificate":
        values = {"tls.crt": key, "tls.key": key}
    found = broker_tls(tls, "c" if "secretName" in tls else "broker-tls", crd, secret(**values) if values is not None else None)
    assert found.condition is not None and found.condition.status == "False" and found.condition.reason == reason
    assert found.certificate_hash is None, "no listener on a certificate Mosquitto would refuse"
    # The next good Secret serves.
    assert broker_tls(tls, "c", True, secret(**{"tls.crt": certificate, "tls.key": key})).certificate_hash
