"""The tenant's ingest and api: our image, configured through the contract with their command lines."""

from __future__ import annotations

from typing import Any

from iotenant.mosquitto.identities import API, INGEST
from iotenant.render import broker as broker_part, database as database_part
from iotenant.render.builders import (
    SMALL, Manifest, container, deployment, empty_dir, http_probe, pod_template, resources, secret, service, spread_over_nodes,
    stateful_set,
)
from iotenant.render.cert_manager import ingress_annotations
from iotenant.render.inputs import StackInput
from iotenant.render.stack_part import Peers, StackPart, WayIn, Workload
from iotenant.vocabulary.contract import (
    API_PORT, API_TOKEN_FILE, API_TOKEN_KEY, API_TOKEN_MOUNT, API_TOKEN_SECRET, BROKER_SERVICE_CREDENTIALS, DATABASE_CREDENTIALS,
    JWKS_CONFIG_MAP, JWKS_FILE, JWKS_MOUNT, LICENCE_FILE, LICENCE_MOUNT, LICENCE_SECRET, METRICS_PORT, MQTT_INTERNAL_PORT,
    MQTT_PASSWORD_FILE, MQTT_PASSWORD_MOUNT, MQTT_PORT, SHARE_GROUP_KEY, Env, broker_host,
)
from iotenant.vocabulary.meta import Component, Owner

IOTENANT_UID = 10001
INGEST_WORKLOAD = Workload("StatefulSet", "ingest")
API_WORKLOAD = Workload("Deployment", "api")


def _from_database_credentials(name: str, key: str) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": DATABASE_CREDENTIALS, "key": key}}}


def database_setup(stack: StackInput) -> Manifest:
    """Ingest's init container: the database's roles made or mended, then migrated, with the superuser."""
    return container(
        "database-setup",
        stack.settings.images.iotenant,
        args=["database-setup"],
        env=[
            _from_database_credentials(Env.DATABASE_ADMIN_URL, "url"),
            _from_database_credentials(Env.INGEST_DATABASE_PASSWORD, "ingest-password"),
            _from_database_credentials(Env.API_DATABASE_PASSWORD, "api-password"),
            {"name": Env.LOG_FORMAT, "value": "json"},
        ],
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
        resources=resources(None, SMALL),
    )


def _iotenant_container(stack: StackInput, command: str, extra_ports: list[Manifest], resource_spec: Any) -> Manifest:
    namespace = stack.owner.namespace
    env = [
        _from_database_credentials(Env.DATABASE_URL, f"{command}-url"),
        {"name": Env.MQTT_HOST, "value": broker_host(namespace)},
        {"name": Env.MQTT_PORT, "value": str(MQTT_INTERNAL_PORT if stack.exposure.tls_only else MQTT_PORT)},
        {"name": Env.CUSTOMER_ID, "value": str(stack.spec["customerId"])},
        {"name": Env.LICENCE_FILE, "value": LICENCE_FILE},
        {"name": Env.JWKS_FILE, "value": JWKS_FILE},
        {"name": Env.METRICS_PORT, "value": str(METRICS_PORT)},
        {"name": Env.LOG_FORMAT, "value": "json"},
        {"name": Env.MQTT_USERNAME, "value": INGEST if command == "ingest" else API},
        {"name": Env.MQTT_PASSWORD_FILE, "value": MQTT_PASSWORD_FILE},
    ]
    env.append({"name": Env.LICENCE_GRACE_SECONDS, "value": str(int(stack.settings.expiry_grace_seconds))})
    if command == "ingest":
        env.append({"name": Env.INGEST_REPLICAS, "value": str(int(stack.spec.get("ingest", {}).get("replicas", 1)))})
        env.append({"name": Env.SHARE_GROUP,
                    "valueFrom": {"secretKeyRef": {"name": BROKER_SERVICE_CREDENTIALS, "key": SHARE_GROUP_KEY}}})
    mounts = [
        {"name": "mqtt", "mountPath": MQTT_PASSWORD_MOUNT, "readOnly": True},
        {"name": "licence", "mountPath": LICENCE_MOUNT, "readOnly": True},
        {"name": JWKS_CONFIG_MAP, "mountPath": JWKS_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if command == "api":
        env.append({"name": Env.API_TOKEN_FILE, "value": API_TOKEN_FILE})
        env.append({"name": Env.API_PORT, "value": str(API_PORT)})
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
            "secret": {"secretName": BROKER_SERVICE_CREDENTIALS, "items": [{"key": f"{service}-password", "path": "password"}]},
        },
        {"name": "licence", "secret": {"secretName": LICENCE_SECRET}},
        {"name": JWKS_CONFIG_MAP, "configMap": {"name": JWKS_CONFIG_MAP}},
        empty_dir("tmp"),
    ]
    if service == "api":
        volumes.append({"name": "api-token", "secret": {"secretName": API_TOKEN_SECRET}})
    return volumes


