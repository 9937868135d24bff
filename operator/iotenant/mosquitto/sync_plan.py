"""What to send a broker so that its clients and roles become the desired ones, and in what pieces. Pure.

Mosquitto 2.0 rewrites its whole dynamic-security file after every command, so a command costs
time proportional to the number of clients and blocks the broker meanwhile: commands go in messages
sized to keep each pause near a quarter of a second. Mosquitto 2.1 saves once per message, so for it
messages are as large as the broker's packet limit allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from iotenant.mosquitto.identities import ADMIN, Identity, Role

MAX_COMMANDS_PER_MESSAGE = 100
# Brokers that save once per message (Mosquitto 2.1 and later) take this many commands in one: with
# 10,000 devices, 500 admit them as fast as 2,000 did (8.6 vs 9.5 s) and a connected device's PUBACK
# p99 meanwhile is 171 ms instead of 238 (bench/fleet_provisioning.py).
MAX_COMMANDS_PER_SAVING_MESSAGE = 500
SAVES_ONCE_PER_MESSAGE_FROM = (2, 1)
# Brokers whose dynamic-security access rules substitute %u (the device role needs it).
PATTERN_ACLS_FROM = (2, 1)
# Commands per message times entries (clients and roles) in the broker: about a quarter of a second of
# broker time on 2.0 (measured: a device's client and role take about 1.3 KB of the file it rewrites).
COMMAND_CLIENT_BUDGET = 30_000
# A control message's size when the broker's packet limit is not known: under the smallest a plan sets.
COMMAND_MESSAGE_BYTES = 12_000
# Room left in a packet for the topic, the headers and the correlation data (the first command's).
PACKET_MARGIN_BYTES = 2048


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    roles_changed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.modified or self.deleted or self.roles_changed)


# What the plan compares of a client: its text name (with the password's fingerprint), its required
# client id ("" for none) and its roles.
ClientShape = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True)
class LiveState:
    """What the broker holds: each client's shape, and each role's allowed ACLs."""

    clients: dict[str, ClientShape]
    roles: dict[str, frozenset[tuple[str, str]]]

    @classmethod
    def listed(cls, clients: dict[str, dict[str, Any]], roles: dict[str, frozenset[tuple[str, str]]]) -> "LiveState":
        """The state of clients as dynamic security lists them."""
        return cls({username: client_shape(entry) for username, entry in clients.items()}, roles)

    @classmethod
    def from_listings(cls, clients: list[Any], roles: list[Any]) -> "LiveState":
        """The state of the broker's listings as it answered them. The broker runs in the tenant's namespace:
        an entry without a name cannot be addressed by a command and is left out (the desired ones are then
        created), and a malformed field only makes its client or role differ from the desired one."""
        return cls.listed(
            {entry["username"]: entry for entry in clients if _named(entry, "username")},
            {entry["rolename"]: Role.allows_of(entry["acls"] if isinstance(entry.get("acls"), list) else [entry.get("acls")])
             for entry in roles if _named(entry, "rolename")},
        )

    @classmethod
    def after(cls, live: "LiveState", desired: dict[str, Identity], roles: dict[str, Role]) -> "LiveState":
        """What the broker holds once the plan from ``live`` to ``desired`` and ``roles`` has run."""
        clients = {ADMIN: live.clients[ADMIN]} if ADMIN in live.clients else {}
        clients.update((username, identity.shape) for username, identity in desired.items())
        return cls(clients, {name: Role.allows_of(role.acls()) for name, role in roles.items()})


def _named(entry: object, key: str) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get(key), str)


def commands_per_message(entries: int, version: tuple[int, ...] | None = None) -> int:
    """How many commands one message may carry when the broker holds ``entries`` clients and roles."""
    if version is not None and version >= SAVES_ONCE_PER_MESSAGE_FROM:
        return MAX_COMMANDS_PER_SAVING_MESSAGE
    return max(1, min(MAX_COMMANDS_PER_MESSAGE, COMMAND_CLIENT_BUDGET // max(1, entries)))


def parse_version(text: str) -> tuple[int, ...] | None:
    """(2, 0, 21) of "mosquitto version 2.0.21", or None."""
    words = text.strip().split()
    try:
        return tuple(int(part) for part in words[-1].split(".")) if words else None
    except ValueError:
        return None


def client_shape(entry: dict[str, Any]) -> ClientShape:
    """A listed client's shape; whatever a field holds (the broker runs in the tenant's namespace), a
    malformed one only makes the shape differ from the desired one, so the client is rewritten."""
    listed = entry.get("roles")
    roles = tuple(sorted(str(role.get("rolename")) if isinstance(role, dict) else repr(role)[:100]
                         for role in (listed if isinstance(listed, list) else [listed])))
    return str(entry.get("textname", "")), str(entry.get("clientid") or ""), roles


def plan_commands(live: LiveState, desired: dict[str, Identity], roles: dict[str, Role]) -> tuple[list[dict[str, Any]], SyncResult]:
    """The commands that turn the broker's clients and roles into ``desired`` and ``roles``.

    Deletions of clients come first (revocation matters most), then the roles that are missing or
    wrong, then the clients that are wrong, then the new clients (each usable as soon as it is in, so
    a big fleet becomes usable progressively), and last the roles no client should hold. New clients
    go in descending order of username: dynamic security keeps its clients (and each role's clients) in
    a list sorted by username and walks it from the smallest until it finds a larger one, so each
    insert in descending order stops at once, where ascending order walks every client admitted
    before it (measured on 2.1.2 with 1,000-command messages: 40,000 devices in 22 s instead of 52 s,
    100,000 in 66 s; ascending, the walks grow with the square of the fleet). The admin
    identity is never touched: it is the operator's own way in (its role is among ``roles``, so it
    is kept as it must be).
    """
    result = SyncResult()
    commands: list[dict[str, Any]] = []
    for username in sorted(live.clients):
        if username != ADMIN and username not in desired:
            commands.append({"command": "deleteClient", "username": username})
            result.deleted.append(username)
    for name, role in sorted(roles.items()):
        if name not in live.roles:
            commands.append({"command": "createRole", "rolename": name, "acls": role.acls()})
            result.roles_changed.append(name)
        elif live.roles[name] != Role.allows_of(role.acls()):
            commands.append({"command": "modifyRole", "rolename": name, "acls": role.acls()})
            result.roles_changed.append(name)
    for username, identity in sorted(desired.items()):
        if username not in live.clients:
            continue
        held, wanted = live.clients[username], identity.shape
        if held != wanted:
            command = _client_command("modifyClient", identity)
            if held[0] == wanted[0]:  # the text name holds the password's fingerprint: same password, not hashed again
                del command["password"]
            commands.append(command)
            result.modified.append(username)
    for username, identity in sorted(desired.items(), reverse=True):
        if username not in live.clients:
            commands.append(_client_command("createClient", identity))
            result.created.append(username)
    for name in sorted(live.roles):
        if name not in roles:
            commands.append({"command": "deleteRole", "rolename": name})
            result.roles_changed.append(name)
    return commands, result


def _client_command(command: str, identity: Identity) -> dict[str, Any]:
    return {"command": command, **identity.client(), "password": identity.password}



def compact_json(document: Any) -> str:
    """JSON without spaces: the broker's packet limit bounds how many commands one message carries, and
    every message costs the broker a save of its whole file."""
    return json.dumps(document, separators=(",", ":"))


def next_message(commands: list[dict[str, Any]], start: int, most: int, most_bytes: int) -> list[dict[str, Any]]:
    """The commands from ``start`` that fit one message: at most ``most`` and ``most_bytes``
    (the broker disconnects a client whose packet exceeds its ``max_packet_size``)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for command in commands[start : start + most]:
        size += len(compact_json(command)) + 1  # and the comma between two
        if batch and size > most_bytes:
            break
        batch.append(command)
    return batch
