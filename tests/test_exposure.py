"""Devices outside the cluster: the broker's exposure, device TLS (cert-manager) and the API's Ingress.

The cluster is the real apiserver; the tests play the parts that run outside it: a cloud controller
(they write the broker-devices Service's load balancer status), cert-manager (its Certificate CRD is
installed, and the tests issue the Secret a Certificate asks for) and a device (Debian's
``mosquitto_pub`` over TLS against Debian's Mosquitto running the generated configuration).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client.exceptions import ApiException
from test_customer_instance import GROUP, PLURAL, VERSION, condition, create_instance, delete_instance, exists, instance, patch_instance

from conftest import Cluster, RunningOperator, wait_for
from iotenant.mosquitto.identities import DeviceCredentials
from iotenant_testbed.mosquitto import MosquittoBroker, generated_broker_files, set_broker_address
from tenants import Tenant

CERTIFICATE_CRD_FILE = Path(__file__).parent / "crds" / "certificates.cert-manager.io.yaml"


def endpoint(kube: Cluster, name: str) -> str | None:
    return instance(kube, name).get("status", {}).get("endpoints", {}).get("mqtt")


def wait_endpoint(kube: Cluster, name: str, expected: str) -> None:
    wait_for(lambda: endpoint(kube, name) == expected, timeout=60, what=f"{name}: status.endpoints.mqtt {expected} (now {endpoint(kube, name)})")


def read_or_none(read: Callable[[], Any]) -> Any | None:
    try:
        return read()
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def device_service(kube: Cluster, namespace: str) -> Any | None:
    return read_or_none(lambda: kube.core.read_namespaced_service("broker-devices", namespace))


def apply_fleet(kube: Cluster, namespace: str, name: str, ids: list[str]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeviceFleet", "metadata": {"name": name, "namespace": namespace},
            "spec": {"deviceType": "sensor", "devices": {"ids": ids}, "telemetry": {"intervalSeconds": 60}}}
    kube.kubectl("apply", "--server-side", "--field-manager=exposure-tests", "-f", "-", stdin=json.dumps(body))


def credentials(kube: Cluster, namespace: str, fleet: str) -> dict[str, DeviceCredentials]:
    secret = read_or_none(lambda: kube.core.read_namespaced_secret(f"devicefleet-{fleet}-credentials", namespace))
    data = (secret.data if secret else None) or {}
    return {key: DeviceCredentials.from_url(base64.b64decode(value).decode()) for key, value in data.items()}


def wait_credentials(kube: Cluster, namespace: str, fleet: str, url_prefix: str) -> dict[str, DeviceCredentials]:
    def follow() -> dict[str, DeviceCredentials] | None:
        found = credentials(kube, namespace, fleet)
        return found if found and all(f"{c.scheme}://{c.host}:{c.port}" == url_prefix for c in found.values()) else None

    return wait_for(follow, timeout=60, what=f"the credentials of fleet {fleet} to name {url_prefix}")


# ----------------------------------------------------------------------------------------------------
# Exposure


def test_a_load_balancer_address_reaches_status_and_every_credential(kube: Cluster, operator: RunningOperator) -> None:
    create_instance(kube, "lb", plan="professional", broker={"service": {
        "type": "LoadBalancer", "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
        "loadBalancerSourceRanges": ["203.0.113.0/24"]}})
    namespace = "customer-lb"
    service = wait_for(lambda: device_service(kube, namespace), timeout=60, what="Service broker-devices")
    assert service.spec.type == "LoadBalancer"
    assert service.metadata.annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"
    assert service.spec.load_balancer_source_ranges == ["203.0.113.0/24"]
    assert [(p.name, p.port) for p in service.spec.ports] == [("mqtt", 1883)], "device ports only, never the admin listener"
    # No address yet: devices in the cluster can use its name meanwhile.
    wait_endpoint(kube, "lb", "mqtt://broker.customer-lb.svc:1883")
    apply_fleet(kube, namespace, "field", ["pump-1", "pump-2"])
    before = wait_credentials(kube, namespace, "field", "mqtt://broker.customer-lb.svc:1883")

    # The cloud controller assigns an address: status and every credential follow, passwords unchanged.
    kube.core.patch_namespaced_service_status("broker-devices", namespace, {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}})
    wait_endpoint(kube, "lb", "mqtt://198.51.100.7:1883")
    after = wait_credentials(kube, namespace, "field", "mqtt://198.51.100.7:1883")
    assert {d: c.password for d, c in after.items()} == {d: c.password for d, c in before.items()}

    kube.core.patch_namespaced_service_status("broker-devices", namespace, {"status": {"loadBalancer": {"ingress": [{"hostname": "lb-1.cloud.example"}]}}})
    wait_endpoint(kube, "lb", "mqtt://lb-1.cloud.example:1883")
    # A name the customer put in front of it wins over what the cloud assigned.
    patch_instance(kube, "lb", {"spec": {"broker": {"externalHost": "mqtt.lb.example"}}})
    wait_endpoint(kube, "lb", "mqtt://mqtt.lb.example:1883")
    wait_credentials(kube, namespace, "field", "mqtt://mqtt.lb.example:1883")
    delete_instance(kube, "lb")


def test_a_node_port_needs_an_external_host_and_its_port_reaches_credentials(kube: Cluster, operator: RunningOperator) -> None:
    with pytest.raises(ApiException) as refused:
        create_instance(kube, "np", plan="starter", broker={"service": {"type": "NodePort"}})
    assert refused.value.status == 422 and "externalHost" in refused.value.body
    create_instance(kube, "np", plan="starter", broker={"service": {"type": "NodePort"}, "externalHost": "203.0.113.50"})
    namespace = "customer-np"
    service = wait_for(lambda: device_service(kube, namespace), timeout=60, what="Service broker-devices")
    node_port = service.spec.ports[0].node_port
    assert service.spec.type == "NodePort" and 30000 <= node_port <= 32767, "the apiserver assigns the node port"
    wait_endpoint(kube, "np", f"mqtt://203.0.113.50:{node_port}")
    apply_fleet(kube, namespace, "field", ["valve-1"])
    wait_credentials(kube, namespace, "field", f"mqtt://203.0.113.50:{node_port}")
    # Back in the cluster only: the exposing Service goes, credentials name the in-cluster address.
    patch_instance(kube, "np", {"spec": {"broker": {"service": {"type": "ClusterIP"}, "externalHost": None}}})
    wait_for(lambda: device_service(kube, namespace) is None, timeout=60, what="Service broker-devices to be pruned")
    wait_credentials(kube, namespace, "field", "mqtt://broker.customer-np.svc:1883")
    delete_instance(kube, "np")


@pytest.mark.parametrize(("spec", "message"), [
    ({"broker": {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["203.0.113.0/33"]}}}, "must be a CIDR"),
    ({"broker": {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8; rm -rf /"]}}}, "must be a CIDR"),
    ({"broker": {"service": {"type": "ClusterIP", "loadBalancerSourceRanges": ["10.0.0.0/8"]}}}, "LoadBalancer only"),
    ({"broker": {"service": {"type": "ExternalName"}}}, "supported values"),
    ({"broker": {"service": {"annotations": {"bad key!": "x"}}}}, "qualified names"),
    ({"broker": {"service": {"annotations": {f"a{i}": "x" for i in range(33)}}}}, "must have at most 32"),
    ({"broker": {"externalHost": "mqtt://evil.example:1883"}}, "externalHost must be"),
    ({"broker": {"externalHost": "Upper.Example"}}, "externalHost must be"),
    ({"broker": {"externalHost": "a" * 254}}, "Too long"),
    ({"broker": {"externalHost": "mqtt.example\u0000"}}, "externalHost must be"),
    ({"broker": {"tls": {"secretName": "mine", "issuerRef": {"name": "ca"}}}}, "exactly one of secretName or issuerRef"),
    ({"broker": {"tls": {"only": True}}}, "exactly one of secretName or issuerRef"),
    ({"broker": {"tls": {"issuerRef": {"name": "ca", "kind": "Vault"}}}}, "supported values"),
    ({"api": {"ingress": {"host": "api_underscore.example"}}}, "should match"),
    ({"api": {"ingress": {"host": "nodots"}}}, "should match"),
    ({"api": {"ingress": {"className": "nginx"}}}, "Required value"),
])
def test_hostile_exposure_fields_are_refused_naming_the_rule(kube: Cluster, crds: list[dict], spec: dict, message: str) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CustomerInstance", "metadata": {"name": "hostile-exposure"},
            "spec": {"customerId": "hostile-exposure", "plan": "starter", **spec}}
    with pytest.raises(ApiException) as refused:
        kube.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body, dry_run="All")
    assert refused.value.status == 422 and message in refused.value.body, refused.value.body
    # The next good resource still goes through.
    good = {**body, "spec": {"customerId": "hostile-exposure", "plan": "starter", "broker": {
        "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["2001:db8::/32"]}, "externalHost": "2001:db8::1"}}}
    kube.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, good, dry_run="All")


# ----------------------------------------------------------------------------------------------------
# Device TLS


def test_without_cert_manager_tls_is_not_ready_and_the_rest_keeps_working(kube: Cluster, operator: RunningOperator) -> None:
    assert kube.kubectl("get", "crd", "certificates.cert-manager.io", check=False).returncode != 0, "runs before the CRD is installed"
    create_instance(kube, "nocm", plan="starter", broker={"tls": {"issuerRef": {"name": "public-ca"}}})
    result = kube.kubectl("wait", "--for=condition=Ready", "cust/nocm", "--timeout=90s", check=False)
    assert result.returncode == 0, result.stderr
    body = instance(kube, "nocm")
    assert condition(body, "TLSReady")["status"] == "False" and condition(body, "TLSReady")["reason"] == "CertManagerMissing"
    assert body["status"]["phase"] == "Degraded"
    conf = kube.core.read_namespaced_config_map("broker-config", "customer-nocm").data["mosquitto.conf"].splitlines()
    assert "listener 1883" in conf and "listener 8883" not in conf, "plaintext keeps working; no listener without a certificate"


def _issue_like_cert_manager(kube: Cluster, namespace: str) -> dict[str, str]:
    """Play cert-manager: sign what Certificate broker-tls asks for with a private CA, into its Secret."""
    certificate = kube.custom.get_namespaced_custom_object("cert-manager.io", "v1", namespace, "certificates", "broker-tls")
    spec = certificate["spec"]
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in spec.get("dnsNames", [])]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.get("ipAddresses", [])]
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"])]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    files = {
        "tls.crt": server.public_bytes(serialization.Encoding.PEM).decode(),
        "tls.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM).decode(),
    }
    kube.core.create_namespaced_secret(namespace, {
        "metadata": {"name": spec["secretName"], "labels": spec["secretTemplate"]["labels"]},
        "type": "kubernetes.io/tls",
        "stringData": files,
    })
    return files


def _mosquitto_pub(port: int, device: DeviceCredentials, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", device.username, "-P", device.password, "-i", device.client_id,
         "-t", f"iot/{device.device_id}/telemetry", "-m", '{"v": 2}', "-q", "1", "-V", "mqttv311", *tls],
        capture_output=True, text=True, timeout=30,
    )


def test_tls_only_from_cert_manager_serves_devices_over_tls_and_nothing_else(
    kube: Cluster, operator: RunningOperator, broker_addresses: Path, service_root: Path
) -> None:
    kube.kubectl("apply", "--server-side", "-f", str(CERTIFICATE_CRD_FILE))
    kube.kubectl("wait", "--for=condition=Established", "crd/certificates.cert-manager.io", "--timeout=30s")
    # The instance that waited for cert-manager gets its Certificate as soon as the CRD appears.
    wait_for(lambda: condition(instance(kube, "nocm"), "TLSReady").get("reason") == "CertificatePending", timeout=60,
             what="nocm: TLSReady CertificatePending once the CRD exists")
    delete_instance(kube, "nocm")

    create_instance(kube, "tlsonly", plan="professional", broker={
        "externalHost": "127.0.0.1", "tls": {"issuerRef": {"name": "private-ca", "kind": "Issuer"}, "only": True}})
    namespace = "customer-tlsonly"
    certificate = wait_for(lambda: exists(lambda: kube.custom.get_namespaced_custom_object(
        "cert-manager.io", "v1", namespace, "certificates", "broker-tls")), timeout=60, what="Certificate broker-tls")
    assert certificate
    spec = kube.custom.get_namespaced_custom_object("cert-manager.io", "v1", namespace, "certificates", "broker-tls")["spec"]
    assert spec["issuerRef"] == {"name": "private-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert "broker.customer-tlsonly.svc" in spec["dnsNames"] and spec["ipAddresses"] == ["127.0.0.1"]
    assert condition(instance(kube, "tlsonly"), "TLSReady").get("reason") in ("CertificatePending", None)
    # TLS only from the start: credentials name mqtts:// even before the certificate exists.
    wait_endpoint(kube, "tlsonly", "mqtts://127.0.0.1:8883")

    files = _issue_like_cert_manager(kube, namespace)
    wait_for(lambda: condition(instance(kube, "tlsonly"), "TLSReady").get("status") == "True", timeout=60,
             what="tlsonly: TLSReady=True once the Secret exists")

    def tls_configuration() -> tuple[str, str, dict[str, str]] | None:
        found = generated_broker_files(kube.core, namespace)
        return found if found and "listener 8883" in found[0].splitlines() else None

    conf, seed, admin = wait_for(tls_configuration, timeout=60, what="the broker configuration with its TLS listener")
    lines = conf.splitlines()
    assert "listener 1883" not in lines and "listener 1884" in lines, "the device plaintext listener is closed"
    policies = {p.metadata.name: p for p in kube.networking.list_namespaced_network_policy(namespace).items}
    assert [p.port for p in policies["allow-mqtt-from-devices"].spec.ingress[0].ports] == [8883]
    internal = policies["allow-internal-mqtt-from-our-pods"].spec.ingress[0]
    assert [p.port for p in internal.ports] == [1884]
    assert sorted(peer.pod_selector.match_labels["app.kubernetes.io/component"] for peer in internal._from) == ["api", "ingest", "simulator"]

    broker = MosquittoBroker(root=Path(tempfile.mkdtemp(prefix="broker-tlsonly-", dir=service_root)))
    broker.write_generated(conf, seed, admin, device_tls={"tls.crt": files["tls.crt"], "tls.key": files["tls.key"]})
    broker.start()
    set_broker_address(broker_addresses, namespace, f"127.0.0.1:{broker.admin_port}")
    tenant = Tenant(kube=kube, name="tlsonly", broker=broker, addresses=broker_addresses)
    try:
        apply_fleet(kube, namespace, "field", ["meter-1"])
        tenant.wait_fleet("field", "True")
        device = wait_credentials(kube, namespace, "field", "mqtts://127.0.0.1:8883")["meter-1"]
        ca_file = broker.root / "ca.crt"
        ca_file.write_text(files["ca.crt"])
        ca_file.chmod(0o644)

        accepted = _mosquitto_pub(broker.tls_port, device, "--cafile", str(ca_file))
        assert accepted.returncode == 0, accepted.stderr
        # Plaintext to the TLS listener, an untrusted certificate, a wrong password: all refused ...
        assert _mosquitto_pub(broker.tls_port, device).returncode != 0
        other_ca = broker.root / "other-ca.crt"
        other_ca.write_text(_issue_like_cert_manager_ca_only())
        other_ca.chmod(0o644)
        assert _mosquitto_pub(broker.tls_port, device, "--cafile", str(other_ca)).returncode != 0
        wrong = DeviceCredentials(device.device_id, device.password + "x", device.host, device.port, device.scheme)
        assert _mosquitto_pub(broker.tls_port, wrong, "--cafile", str(ca_file)).returncode != 0
        # ... and the next good device message still goes through.
        assert _mosquitto_pub(broker.tls_port, device, "--cafile", str(ca_file)).returncode == 0
    finally:
        tenant.stop()

    # TLS removed: the Certificate is pruned, plaintext devices are back.
    patch_instance(kube, "tlsonly", {"spec": {"broker": {"tls": None, "externalHost": None}}})
    wait_for(lambda: not exists(lambda: kube.custom.get_namespaced_custom_object(
        "cert-manager.io", "v1", namespace, "certificates", "broker-tls")), timeout=60, what="Certificate broker-tls to be pruned")
    wait_endpoint(kube, "tlsonly", "mqtt://broker.customer-tlsonly.svc:1883")
    assert not condition(instance(kube, "tlsonly"), "TLSReady"), "no TLSReady without TLS"
    delete_instance(kube, "tlsonly")


def _issue_like_cert_manager_ca_only() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(key, hashes.SHA256()))
    return ca.public_bytes(serialization.Encoding.PEM).decode()


def test_a_tls_secret_with_bad_bytes_keeps_the_listener_closed_and_the_tenant_serving(kube: Cluster, operator: RunningOperator) -> None:
    create_instance(kube, "badtls", plan="starter", broker={"tls": {"secretName": "customer-cert"}})
    namespace = "customer-badtls"
    wait_for(lambda: condition(instance(kube, "badtls"), "TLSReady").get("reason") == "SecretMissing", timeout=60,
             what="badtls: TLSReady SecretMissing")
    kube.core.create_namespaced_secret(namespace, {"metadata": {"name": "customer-cert"},
                                                   "data": {"tls.crt": base64.b64encode(b"\xff\xfe not pem").decode(), "tls.key": "AAAA"}})
    wait_for(lambda: condition(instance(kube, "badtls"), "TLSReady").get("reason") == "SecretInvalid", timeout=60,
             what="badtls: TLSReady SecretInvalid")
    result = kube.kubectl("wait", "--for=condition=Ready", "cust/badtls", "--timeout=90s", check=False)
    assert result.returncode == 0, result.stderr
    conf = kube.core.read_namespaced_config_map("broker-config", namespace).data["mosquitto.conf"].splitlines()
    assert "listener 8883" not in conf, "Mosquitto never gets a certificate it would refuse to start with"
    delete_instance(kube, "badtls")


# ----------------------------------------------------------------------------------------------------
# API Ingress


def test_the_api_ingress_follows_the_spec_and_goes_when_removed(kube: Cluster, operator: RunningOperator) -> None:
    create_instance(kube, "web", plan="starter", api={"ingress": {
        "className": "nginx", "host": "api.web.example", "tls": {"issuerRef": {"name": "public-ca"}}}})
    namespace = "customer-web"

    def ingress() -> Any | None:
        return read_or_none(lambda: kube.networking.read_namespaced_ingress("api", namespace))

    found = wait_for(ingress, timeout=60, what="Ingress api")
    assert found.spec.ingress_class_name == "nginx"
    assert found.metadata.annotations["cert-manager.io/cluster-issuer"] == "public-ca"
    assert found.spec.tls[0].hosts == ["api.web.example"] and found.spec.tls[0].secret_name == "api-tls"
    backend = found.spec.rules[0].http.paths[0].backend.service
    assert found.spec.rules[0].host == "api.web.example" and backend.name == "api" and backend.port.name == "http"
    wait_for(lambda: instance(kube, "web").get("status", {}).get("endpoints", {}).get("api") == "https://api.web.example",
             timeout=60, what="web: status.endpoints.api https://api.web.example")
    api_policy = kube.networking.read_namespaced_network_policy("allow-api-from-ingress", namespace)
    assert api_policy.spec.ingress[0]._from[0].namespace_selector.match_labels == {"kubernetes.io/metadata.name": "ingress-nginx"}
    patch_instance(kube, "web", {"spec": {"api": {"ingress": None}}})
    wait_for(lambda: ingress() is None, timeout=60, what="Ingress api to be pruned")
    wait_for(lambda: instance(kube, "web")["status"]["endpoints"]["api"] == "http://api.customer-web.svc:8080", timeout=60,
             what="web: the in-cluster API endpoint again")
    delete_instance(kube, "web")


def test_the_production_example_is_accepted(kube: Cluster, crds: list[dict]) -> None:
    body = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "production" / "customerinstance-exposed.yaml").read_text())
    kube.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body, dry_run="All")
