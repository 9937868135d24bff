"""Driving a tenant broker's identities live, through Mosquitto's dynamic-security control topic.

The operator connects as the broker's admin identity, reads the clients the broker knows, and sends
the commands that make them equal to the desired identities: delete what is not desired (this also
drops the client's live connection), modify what changed (a new password; the broker drops the old
connection), create what is missing. Nothing restarts, and clients that did not change stay
connected.

Mosquitto 2.0 rewrites its whole dynamic-security file after every command, so a command costs
time proportional to the number of clients (about 2.5 ms per thousand here) and blocks the broker
meanwhile. Commands therefore go in messages sized to keep each such pause near a quarter of a
second, one message at a time: other clients are served between two messages. Mosquitto 2.1 saves
once per message, so for it (its version is read from ``$SYS/broker/version``) messages are as large
as the broker's packet limit allows. Every message stays under that limit (the plan's
``maxPacketBytes``): a larger packet would disconnect the operator.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotenant.broker_admin_tls import AdminTLS, client_context
from iotenant.broker_identities import ADMIN, BROKER_VERSION_TOPIC, Identity, Role, desired_roles

log = logging.getLogger("iotenant.broker_control")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
MAX_COMMANDS_PER_MESSAGE = 100
# Brokers that save once per message (Mosquitto 2.1 and later) take this many commands in one.
MAX_COMMANDS_PER_SAVING_MESSAGE = 2000
SAVES_ONCE_PER_MESSAGE_FROM = (2, 1)
# Commands per message times entries (clients and roles) in the broker: about a quarter of a second of
# broker time on 2.0 (measured: a device's client and role take about 1.3 KB of the file it rewrites).
COMMAND_CLIENT_BUDGET = 30_000
# A control message's size when the broker's packet limit is not known: under the smallest a plan sets.
COMMAND_MESSAGE_BYTES = 12_000
# Room left in a packet for the topic, the headers and the correlation data.
PACKET_MARGIN_BYTES = 2048
VERSION_WAIT_SECONDS = 1.0
CONNECT_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 120.0


def split_address(address: str, default_port: int = 1883) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    return (host, int(port)) if colon and port.isdigit() else (address, default_port)


class BrokerAddresses:
    """Where the operator reaches each tenant's broker: a file of overrides, else the template."""

    def __init__(self, template: str, overrides_file: Path | None = None) -> None:
        self.template = template
        self.overrides_file = overrides_file
        self._overrides: dict[str, str] = {}
        self._stamp: tuple[float, int] | None = None

    def _read_overrides(self) -> dict[str, str]:
        if self.overrides_file is None:
            return {}
        try:
            stat = self.overrides_file.stat()
        except FileNotFoundError:
            return {}
        if (stat.st_mtime, stat.st_size) != self._stamp:
            self._overrides = {str(k): str(v) for k, v in json.loads(self.overrides_file.read_text() or "{}").items()}
            self._stamp = (stat.st_mtime, stat.st_size)
        return self._overrides

    def __call__(self, namespace: str) -> tuple[str, int]:
        address = self._read_overrides().get(namespace) or self.template.format(namespace=namespace)
        return split_address(address)


class BrokerUnavailable(Exception):
    """The broker could not be reached, refused the admin identity, or did not answer in time."""


class BrokerCommandFailed(Exception):
    """The broker answered a command with an error that retrying the same command will not fix."""


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    roles_changed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.modified or self.deleted or self.roles_changed)


@dataclass(frozen=True)
class LiveState:
    """What the broker holds: each client as dynamic security lists it, and each role's allowed ACLs."""

    clients: dict[str, dict[str, Any]]
    roles: dict[str, frozenset[tuple[str, str]]]


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


