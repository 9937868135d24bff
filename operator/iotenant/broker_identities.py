"""Broker identities in Mosquitto's dynamic-security format.

Devices authenticate as their device id and, by the broker's one ACL line
``pattern readwrite iot/%u/#``, may use only their own topics. Services (ingest, api) get explicit
roles. Passwords are stored as Mosquitto does: PBKDF2-SHA512, 12-byte salt, base64.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

ITERATIONS = 101
ADMIN = "admin"
INGEST = "ingest"
API = "api"

# Topics are the fixed data-plane layout: iot/<device-id>/telemetry|hello|status|command|command/ack.
SERVICE_ROLES: dict[str, list[dict[str, Any]]] = {
    INGEST: [
        {"acltype": "subscribePattern", "topic": "$share/+/iot/+/#", "allow": True},
        {"acltype": "subscribePattern", "topic": "iot/+/#", "allow": True},
    ],
    API: [
        {"acltype": "publishClientSend", "topic": "iot/+/command", "allow": True},
    ],
}
ADMIN_ACLS = [
    {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "allow": True},
    {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": True},
    {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "allow": True},
]


def stable_salt(username: str, password: str) -> bytes:
    """A per-identity salt that stays the same for the same password, so rendering is repeatable."""
    return hmac.new(password.encode(), username.encode(), hashlib.sha256).digest()[:12]


def password_entry(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> dict[str, Any]:
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(), "iterations": iterations}


@dataclass(frozen=True)
class Identity:
    username: str
    password: str
    role: str | None = None


def dynamic_security_config(admin_password: str, identities: list[Identity]) -> dict[str, Any]:
    """A complete dynamic-security document: the admin, service roles, and the given identities."""
    admin_entry = password_entry(admin_password, stable_salt(ADMIN, admin_password))
    clients = [{"username": ADMIN, "textName": "iotenant operator", **admin_entry, "roles": [{"rolename": ADMIN}]}]
    for identity in identities:
        entry = password_entry(identity.password, stable_salt(identity.username, identity.password))
        client: dict[str, Any] = {"username": identity.username, **entry}
        client["roles"] = [{"rolename": identity.role}] if identity.role else []
        clients.append(client)
    roles = [{"rolename": ADMIN, "acls": ADMIN_ACLS}] + [
        {"rolename": name, "acls": acls} for name, acls in SERVICE_ROLES.items()
    ]
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def device_credentials(device_id: str, password: str, host: str, port: int) -> dict[str, Any]:
    """What one device needs to connect: the value under its id in ``devicefleet-<name>-credentials``."""
    return {
        "clientId": device_id,
        "username": device_id,
        "password": password,
        "host": host,
        "port": port,
        "topicPrefix": f"iot/{device_id}/",
    }
