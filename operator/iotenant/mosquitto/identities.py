"""Broker identities: who may connect to a tenant's Mosquitto, what each may do, and what a device needs.

Nothing is allowed by default. Every device is a dynamic-security client whose username and MQTT
client id are its device id, holding one of the ``device-NN`` roles (alike in all but name), whose
ACLs name the device's own prefix by pattern (``iot/%u/...``, substituted by Mosquitto 2.1 and
later): it may publish only the topic kinds of the data-plane layout under ``iot/<id>/`` (so it can
leave at most one retained message per kind), subscribe only to ``iot/<id>/#``, and receive only its
commands. A SUBSCRIBE to anything else (another device, ``#``, any ``$share`` group, ``$SYS``) is
refused with "not authorised". A device costs the broker one client entry, whatever the fleet's size.

Why several device roles rather than one: the broker keeps each role's clients in a list sorted by
username and inserts into it by walking from the smallest, also when it loads its file at start-up,
where clients come in ascending order. With one role for 100,000 devices a broker restart spent
more than five minutes in those walks before it listened (measured on 2.1.2); spread over
``DEVICE_ROLE_SHARDS`` roles by a hash of the device id, each list is that many times shorter and
the walks that many times cheaper.

Services (admin, ingest, api) get explicit roles; their usernames contain a ``:``, which a device id
cannot, so no device can ever take a service's name. Ingest subscribes through the tenant's own
share group, a random name only ingest knows. Passwords are stored as Mosquitto does: PBKDF2-SHA512,
12-byte salt, base64.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from iotenant.vocabulary import topics
from iotenant.vocabulary.contract import MQTT_PORT, MQTTS_PORT

ITERATIONS = 101

# Usernames of the service identities, and the dynamic-security roles they hold.
ADMIN = "iotenant:admin"
INGEST = "iotenant:ingest"
API = "iotenant:api"
ADMIN_ROLE, INGEST_ROLE, API_ROLE = "admin", "ingest", "api"
# Devices hold ``device-00`` .. ``device-63``, chosen by a hash of the device id (see above).
DEVICE_ROLE_PREFIX = "device-"
DEVICE_ROLE_SHARDS = 64
# What the broker substitutes with a client's username in an ACL topic (Mosquitto 2.1 and later).
USERNAME_PATTERN = "%u"


@dataclass(frozen=True)
class Role:
    """A dynamic-security role: a name and the (acltype, topic) pairs it allows."""

    name: str
    allows: tuple[tuple[str, str], ...]

    def acls(self) -> list[dict[str, Any]]:
        return [{"acltype": acltype, "topic": topic, "priority": 0, "allow": True} for acltype, topic in self.allows]

    @staticmethod
    def allows_of(acls: list[dict[str, Any]]) -> frozenset[tuple[str, str]]:
        """The allowed pairs of a role as the broker lists it (a deny or a missing field counts as drift)."""
        return frozenset((str(a.get("acltype")), str(a.get("topic")) + ("" if a.get("allow") is True else " (deny)"))
                         if isinstance(a, dict) else ("(malformed)", repr(a)[:100]) for a in acls)


# The broker's version tells the operator how the broker saves (``broker_control.commands_per_message``).
BROKER_VERSION_TOPIC = "$SYS/broker/version"
ADMIN_ACLS = (
    ("publishClientSend", "$CONTROL/dynamic-security/#"),
    ("publishClientReceive", "$CONTROL/dynamic-security/#"),
    ("subscribePattern", "$CONTROL/dynamic-security/#"),
    ("subscribePattern", BROKER_VERSION_TOPIC),
    ("publishClientReceive", BROKER_VERSION_TOPIC),
)
ADMIN_ROLE_DEFINITION = Role(ADMIN_ROLE, ADMIN_ACLS)


def device_role_name(device_id: str) -> str:
    """The device role ``device_id`` holds: always the same one for the same id."""
    return f"{DEVICE_ROLE_PREFIX}{zlib.crc32(device_id.encode()) % DEVICE_ROLE_SHARDS:02d}"


def device_role(name: str) -> Role:
    """A role devices hold (all are alike but for the name): a device's own topics, named by the username
    pattern. A device receives only what the tenant sends it (its commands), never its own messages
    back: one that publishes to a topic it subscribed to and stops reading would otherwise make the
    broker queue every echo for it."""
    allows = tuple(("publishClientSend", topics.device_topic(USERNAME_PATTERN, kind)) for kind in topics.DEVICE_PUBLISHES) + (
        ("subscribePattern", topics.device_filter(USERNAME_PATTERN)),
        ("publishClientReceive", topics.device_topic(USERNAME_PATTERN, topics.COMMAND)),
    )
    return Role(name, allows)


def service_roles(share_group: str) -> list[Role]:
    return [
        Role(INGEST_ROLE, tuple(("subscribePattern", f"$share/{share_group}/{topics.all_devices_filter(kind)}")
                                for kind in topics.INGESTED)
             # Retained status directly (a new shared subscription gets no retained messages).
             + (("subscribePattern", topics.all_devices_filter(topics.STATUS)), ("publishClientReceive", f"{topics.ROOT}/#"))),
        Role(API_ROLE, (("publishClientSend", topics.all_devices_filter(topics.COMMAND)),)),
    ]


def new_share_group() -> str:
    """The tenant's ingest share group: unguessable, and a valid topic level."""
    return f"ingest-{secrets.token_hex(12)}"


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
    """A broker client: its username (a device id or a service name), password and, for a service, its role.

    ``label`` says what the identity is for (``fleet/<name>`` or ``service``); with the password's
    fingerprint it becomes the client's text name in the broker.
    """

    username: str
    password: str
    role: str | None = None  # a service's role; None: a device, confined by the device role
    label: str = "service"

    @property
    def is_device(self) -> bool:
        return self.role is None

    @property
    def role_name(self) -> str:
        return self.role if self.role is not None else device_role_name(self.username)

    @property
    def client_id(self) -> str | None:
        """The MQTT client id the broker requires (a device's is its id; services choose theirs)."""
        return self.username if self.is_device else None

    @cached_property
    def text_name(self) -> str:
        return f"{self.label} {password_fingerprint(self.password)}"

    @cached_property
    def shape(self) -> tuple[str, str, tuple[str, ...]]:
        """What a sync compares of the client: text name, required client id ("" for none), roles."""
        return self.text_name, self.client_id or "", (self.role_name,)

    def client(self) -> dict[str, Any]:
        """The client as dynamic security holds it (without the password)."""
        entry: dict[str, Any] = {"username": self.username, "textname": self.text_name, "roles": [{"rolename": self.role_name}]}
        if self.client_id is not None:
            entry["clientid"] = self.client_id
        return entry