def ingest(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("ingest", {})
    main = _iotenant_container(stack, "ingest", [], spec.get("resources"))
    template = pod_template(owner, Component.INGEST, IOTENANT_UID, [main], _iotenant_volumes("ingest"), init_containers=[database_setup(stack)],
                            pull_secrets=stack.settings.image_pull_secrets)
    replicas = int(spec.get("replicas", 1)) if stack.serving else 0
    if replicas > 1:
        template["spec"]["topologySpreadConstraints"] = spread_over_nodes(owner, Component.INGEST)
    # Stable pod names give each replica the same MQTT client id after a restart, so its persistent
    # session (and the messages queued for it in the shared subscription) is picked up again.
    return [
        stateful_set(owner, INGEST_WORKLOAD.name, Component.INGEST, replicas, template, storage=None),
        service(owner, "ingest", Component.INGEST, [("metrics", METRICS_PORT)]),
    ]


def api(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("api", {})
    http = [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}]
    main = _iotenant_container(stack, "api", http, spec.get("resources"))
    template = pod_template(owner, Component.API, IOTENANT_UID, [main], _iotenant_volumes("api"), pull_secrets=stack.settings.image_pull_secrets)
    replicas = int(spec.get("replicas", 1)) if stack.serving else 0
    if replicas > 1:
        template["spec"]["topologySpreadConstraints"] = spread_over_nodes(owner, Component.API)
    objects = [
        secret(owner, API_TOKEN_SECRET, Component.API, {API_TOKEN_KEY: stack.secrets.api_token}),
        deployment(owner, API_WORKLOAD.name, Component.API, replicas, template),
        service(owner, "api", Component.API, [("http", API_PORT), ("metrics", METRICS_PORT)]),
    ]
    if spec.get("ingress"):
        objects.append(api_ingress(owner, spec["ingress"]))
    return objects


API_TLS_SECRET = "api-tls"


def api_ingress(owner: Owner, ingress: dict[str, Any]) -> Manifest:
    """``spec.api.ingress``: the API's HTTP port on ``host``, with TLS from a Secret or a cert-manager issuer."""
    host = str(ingress["host"])
    metadata = owner.metadata("api", Component.API)
    spec: Manifest = {
        "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
        ]}}],
    }
    if ingress.get("className"):
        spec["ingressClassName"] = ingress["className"]
    tls = ingress.get("tls") or {}
    if tls:
        spec["tls"] = [{"hosts": [host], "secretName": tls.get("secretName") or API_TLS_SECRET}]
        if tls.get("issuerRef"):
            metadata["annotations"] = ingress_annotations(tls["issuerRef"])
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def api_url(namespace: str, api_spec: dict[str, Any]) -> str:
    """Where the customer's applications reach the API: the Ingress host, else the in-cluster Service."""
    ingress = api_spec.get("ingress") or {}
    if ingress:
        return f"{'https' if ingress.get('tls') else 'http'}://{ingress['host']}"
    return f"http://api.{namespace}.svc:{API_PORT}"


INGEST_PART = StackPart(
    name="ingest",
    component=Component.INGEST,
    render=ingest,
    workload=INGEST_WORKLOAD,
    required=True,
    connects_to=(database_part.CLIENTS_WAY, broker_part.INTERNAL_MQTT),
)
API_PART = StackPart(
    name="api",
    component=Component.API,
    render=api,
    workload=API_WORKLOAD,
    required=True,
    ways_in=(WayIn("allow-api-from-ingress", (API_PORT,), Peers(namespaces=("ingress_namespace",))),),
    connects_to=(database_part.CLIENTS_WAY, broker_part.INTERNAL_MQTT),
)
