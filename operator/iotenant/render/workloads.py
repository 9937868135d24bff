"""The customer's workloads: broker (Mosquitto 2), database (PostgreSQL), ingest and api."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from iotenant.broker_admin_tls import ADMIN_PORT, CA_CERT, CERT, KEY
from iotenant.broker_identities import ADMIN, API, INGEST, dynamic_security_config, service_identities
from iotenant.plans import BrokerLimits
from iotenant import tenant_database
from iotenant.render.guardrails import API_PORT, METRICS_PORT
from iotenant.render.inputs import StackInput
from iotenant.render.meta import Owner
from iotenant.render.pod_security import container_security_context, pod_security_context, resources

Manifest = dict[str, Any]

BROKER_UID = 1883
DATABASE_UID = 70
IOTENANT_UID = 10001
LICENCE_MOUNT = "/etc/iotenant/licence"
JWKS_MOUNT = "/etc/iotenant/keys"
API_TOKEN_MOUNT = "/etc/iotenant/api-token"

SMALL = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
DATABASE_DEFAULT = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def secret(owner: Owner, name: str, component: str | None, values: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(name, component),
        "type": "Opaque",
        "data": {key: _b64(value) for key, value in values.items()},
    }


def config_map(owner: Owner, name: str, component: str | None, values: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": owner.metadata(name, component), "data": values}


def licence_objects(stack: StackInput) -> list[Manifest]:
    """Secret ``licence`` (key licence.jwt) and ConfigMap ``licence-keys`` (key jwks.json)."""
    objects = [config_map(stack.owner, "licence-keys", None, {"jwks.json": json.dumps(stack.jwks, sort_keys=True)})]
    if stack.licence_token:
        objects.append(secret(stack.owner, "licence", None, {"licence.jwt": stack.licence_token}))
    return objects


def service(owner: Owner, name: str, component: str, ports: list[tuple[str, int]]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(name, component),
        "spec": {
            "type": "ClusterIP",
            "selector": owner.selector(component),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"} for port_name, port in ports],
        },
    }


def pod_template(
    owner: Owner,
    component: str,
    user_id: int,
    containers: list[Manifest],
    volumes: list[Manifest],
    init_containers: list[Manifest] | None = None,
    service_account: str | None = None,
) -> Manifest:
    spec: Manifest = {
        "securityContext": pod_security_context(user_id),
        "automountServiceAccountToken": service_account is not None,
        "enableServiceLinks": False,
        "containers": containers,
        "volumes": volumes,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"metadata": {"labels": owner.labels(component)}, "spec": spec}


def container(name: str, image: str, **fields: Any) -> Manifest:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": container_security_context(read_only_root=fields.pop("read_only_root", True)),
        **fields,
    }


def http_probe(path: str, port: str) -> Manifest:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}


def empty_dir(name: str) -> Manifest:
    return {"name": name, "emptyDir": {}}


def stateful_set(
    owner: Owner, name: str, component: str, replicas: int, template: Manifest, storage: str | None, mount_path_volume: str = "data"
) -> Manifest:
    """A StatefulSet: stable pod names, and a volume per pod when ``storage`` is given."""
    spec: Manifest = {
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": owner.selector(component)},
        "podManagementPolicy": "OrderedReady" if storage else "Parallel",
        "template": template,
    }
    if storage:
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain", "whenScaled": "Retain"}
        spec["volumeClaimTemplates"] = [
            {
                "metadata": {"name": mount_path_volume, "labels": owner.labels(component)},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
            }
        ]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": owner.metadata(name, component), "spec": spec}


def deployment(owner: Owner, name: str, component: str, replicas: int, template: Manifest) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.metadata(name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": owner.selector(component)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        },
    }


def mosquitto_conf(tls: bool, limits: BrokerLimits) -> str:
    """The broker configuration (tests run this very file, with local paths, on Debian's Mosquitto).

    Nothing is allowed without a dynamic-security role (``broker_identities``); ``limits`` come from
    the plan of the verified licence.
    """
    data_dir = "/mosquitto/data"
    lines = [
        "# Generated by iotenant-operator: edits are overwritten.",
        "allow_anonymous false",
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 60",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        # Every packet a client sends, and what the broker keeps for a client that is away or slow.
        f"max_packet_size {limits.maxPacketBytes}",
        f"max_queued_messages {limits.maxQueuedMessages}",
        f"max_queued_bytes {limits.maxQueuedBytes}",
        f"persistent_client_expiration {max(1, -(-limits.sessionExpirySeconds // 3600))}h",
        # Outgoing QoS 1 messages in flight per client; each client's own Receive Maximum still applies.
        # (0, unlimited, makes Mosquitto 2.1 log a quota warning for every message.)
        "max_inflight_messages 65534",
        "plugin /usr/lib/mosquitto_dynamic_security.so",
        f"plugin_opt_config_file {data_dir}/dynamic-security.json",
        "listener 1883",
        # The operator's admin identity: a client certificate from the tenant's private CA, no password.
        f"listener {ADMIN_PORT}",
        f"cafile {ADMIN_TLS_MOUNT}/{CA_CERT}",
        f"certfile {ADMIN_TLS_MOUNT}/{CERT}",
        f"keyfile {ADMIN_TLS_MOUNT}/{KEY}",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    if tls:
        lines += ["listener 8883", "certfile /mosquitto/tls/tls.crt", "keyfile /mosquitto/tls/tls.key"]
    return "\n".join(lines) + "\n"


# The broker's identities start from the operator's seed; afterwards they change live over $CONTROL.
# Readable by the broker's user alone: Mosquitto 2.0.20+ warns about (and later versions refuse) a wider mode.
DYNSEC_SEED = ("[ -f /mosquitto/data/dynamic-security.json ] || "
               "{ cp /seed/dynamic-security.json /mosquitto/data/ && chmod 0600 /mosquitto/data/dynamic-security.json; }")
MQTT_PASSWORD_MOUNT = "/etc/iotenant/mqtt"
ADMIN_TLS_MOUNT = "/mosquitto/admin-tls"
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
    ports = [{"name": "mqtt", "containerPort": 1883, "protocol": "TCP"}, {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    service_ports = [("mqtt", 1883), ("admin", ADMIN_PORT)]
    if tls_secret:
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret}})
        mounts.append({"name": "tls", "mountPath": "/mosquitto/tls", "readOnly": True})
        ports.append({"name": "mqtts", "containerPort": 8883, "protocol": "TCP"})
        service_ports.append(("mqtts", 8883))
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
        secret(owner, "broker-service-credentials", "broker",
               {"ingest-password": generated.ingest_broker_password, "api-password": generated.api_broker_password,
                "ingest-share-group": generated.ingest_share_group}),
        secret(owner, "broker-dynamic-security", "broker", {"dynamic-security.json": seed}),
        config_map(owner, "broker-config", "broker", {"mosquitto.conf": mosquitto_conf(bool(tls_secret), stack.broker_limits)}),
        stateful_set(owner, "broker", "broker", 1 if stack.serving else 0, template, spec.get("storage", "1Gi")),
        service(owner, "broker", "broker", service_ports),
    ]


def database(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("database", {})
    generated, namespace = stack.secrets, owner.namespace
    env = [
        {"name": "POSTGRES_USER", "valueFrom": {"secretKeyRef": {"name": "database-credentials", "key": "username"}}},
        {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "database-credentials", "key": "password"}}},
        {"name": "POSTGRES_DB", "valueFrom": {"secretKeyRef": {"name": "database-credentials", "key": "database"}}},
        {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
    ]
    ready = {"exec": {"command": ["pg_isready", "-U", tenant_database.SUPERUSER, "-d", tenant_database.NAME]}, "periodSeconds": 5}
    main = container(
        "postgres",
        stack.settings.images.database,
        env=env,
        ports=[{"name": "postgres", "containerPort": tenant_database.PORT, "protocol": "TCP"}],
        volumeMounts=[
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        resources=resources(spec.get("resources"), DATABASE_DEFAULT),
        readinessProbe=ready,
        livenessProbe={**ready, "periodSeconds": 20, "failureThreshold": 6},
    )
    template = pod_template(owner, "database", DATABASE_UID, [main], [empty_dir("run"), empty_dir("tmp")])
    credentials = {
        # The superuser: the image initialises the database with it; only ingest's init container uses it.
        "username": tenant_database.SUPERUSER, "password": generated.database_password, "database": tenant_database.NAME,
        "url": tenant_database.url(tenant_database.SUPERUSER, generated.database_password, namespace),
        # The roles the services use.
        "ingest-password": generated.database_ingest_password,
        "ingest-url": tenant_database.url(tenant_database.INGEST_ROLE, generated.database_ingest_password, namespace),
        "api-password": generated.database_api_password,
        "api-url": tenant_database.url(tenant_database.API_ROLE, generated.database_api_password, namespace),
    }
    return [
        secret(owner, "database-credentials", "database", credentials),
        stateful_set(owner, "database", "database", 1, template, spec.get("storage", "5Gi")),
        service(owner, "database", "database", [("postgres", tenant_database.PORT)]),
    ]


def _from_database_credentials(name: str, key: str) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": "database-credentials", "key": key}}}


def database_setup(stack: StackInput) -> Manifest:
    """Ingest's init container: the database's roles made or mended, then migrated, with the superuser."""
    return container(
        "database-setup",
        stack.settings.images.iotenant,
        args=["database-setup"],
        env=[
            _from_database_credentials("IOTENANT_DATABASE_ADMIN_URL", "url"),
            _from_database_credentials("IOTENANT_INGEST_DATABASE_PASSWORD", "ingest-password"),
            _from_database_credentials("IOTENANT_API_DATABASE_PASSWORD", "api-password"),
            {"name": "IOTENANT_LOG_FORMAT", "value": "json"},
        ],
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
        resources=resources(None, SMALL),
    )


def _iotenant_container(stack: StackInput, command: str, extra_ports: list[Manifest], resource_spec: Any) -> Manifest:
    namespace = stack.owner.namespace
    env = [
        _from_database_credentials("IOTENANT_DATABASE_URL", f"{command}-url"),
        {"name": "IOTENANT_MQTT_HOST", "value": f"broker.{namespace}.svc"},
        {"name": "IOTENANT_MQTT_PORT", "value": "1883"},
        {"name": "IOTENANT_CUSTOMER_ID", "value": str(stack.spec["customerId"])},
        {"name": "IOTENANT_LICENCE_FILE", "value": f"{LICENCE_MOUNT}/licence.jwt"},
        {"name": "IOTENANT_JWKS_FILE", "value": f"{JWKS_MOUNT}/jwks.json"},
        {"name": "IOTENANT_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "IOTENANT_LOG_FORMAT", "value": "json"},
        {"name": "IOTENANT_MQTT_USERNAME", "value": INGEST if command == "ingest" else API},
        {"name": "IOTENANT_MQTT_PASSWORD_FILE", "value": f"{MQTT_PASSWORD_MOUNT}/password"},
    ]
    env.append({"name": "IOTENANT_LICENCE_GRACE_SECONDS", "value": str(int(stack.settings.expiry_grace_seconds))})
    if command == "ingest":
        env.append({"name": "IOTENANT_INGEST_REPLICAS", "value": str(int(stack.spec.get("ingest", {}).get("replicas", 1)))})
        env.append({"name": "IOTENANT_SHARE_GROUP",
                    "valueFrom": {"secretKeyRef": {"name": "broker-service-credentials", "key": "ingest-share-group"}}})
    mounts = [
        {"name": "mqtt", "mountPath": MQTT_PASSWORD_MOUNT, "readOnly": True},
        {"name": "licence", "mountPath": LICENCE_MOUNT, "readOnly": True},
        {"name": "licence-keys", "mountPath": JWKS_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if command == "api":
        env.append({"name": "IOTENANT_API_TOKEN_FILE", "value": f"{API_TOKEN_MOUNT}/token"})
        env.append({"name": "IOTENANT_API_PORT", "value": str(API_PORT)})
        mounts.append({"name": "api-token", "mountPath": API_TOKEN_MOUNT, "readOnly": True})
    return container(
        command,
        stack.settings.images.iotenant,
        args=[command],
        env=env,
        ports=[*extra_ports, {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        volumeMounts=mounts,
        resources=resources(resource_spec, SMALL),
        readinessProbe=http_probe("/readyz", "metrics"),
        livenessProbe=http_probe("/healthz", "metrics"),
    )


def _iotenant_volumes(service: str) -> list[Manifest]:
    volumes = [
        {
            "name": "mqtt",
            "secret": {"secretName": "broker-service-credentials", "items": [{"key": f"{service}-password", "path": "password"}]},
        },
        {"name": "licence", "secret": {"secretName": "licence"}},
        {"name": "licence-keys", "configMap": {"name": "licence-keys"}},
        empty_dir("tmp"),
    ]
    if service == "api":
        volumes.append({"name": "api-token", "secret": {"secretName": "api-token"}})
    return volumes


def ingest(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("ingest", {})
    main = _iotenant_container(stack, "ingest", [], spec.get("resources"))
    template = pod_template(owner, "ingest", IOTENANT_UID, [main], _iotenant_volumes("ingest"), init_containers=[database_setup(stack)])
    replicas = int(spec.get("replicas", 1)) if stack.serving else 0
    # Stable pod names give each replica the same MQTT client id after a restart, so its persistent
    # session (and the messages queued for it in the shared subscription) is picked up again.
    return [
        stateful_set(owner, "ingest", "ingest", replicas, template, storage=None),
        service(owner, "ingest", "ingest", [("metrics", METRICS_PORT)]),
    ]


def api(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("api", {})
    http = [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}]
    main = _iotenant_container(stack, "api", http, spec.get("resources"))
    template = pod_template(owner, "api", IOTENANT_UID, [main], _iotenant_volumes("api"))
    replicas = int(spec.get("replicas", 1)) if stack.serving else 0
    return [
        secret(owner, "api-token", "api", {"token": stack.secrets.api_token}),
        deployment(owner, "api", "api", replicas, template),
        service(owner, "api", "api", [("http", API_PORT), ("metrics", METRICS_PORT)]),
    ]
