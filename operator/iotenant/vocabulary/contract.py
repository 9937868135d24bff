"""What connects a rendered pod to the service it runs: ports, mounted files, Secret names and keys,
and the environment variables that set the services' flags. One fact each, read by the renderers
and by the workloads' command lines alike (this module imports nothing).
"""

from __future__ import annotations

# Ports.
MQTT_PORT = 1883
MQTTS_PORT = 8883
# With spec.broker.tls.only the device plaintext listener closes; ingest, api and simulators use this
# one, which the namespace's NetworkPolicies open to their pods alone.
MQTT_INTERNAL_PORT = 1884
API_PORT = 8080
METRICS_PORT = 9100
# How long the kubelet waits for /healthz and /readyz: a service answers within it, ready or not.
PROBE_TIMEOUT_SECONDS = 2

# Objects of the customer namespace that the services read, and their keys.
LICENCE_SECRET, LICENCE_KEY = "licence", "licence.jwt"
JWKS_CONFIG_MAP, JWKS_KEY = "licence-keys", "jwks.json"
API_TOKEN_SECRET, API_TOKEN_KEY = "api-token", "token"
DATABASE_CREDENTIALS = "database-credentials"
BROKER_SERVICE_CREDENTIALS = "broker-service-credentials"
# The broker's TLS certificate when cert-manager issues it (Certificate and Secret of this name).
BROKER_TLS_SECRET = "broker-tls"
SHARE_GROUP_KEY = "ingest-share-group"

# Where they are mounted, and the files the services' flags name by default.
LICENCE_MOUNT = "/etc/iotenant/licence"
JWKS_MOUNT = "/etc/iotenant/keys"
API_TOKEN_MOUNT = "/etc/iotenant/api-token"
MQTT_PASSWORD_MOUNT = "/etc/iotenant/mqtt"
DEVICE_CREDENTIALS_MOUNT = "/etc/iotenant/devices"
LICENCE_FILE = f"{LICENCE_MOUNT}/{LICENCE_KEY}"
JWKS_FILE = f"{JWKS_MOUNT}/{JWKS_KEY}"
API_TOKEN_FILE = f"{API_TOKEN_MOUNT}/{API_TOKEN_KEY}"
MQTT_PASSWORD_FILE = f"{MQTT_PASSWORD_MOUNT}/password"


class Env:
    """The environment variables of the services' flags that the operator sets in their pods."""

    DATABASE_URL = "IOTENANT_DATABASE_URL"
    DATABASE_ADMIN_URL = "IOTENANT_DATABASE_ADMIN_URL"
    INGEST_DATABASE_PASSWORD = "IOTENANT_INGEST_DATABASE_PASSWORD"
    API_DATABASE_PASSWORD = "IOTENANT_API_DATABASE_PASSWORD"
    MQTT_HOST = "IOTENANT_MQTT_HOST"
    MQTT_PORT = "IOTENANT_MQTT_PORT"
    MQTT_SCHEME = "IOTENANT_MQTT_SCHEME"
    MQTT_USERNAME = "IOTENANT_MQTT_USERNAME"
    MQTT_PASSWORD_FILE = "IOTENANT_MQTT_PASSWORD_FILE"
    CUSTOMER_ID = "IOTENANT_CUSTOMER_ID"
    LICENCE_FILE = "IOTENANT_LICENCE_FILE"
    JWKS_FILE = "IOTENANT_JWKS_FILE"
    LICENCE_GRACE_SECONDS = "IOTENANT_LICENCE_GRACE_SECONDS"
    METRICS_PORT = "IOTENANT_METRICS_PORT"
    LOG_FORMAT = "IOTENANT_LOG_FORMAT"
    INGEST_REPLICAS = "IOTENANT_INGEST_REPLICAS"
    SHARE_GROUP = "IOTENANT_SHARE_GROUP"
    API_TOKEN_FILE = "IOTENANT_API_TOKEN_FILE"
    API_PORT = "IOTENANT_API_PORT"
    CREDENTIALS_DIR = "IOTENANT_CREDENTIALS_DIR"
    TELEMETRY_INTERVAL_SECONDS = "IOTENANT_TELEMETRY_INTERVAL_SECONDS"


def broker_host(namespace: str) -> str:
    """The broker Service's name inside the cluster."""
    return f"broker.{namespace}.svc"