def fleet_label(fleet_name: str) -> str:
    """What a device identity is for: its fleet (the text name of its broker client starts with it)."""
    return f"fleet/{fleet_name}"


def service_identities(ingest_password: str, api_password: str) -> list[Identity]:
    return [Identity(INGEST, ingest_password, INGEST_ROLE), Identity(API, api_password, API_ROLE)]


def desired_roles(share_group: str, identities: Iterable[Identity]) -> dict[str, Role]:
    """Every role the broker must hold: the admin's, the services', and the device roles ``identities`` hold."""
    used = sorted({identity.role_name for identity in identities if identity.is_device})
    return {role.name: role for role in [ADMIN_ROLE_DEFINITION, *service_roles(share_group), *map(device_role, used)]}


def dynamic_security_config(identities: list[Identity], share_group: str) -> dict[str, Any]:
    """A complete dynamic-security document: the admin, the roles, and the given identities.

    The admin has no password: it logs in only with its client certificate on the admin listener
    (``broker_admin_tls``), never on the listener devices use.
    """
    clients: list[dict[str, Any]] = [{"username": ADMIN, "textname": "iotenant operator", "roles": [{"rolename": ADMIN_ROLE}]}]
    for identity in identities:
        clients.append({**identity.client(), **password_entry(identity.password, stable_salt(identity.username, identity.password))})
    roles = [{"rolename": role.name, "acls": role.acls()} for role in desired_roles(share_group, identities).values()]
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


# Ports of the URL schemes when a credential names none.
DEFAULT_PORTS = {"mqtt": MQTT_PORT, "mqtts": MQTTS_PORT}


@dataclass(frozen=True)
class DeviceCredentials:
    """What one device needs to connect; stored as a URL under its id in ``devicefleet-<name>-credentials``.

    ``mqtt://<device id>:<password>@<host>:<port>`` (``mqtts://`` when the broker takes devices over TLS
    only): the username is the device id, the MQTT client id must be the device id too, and the device
    may use the topics under ``iot/<device id>/``. A URL keeps a 10,000-device fleet well inside a
    Secret's 1 MiB.
    """

    device_id: str
    password: str
    host: str
    port: int
    scheme: str = "mqtt"

    @property
    def username(self) -> str:
        return self.device_id

    @property
    def client_id(self) -> str:
        return self.device_id

    @property
    def topic_prefix(self) -> str:
        return topics.device_topic(self.device_id, "")

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{self.device_id}:{self.password}@{host}:{self.port}"

    @classmethod
    def from_url(cls, value: str) -> "DeviceCredentials":
        parts = urlsplit(value.strip())
        if parts.scheme not in DEFAULT_PORTS or not parts.username or not parts.password or not parts.hostname:
            raise ValueError("device credentials must look like mqtt[s]://<device id>:<password>@<host>:<port>")
        if not topics.is_device_id(parts.username):
            raise ValueError(f"{parts.username!r} is not a device id")
        return cls(device_id=parts.username, password=parts.password, host=parts.hostname,
                   port=parts.port or DEFAULT_PORTS[parts.scheme], scheme=parts.scheme)
