"""Broker identities: who may connect to a tenant's Mosquitto, and what a device needs to do so.

Devices authenticate as their device id and, by the broker's one ACL line
``pattern readwrite iot/%u/#``, may use only their own topics. Services (admin, ingest, api) get
explicit dynamic-security roles; their usernames contain a ``:``, which a device id cannot, so no
device can ever take a service's name. Passwords are stored as Mosquitto does: PBKDF2-SHA512,
12-byte salt, base64.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

ITERATIONS = 101

# Usernames of the service identities, and the dynamic-security roles they hold.
ADMIN = "iotenant:admin"
INGEST = "iotenant:ingest"
API = "iotenant:api"
ADMIN_ROLE, INGEST_ROLE, API_ROLE = "admin", "ingest", "api"

# Topics are the fixed data-plane layout: iot/<device-id>/telemetry|hello|status|command|command/ack.
SERVICE_ROLES: dict[str, list[dict[str, Any]]] = {
    INGEST_ROLE: [
        {"acltype": "subscribePattern", "topic": "$share/+/iot/+/#", "allow": True},
        {"acltype": "subscribePattern", "topic": "iot/+/#", "allow": True},
        {"acltype": "publishClientReceive", "topic": "iot/#", "allow": True},
    ],
    API_ROLE: [
        {"acltype": "publishClientSend", "topic": "iot/+/command", "allow": True},
    ],
}
ADMIN_ACLS = [
    {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "allow": True},
    {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": True},
    {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "allow": True},
]

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def new_password() -> str:
    """128 random bits, URL-safe (it goes into a credentials URL unescaped)."""
    return secrets.token_urlsafe(16)


def stable_salt(username: str, password: str) -> bytes:
    """A per-identity salt that stays the same for the same password, so rendering is repeatable."""
    return hmac.new(password.encode(), username.encode(), hashlib.sha256).digest()[:12]


def password_entry(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> dict[str, Any]:
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(), "iterations": iterations}


def password_fingerprint(password: str) -> str:
    """A short, non-reversible mark of a password: the broker keeps it (in the client's text name) so a
    reconcile can tell whether the broker holds the current password without reading any secret back."""
    return hashlib.sha256(password.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Identity:
    """A broker client: its username (a device id or a service name), password and optional role.

    ``label`` says what the identity is for (``fleet/<name>`` or ``service``); with the password's
    fingerprint it becomes the client's text name in the broker.
    """

    username: str
    password: str
    role: str | None = None
    label: str = "service"

    @cached_property
    def text_name(self) -> str:
        return f"{self.label} {password_fingerprint(self.password)}"


def service_identities(ingest_password: str, api_password: str) -> list[Identity]:
    return [Identity(INGEST, ingest_password, INGEST_ROLE), Identity(API, api_password, API_ROLE)]


def dynamic_security_config(admin_password: str, identities: list[Identity]) -> dict[str, Any]:
    """A complete dynamic-security document: the admin, service roles, and the given identities."""
    admin_entry = password_entry(admin_password, stable_salt(ADMIN, admin_password))
    clients = [{"username": ADMIN, "textname": "iotenant operator", **admin_entry, "roles": [{"rolename": ADMIN_ROLE}]}]
    for identity in identities:
        entry = password_entry(identity.password, stable_salt(identity.username, identity.password))
        client: dict[str, Any] = {"username": identity.username, "textname": identity.text_name, **entry}
        client["roles"] = [{"rolename": identity.role}] if identity.role else []
        clients.append(client)
    roles = [{"rolename": ADMIN_ROLE, "acls": ADMIN_ACLS}] + [
        {"rolename": name, "acls": acls} for name, acls in SERVICE_ROLES.items()
    ]
    return {
        # Nothing is allowed by default. A device's own topics are granted by the ACL file's pattern line;
        # Mosquitto may acknowledge a device's subscription to another device's topics, but delivers
        # it nothing from them: every delivery is checked against "receive" access.
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


@dataclass(frozen=True)
class DeviceCredentials:
    """What one device needs to connect; stored as a URL under its id in ``devicefleet-<name>-credentials``.

    ``mqtt://<device id>:<password>@<host>:<port>``: the username is the device id, the MQTT client id
    must be the device id too, and the device may use the topics under ``iot/<device id>/``. A URL
    keeps a 10,000-device fleet well inside a Secret's 1 MiB.
    """

    device_id: str
    password: str
    host: str
    port: int

    @property
    def username(self) -> str:
        return self.device_id

    @property
    def client_id(self) -> str:
        return self.device_id

    @property
    def topic_prefix(self) -> str:
        return f"iot/{self.device_id}/"

    def url(self) -> str:
        return f"mqtt://{self.device_id}:{self.password}@{self.host}:{self.port}"

    @classmethod
    def from_url(cls, value: str) -> "DeviceCredentials":
        parts = urlsplit(value.strip())
        if parts.scheme != "mqtt" or not parts.username or not parts.password or not parts.hostname:
            raise ValueError("device credentials must look like mqtt://<device id>:<password>@<host>:<port>")
        if not DEVICE_ID.match(parts.username):
            raise ValueError(f"{parts.username!r} is not a device id")
        return cls(device_id=parts.username, password=parts.password, host=parts.hostname, port=parts.port or 1883)