def _client_shape(entry: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    roles = tuple(sorted(str(role.get("rolename")) for role in entry.get("roles") or []))
    return str(entry.get("textname", "")), str(entry.get("clientid") or ""), roles


def plan_commands(live: LiveState, desired: dict[str, Identity], roles: dict[str, Role]) -> tuple[list[dict[str, Any]], SyncResult]:
    """The commands that turn the broker's clients and roles into ``desired`` and ``roles``.

    Deletions come first (revocation matters most), then what is live and wrong (roles, then the
    clients that use them), then each new device's role and client together, so that a device can
    connect as soon as its own pair is in (a big fleet becomes usable progressively). The admin
    identity is never touched: it is the operator's own way in (its role is among ``roles``, so it
    is kept as it must be).
    """
    result = SyncResult()
    commands: list[dict[str, Any]] = []
    for username in sorted(live.clients):
        if username != ADMIN and username not in desired:
            commands.append({"command": "deleteClient", "username": username})
            result.deleted.append(username)
    for name in sorted(live.roles):
        if name not in roles:
            commands.append({"command": "deleteRole", "rolename": name})
            result.roles_changed.append(name)
    new_devices_roles = {i.role_name for u, i in desired.items() if u not in live.clients and i.is_device}

    def create_role(name: str) -> None:
        commands.append({"command": "createRole", "rolename": name, "acls": roles[name].acls()})
        result.roles_changed.append(name)

    for name, role in sorted(roles.items()):
        if name not in live.roles and name not in new_devices_roles:
            create_role(name)
        elif name in live.roles and live.roles[name] != Role.allows_of(role.acls()):
            commands.append({"command": "modifyRole", "rolename": name, "acls": role.acls()})
            result.roles_changed.append(name)
    for username, identity in sorted(desired.items()):
        if username in live.clients and _client_shape(live.clients[username]) != _client_shape(identity.client()):
            commands.append(_client_command("modifyClient", identity))
            result.modified.append(username)
    for username, identity in sorted(desired.items()):
        if username not in live.clients:
            if identity.role_name in new_devices_roles and identity.role_name not in live.roles:
                create_role(identity.role_name)
            commands.append(_client_command("createClient", identity))
            result.created.append(username)
    return commands, result


def _next_message(commands: list[dict[str, Any]], start: int, most: int, most_bytes: int) -> list[dict[str, Any]]:
    """The commands from ``start`` that fit one message: at most ``most`` and ``most_bytes``
    (the broker disconnects a client whose packet exceeds its ``max_packet_size``)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for command in commands[start : start + most]:
        size += len(json.dumps(command)) + 64  # and its correlation data
        if batch and size > most_bytes:
            break
        batch.append(command)
    return batch


def _client_command(command: str, identity: Identity) -> dict[str, Any]:
    return {"command": command, **identity.client(), "password": identity.password}


class DynamicSecurity:
    """One admin connection to a tenant broker. Use as a context manager."""

    def __init__(self, host: str, port: int, admin_tls: AdminTLS, max_packet_bytes: int | None = None) -> None:
        self.host, self.port = host, port
        self.message_bytes = max_packet_bytes - PACKET_MARGIN_BYTES if max_packet_bytes else COMMAND_MESSAGE_BYTES
        self.version: tuple[int, ...] | None = None
        self._responses: list[dict[str, Any]] = []
        self._connect_result: Any = None
        self._subscribed = False
        self._version_readable = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"iotenant-operator-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5
        )
        self._client.tls_set_context(client_context(admin_tls))  # the certificate's name is the admin's username
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # ----------------------------------------------------------------------------- connection

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        self._connect_result = reason

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[Any], _p: object) -> None:
        self._version_readable = len(reasons) > 1 and not getattr(reasons[1], "is_failure", True)
        self._subscribed = True

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == BROKER_VERSION_TOPIC:
            self.version = parse_version(message.payload.decode("utf-8", "replace"))
            return
        try:
            self._responses.append(json.loads(message.payload))
        except ValueError:
            log.warning("ignoring a malformed dynamic-security response")

    def _pump(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"broker {self.host}:{self.port} did not answer within {timeout:.0f} s ({what})")
            rc = self._client.loop(timeout=0.05)
            if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN) and not done():
                raise BrokerUnavailable(f"connection to broker {self.host}:{self.port} lost ({mqtt.error_string(rc)}) while {what}")

    def __enter__(self) -> "DynamicSecurity":
        try:
            self._client.connect(self.host, self.port, keepalive=60)
        except ssl.SSLError as error:
            raise BrokerUnavailable(f"broker {self.host}:{self.port} refused the admin certificate: {error}") from error
        except OSError as error:
            raise BrokerUnavailable(f"cannot reach broker {self.host}:{self.port}: {error}") from error
        try:
            self._pump(lambda: self._connect_result is not None, CONNECT_TIMEOUT, "connecting")
            if getattr(self._connect_result, "is_failure", False):
                raise BrokerUnavailable(f"broker {self.host}:{self.port} refused the admin identity: {self._connect_result}")
            self._client.subscribe([(RESPONSE_TOPIC, 1), (BROKER_VERSION_TOPIC, 0)])
            self._pump(lambda: self._subscribed, CONNECT_TIMEOUT, "subscribing to the control responses")
            if self._version_readable:  # the broker sends its retained version at once; an old admin role may not read it
                deadline = time.monotonic() + VERSION_WAIT_SECONDS
                while self.version is None and time.monotonic() < deadline:
                    self._client.loop(timeout=0.05)
        except BaseException:
            self._client.disconnect()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        try:
            self._client.loop(timeout=0.05)
        except Exception:  # the socket may already be gone
            pass

    # ----------------------------------------------------------------------------- commands

    def execute(self, commands: list[dict[str, Any]], clients: int = 0) -> list[dict[str, Any]]:
        """Send ``commands`` in messages sized for a broker holding about ``clients`` clients, each
        message after the previous one was answered."""
        responses: list[dict[str, Any]] = []
        start = 0
        while start < len(commands):
            batch = _next_message(commands, start, commands_per_message(clients, self.version), self.message_bytes)
            start += len(batch)
            clients += sum(1 for command in batch if command["command"] in ("createClient", "createRole"))
            tag = secrets.token_hex(6)
            tagged = [{**command, "correlationData": f"{tag}-{index}"} for index, command in enumerate(batch)]
            self._responses.clear()
            info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"could not send to broker {self.host}:{self.port}: {mqtt.error_string(info.rc)}")

            def answered() -> bool:
                return any(self._matches(response, tag) for response in self._responses)

            self._pump(answered, RESPONSE_TIMEOUT, f"running {len(batch)} dynamic-security commands")
            answer = next(response for response in self._responses if self._matches(response, tag))
            responses.extend(answer.get("responses", []))
        return responses

    @staticmethod
    def _matches(response: dict[str, Any], tag: str) -> bool:
        entries = response.get("responses") or []
        return bool(entries) and str(entries[0].get("correlationData", "")).startswith(f"{tag}-")

    def _listing(self, command: str, key: str) -> list[dict[str, Any]]:
        (response,) = self.execute([{"command": command, "verbose": True, "count": -1, "offset": 0}])
        if "error" in response:
            raise BrokerCommandFailed(f"{command}: {response['error']}")
        return list(response["data"][key])

    def live_state(self) -> LiveState:
        """Every client and role the broker knows."""
        clients = {entry["username"]: entry for entry in self._listing("listClients", "clients")}
        roles = {entry["rolename"]: Role.allows_of(entry.get("acls") or []) for entry in self._listing("listRoles", "roles")}
        return LiveState(clients, roles)

    def list_clients(self) -> dict[str, str]:
        """Every client the broker knows: username -> text name."""
        return {entry["username"]: str(entry.get("textname", "")) for entry in self._listing("listClients", "clients")}

    def sync(self, desired: dict[str, Identity], share_group: str) -> SyncResult:
        """Make the broker's clients exactly ``desired`` and its roles theirs (plus the admin and its role);
        return what changed."""
        live = self.live_state()
        commands, result = plan_commands(live, desired, desired_roles(list(desired.values()), share_group))
        if not commands:
            return result
        started = time.monotonic()
        failures = []
        for command, response in zip(commands, self.execute(commands, clients=len(live.clients) + len(live.roles))):
            error = response.get("error")
            if error is None:
                continue
            if command["command"] in ("deleteClient", "deleteRole") and error in ("Client not found", "Role not found"):
                continue  # someone removed it meanwhile: the outcome is the desired one
            failures.append(f"{command['command']} {command.get('username') or command.get('rolename')}: {error}")
        if failures:
            more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
            raise BrokerCommandFailed("; ".join(failures[:3]) + more)
        log.info(
            "broker %s:%d: %d created, %d modified, %d deleted, %d roles changed in %.2f s", self.host, self.port,
            len(result.created), len(result.modified), len(result.deleted), len(result.roles_changed), time.monotonic() - started,
        )
        return result
