"""The tenant's broker: Mosquitto 2 with dynamic security, its admin listener and its Secrets."""

from __future__ import annotations

import hashlib
import json

from iotenant.broker.admin_tls import ADMIN_PORT
from iotenant.broker.config import ADMIN_TLS_MOUNT, DYNSEC_SEED, mosquitto_conf
from iotenant.broker.identities import ADMIN, dynamic_security_config, service_identities
from iotenant.render.builders import SMALL, Manifest, config_map, container, empty_dir, pod_template, resources, secret, service, stateful_set
from iotenant.render.contract import BROKER_SERVICE_CREDENTIALS, MQTT_PORT, MQTTS_PORT, SHARE_GROUP_KEY
from iotenant.render.inputs import StackInput

BROKER_UID = 1883
# The broker restarts when its admin listener's certificates change (they are read at start only).
ADMIN_TLS_ANNOTATION = "iotenant.io/admin-tls"


def broker(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("broker", {})
    tls_secret = (spec.get("tls") or {}).get("secretName")
    volumes = [
        {"name": "config", "configMap": {"name": "broker-config"}},
        empty_dir("tmp"),
    ]
    volumes.append({"name": "admin-tls", "secret": {"secretName": "broker-admin-listener"}})
    mounts = [{"name": "config", "mountPath": "/mosquitto/config", "readOnly": True}, {"name": "data", "mountPath": "/mosquitto/data"},
              {"name": "admin-tls", "mountPath": ADMIN_TLS_MOUNT, "readOnly": True}]
    ports = [{"name": "mqtt", "containerPort": MQTT_PORT, "protocol": "TCP"}, {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    service_ports = [("mqtt", MQTT_PORT), ("admin", ADMIN_PORT)]
    if tls_secret:
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret}})
        mounts.append({"name": "tls", "mountPath": "/mosquitto/tls", "readOnly": True})
        ports.append({"name": "mqtts", "containerPort": MQTTS_PORT, "protocol": "TCP"})
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
        resources=resources(spec.get("resources"), SMALL),
        readinessProbe={"tcpSocket": {"port": "mqtt"}, "periodSeconds": 5},
        livenessProbe={"tcpSocket": {"port": "mqtt"}, "periodSeconds": 20},
    )
    template = pod_template(owner, "broker", BROKER_UID, [main], volumes, init_containers=[init])
    generated = stack.secrets
    template["metadata"].setdefault("annotations", {})[ADMIN_TLS_ANNOTATION] = hashlib.sha256(
        generated.broker_admin_tls.ca_cert.encode()).hexdigest()[:16]
    services = service_identities(generated.ingest_broker_password, generated.api_broker_password)
    seed = json.dumps(dynamic_security_config(services, generated.ingest_share_group), sort_keys=True)
    return [
        secret(owner, "broker-admin", "broker", {"username": ADMIN, **generated.broker_admin_tls.client_secret()}),
        secret(owner, "broker-admin-listener", "broker", generated.broker_admin_tls.server_secret()),
        secret(owner, BROKER_SERVICE_CREDENTIALS, "broker",
               {"ingest-password": generated.ingest_broker_password, "api-password": generated.api_broker_password,
                SHARE_GROUP_KEY: generated.ingest_share_group}),
        secret(owner, "broker-dynamic-security", "broker", {"dynamic-security.json": seed}),
        config_map(owner, "broker-config", "broker", {"mosquitto.conf": mosquitto_conf(bool(tls_secret), stack.broker_limits)}),
        stateful_set(owner, "broker", "broker", 1 if stack.serving else 0, template, spec.get("storage", "1Gi"),
                     storage_class=stack.storage_classes.get("broker")),
        service(owner, "broker", "broker", service_ports),
    ]
