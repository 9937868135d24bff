"""The tenant's broker: Mosquitto 2 with dynamic security, its admin listener and its Secrets."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from iotenant.mosquitto.admin_tls import ADMIN_PORT
from iotenant.mosquitto.config import ADMIN_TLS_MOUNT, DYNSEC_SEED, TLS_MOUNT, Listeners, mosquitto_conf
from iotenant.mosquitto.device_endpoint import DEVICE_SERVICE
from iotenant.mosquitto.identities import ADMIN, dynamic_security_config, service_identities
from iotenant.render.builders import (
    SMALL, Manifest, config_map, container, empty_dir, pod_template, resources, secret, service, stateful_set,
)
from iotenant.render.cert_manager import CERTIFICATE_API_VERSION, issuer_ref
from iotenant.render.inputs import StackInput
from iotenant.render.stack_part import Peers, StackPart, Volume, WayIn, Workload
from iotenant.vocabulary.contract import (
    BROKER_SERVICE_CREDENTIALS, BROKER_TLS_SECRET, MQTT_INTERNAL_PORT, MQTT_PORT, MQTTS_PORT, SHARE_GROUP_KEY,
)
from iotenant.vocabulary.meta import Component

BROKER_UID = 1883
WORKLOAD = Workload("StatefulSet", "broker")
# Ingest, api and simulators connect here when devices take TLS only.
INTERNAL_MQTT = "allow-internal-mqtt-from-our-pods"
# The broker restarts when its listeners' certificates change (they are read at start only): the admin
# listener's, and the device listener's when cert-manager renews it.
ADMIN_TLS_ANNOTATION = "iotenant.io/admin-tls"
DEVICE_TLS_ANNOTATION = "iotenant.io/device-tls"


def broker_tls_secret(broker_spec: dict[str, Any]) -> str | None:
    """The Secret holding the broker's certificate: the customer's own, or the one cert-manager issues."""
    tls = broker_spec.get("tls") or {}
    return tls.get("secretName") or (BROKER_TLS_SECRET if tls.get("issuerRef") else None)


def broker(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("broker", {})
    tls_secret = broker_tls_secret(spec) if stack.broker_tls_hash else None
    broker_resources = resources(spec.get("resources"), SMALL)
    template, service_ports = _broker_pod(stack, tls_secret, broker_resources)
    objects = [
        *_broker_files(stack, tls_secret, broker_resources),
        stateful_set(owner, WORKLOAD.name, Component.BROKER, 1 if stack.serving else 0, template, spec.get("storage", "1Gi"),
                     storage_class=stack.storage_classes.get(WORKLOAD.name)),
        service(owner, "broker", Component.BROKER, service_ports),
    ]
    if stack.exposure.exposed:
        objects.append(device_service(stack))
    if (spec.get("tls") or {}).get("issuerRef") and stack.certificate_crd_present:
        objects.append(certificate(stack))
    return objects


def _broker_pod(stack: StackInput, tls_secret: str | None, broker_resources: Manifest) -> tuple[Manifest, list[tuple[str, int]]]:
    """The broker's pod template (the seed's init container, Mosquitto, its listeners and mounts) and the
    ports of its Service."""
    owner, spec, exposure = stack.owner, stack.spec.get("broker", {}), stack.exposure
    volumes = [
        {"name": "config", "configMap": {"name": "broker-config"}},
        empty_dir("tmp"),
    ]
    volumes.append({"name": "admin-tls", "secret": {"secretName": "broker-admin-listener"}})
    mounts = [{"name": "config", "mountPath": "/mosquitto/config", "readOnly": True}, {"name": "data", "mountPath": "/mosquitto/data"},
              {"name": "admin-tls", "mountPath": ADMIN_TLS_MOUNT, "readOnly": True}]
    # With TLS only, the plaintext listener is the internal one (ingest, api, simulators), never the devices'.
    plaintext = ("mqtt-internal", MQTT_INTERNAL_PORT) if exposure.tls_only else ("mqtt", MQTT_PORT)
    ports = [{"name": plaintext[0], "containerPort": plaintext[1], "protocol": "TCP"},
             {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    service_ports = [plaintext, ("admin", ADMIN_PORT)]
    if tls_secret:
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret}})
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
        ports.append({"name": "mqtts", "containerPort": MQTTS_PORT, "protocol": "TCP"})
    if broker_tls_secret(spec):
        service_ports.append(("mqtts", MQTTS_PORT))
    volumes.append({"name": "seed", "secret": {"secretName": "broker-dynamic-security"}})
    init = container(
        "seed-dynamic-security",
        stack.settings.images.broker,
        command=["/bin/sh", "-c", DYNSEC_SEED],
        volumeMounts=[{"name": "data", "mountPath": "/mosquitto/data"}, {"name": "seed", "mountPath": "/seed", "readOnly": True}],
        resources=resources(None, SMALL),
    )
    main = container(
        "mosquitto",
        stack.settings.images.broker,
        command=["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"],
        # Mosquitto 2.1 refuses files behind symlinks, and every ConfigMap and Secret mount is one; 2.0 ignores this.
        env=[{"name": "MOSQUITTO_UNSAFE_ALLOW_SYMLINKS", "value": "1"}],
        ports=ports,
        volumeMounts=mounts,
        resources=broker_resources,
        readinessProbe={"tcpSocket": {"port": plaintext[0]}, "periodSeconds": 5},
        livenessProbe={"tcpSocket": {"port": plaintext[0]}, "periodSeconds": 20},
    )
    template = pod_template(owner, Component.BROKER, BROKER_UID, [main], volumes, init_containers=[init],
                            pull_secrets=stack.settings.image_pull_secrets)
    annotations = template["metadata"].setdefault("annotations", {})
    annotations[ADMIN_TLS_ANNOTATION] = hashlib.sha256(stack.secrets.broker_admin_tls.ca_cert.encode()).hexdigest()[:16]
    if tls_secret:
        annotations[DEVICE_TLS_ANNOTATION] = str(stack.broker_tls_hash)
    return template, service_ports


def _broker_files(stack: StackInput, tls_secret: str | None, broker_resources: Manifest) -> list[Manifest]:
    """What the broker reads: the admin listener's certificates, the services' credentials, the identity
    seed and mosquitto.conf (limits from the plan, the heap from the container's memory limit)."""
    owner, generated = stack.owner, stack.secrets
    services = service_identities(generated.ingest_broker_password, generated.api_broker_password)
    seed = json.dumps(dynamic_security_config(services, generated.ingest_share_group), sort_keys=True)
    listeners = Listeners(device_plaintext=not stack.exposure.tls_only, tls=bool(tls_secret))
    return [
        secret(owner, "broker-admin", Component.BROKER, {"username": ADMIN, **generated.broker_admin_tls.client_secret()}),
        secret(owner, "broker-admin-listener", Component.BROKER, generated.broker_admin_tls.server_secret()),
        secret(owner, BROKER_SERVICE_CREDENTIALS, Component.BROKER,
               {"ingest-password": generated.ingest_broker_password, "api-password": generated.api_broker_password,
                SHARE_GROUP_KEY: generated.ingest_share_group}),
        secret(owner, "broker-dynamic-security", Component.BROKER, {"dynamic-security.json": seed}),
        config_map(owner, "broker-config", Component.BROKER,
                   {"mosquitto.conf": mosquitto_conf(listeners, stack.broker_limits, memory_limit_bytes(broker_resources))}),
    ]


def memory_limit_bytes(container_resources: dict[str, Any]) -> int | None:
    """A container's memory limit in bytes, or None when it has none."""
    limit = (container_resources.get("limits") or {}).get("memory")
    return int(parse_quantity(limit)) if limit else None


def device_service(stack: StackInput) -> Manifest:
    """``broker-devices``: the device ports alone, as the spec exposes them (NodePort or LoadBalancer)."""
    spec, exposure = stack.spec.get("broker") or {}, stack.exposure
    service_spec = spec.get("service") or {}
    ports = [] if exposure.tls_only else [("mqtt", MQTT_PORT)]
    if broker_tls_secret(spec):
        ports.append(("mqtts", MQTTS_PORT))
    manifest = service(stack.owner, DEVICE_SERVICE, Component.BROKER, ports)
    manifest["spec"]["type"] = exposure.service_type
    if service_spec.get("annotations"):
        manifest["metadata"]["annotations"] = dict(service_spec["annotations"])
    if exposure.service_type == "LoadBalancer" and service_spec.get("loadBalancerSourceRanges"):
        manifest["spec"]["loadBalancerSourceRanges"] = list(service_spec["loadBalancerSourceRanges"])
    return manifest


def certificate_names(stack: StackInput) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the broker's certificate: its in-cluster names, then where devices reach it."""
    namespace = stack.owner.namespace
    dns = [f"broker.{namespace}.svc", f"broker.{namespace}.svc.cluster.local"]
    ips: list[str] = []
    endpoint = stack.device_endpoint
    for host in (stack.exposure.external_host, endpoint.host if endpoint and endpoint.assigned else None):
        if not host:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host not in dns:
                dns.append(host)
        else:
            if host not in ips:
                ips.append(host)
    return dns, ips


def certificate(stack: StackInput) -> Manifest:
    """A cert-manager Certificate for the broker; cert-manager writes Secret broker-tls, labelled as ours
    so the reconcile sees it arrive and starts the TLS listener."""
    dns, ips = certificate_names(stack)
    spec: Manifest = {
        "secretName": BROKER_TLS_SECRET,
        "secretTemplate": {"labels": stack.owner.labels(Component.BROKER)},
        "issuerRef": issuer_ref((stack.spec.get("broker") or {})["tls"]["issuerRef"]),
        "commonName": dns[0],
        "dnsNames": dns,
        "duration": "2160h",
        "renewBefore": "720h",
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "usages": ["server auth", "digital signature"],
    }
    if ips:
        spec["ipAddresses"] = ips
    return {
        "apiVersion": CERTIFICATE_API_VERSION,
        "kind": "Certificate",
        "metadata": stack.owner.metadata(BROKER_TLS_SECRET, Component.BROKER),
        "spec": spec,
    }


def _tls_only(stack: StackInput) -> bool:
    return stack.exposure.tls_only


def _plaintext_too(stack: StackInput) -> bool:
    return not stack.exposure.tls_only


PART = StackPart(
    name="broker",
    component=Component.BROKER,
    render=broker,
    workload=WORKLOAD,
    required=True,
    volume=Volume(section="broker"),
    ways_in=(
        WayIn("allow-mqtt-from-devices", (MQTT_PORT, MQTTS_PORT), Peers(anyone=True), when=_plaintext_too),
        WayIn("allow-mqtt-from-devices", (MQTTS_PORT,), Peers(anyone=True), when=_tls_only),
        WayIn("allow-broker-admin-from-operator", (ADMIN_PORT,), Peers(namespaces=("namespace",))),
        WayIn(INTERNAL_MQTT, (MQTT_INTERNAL_PORT,), Peers(clients=True), when=_tls_only),
    ),
)
