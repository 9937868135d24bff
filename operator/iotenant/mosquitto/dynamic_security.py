"""Driving a tenant broker's identities live, through Mosquitto's dynamic-security control topic.

The operator connects as the broker's admin identity, reads the clients the broker knows, and sends
the commands that make them equal to the desired identities: delete what is not desired (this also
drops the client's live connection), modify what changed (a new password; the broker drops the old
connection), create what is missing. Nothing restarts, and clients that did not change stay
connected. Every device holds one of the ``device-NN`` roles, whose access rules name the device's own topics
by the ``%u`` pattern; only Mosquitto 2.1 and later substitute it, so an older broker is refused.

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
from collections import Counter
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotenant.mosquitto.admin_tls import AdminTLS, client_context
from iotenant.mosquitto.identities import BROKER_VERSION_TOPIC, Identity, desired_roles
from iotenant.mosquitto.sync_plan import (
    COMMAND_MESSAGE_BYTES, PACKET_MARGIN_BYTES, PATTERN_ACLS_FROM, LiveState, SyncResult, commands_per_message, compact_json,
    next_message, parse_version, plan_commands,
)

log = logging.getLogger("iotenant.broker_control")

# Told, after each control message, the new clients the broker holds so far by label, and those this sync creates.
AdmissionProgress = Callable[[Counter[str], Counter[str]], None]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
VERSION_WAIT_SECONDS = 1.0
CONNECT_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 120.0


class BrokerUnavailable(Exception):
    """The broker could not be reached, refused the admin identity, or did not answer in time."""


class BrokerCommandFailed(Exception):
    """The broker answered a command with an error that retrying the same command will not fix."""


class DynamicSecurity:
    """One admin connection to a tenant broker. Use as a context manager."""

    def __init__(self, host: str, port: int, admin_tls: AdminTLS, max_packet_bytes: int | None = None) -> None:
        self.host, self.port = host, port
        self.message_bytes = max_packet_bytes - PACKET_MARGIN_BYTES if max_packet_bytes else COMMAND_MESSAGE_BYTES
        self.version: tuple[int, ...] | None = None
        self._responses: list[Any] = []
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

    def execute(self, commands: list[dict[str, Any]], clients: int = 0,
                answered_message: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
        """Send ``commands`` in messages sized for a broker holding about ``clients`` clients, each
        message after the previous one was answered (``answered_message`` is told each one's commands)."""
        responses: list[dict[str, Any]] = []
        start = 0
        while start < len(commands):
            batch = next_message(commands, start, commands_per_message(clients, self.version), self.message_bytes)
            start += len(batch)
            clients += sum(1 for command in batch if command["command"] in ("createClient", "createRole"))
            tag = secrets.token_hex(6)
            # The broker answers a message's commands in order, in one response: the first one's
            # correlation data names the whole answer.
            tagged = [{**batch[0], "correlationData": f"{tag}-0"}, *batch[1:]]
            self._responses.clear()
            info = self._client.publish(CONTROL_TOPIC, compact_json({"commands": tagged}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"could not send to broker {self.host}:{self.port}: {mqtt.error_string(info.rc)}")

            def answered() -> bool:
                return any(self._matches(response, tag) for response in self._responses)

            self._pump(answered, RESPONSE_TIMEOUT, f"running {len(batch)} dynamic-security commands")
            answer = next(response for response in self._responses if self._matches(response, tag))
            answered = answer["responses"]
            if len(answered) != len(batch) or not all(isinstance(entry, dict) for entry in answered):
                raise BrokerCommandFailed(f"broker {self.host}:{self.port} answered {len(answered)} of {len(batch)} commands, "
                                          "or not each with an object")
            responses.extend(answered)
            if answered_message is not None:
                answered_message(batch)
        return responses

    @staticmethod
    def _matches(response: object, tag: str) -> bool:
        entries = response.get("responses") if isinstance(response, dict) else None
        return (isinstance(entries, list) and bool(entries) and isinstance(entries[0], dict)
                and str(entries[0].get("correlationData", "")).startswith(f"{tag}-"))

    def _listing(self, command: str, key: str) -> list[Any]:
        (response,) = self.execute([{"command": command, "verbose": True, "count": -1, "offset": 0}])
        if "error" in response:
            raise BrokerCommandFailed(f"{command}: {str(response['error'])[:200]}")
        data = response.get("data")
        listed = data.get(key) if isinstance(data, dict) else None
        if not isinstance(listed, list):
            raise BrokerCommandFailed(f"{command}: the broker's answer holds no list of {key}")
        return listed

    def live_state(self) -> LiveState:
        """Every client and role the broker knows."""
        return LiveState.from_listings(self._listing("listClients", "clients"), self._listing("listRoles", "roles"))

    def list_clients(self) -> dict[str, str]:
        """Every client the broker knows: username -> text name."""
        return {entry["username"]: str(entry.get("textname", "")) for entry in self._listing("listClients", "clients")}

    def sync(self, desired: dict[str, Identity], share_group: str, known: LiveState | None = None,
             progress: AdmissionProgress | None = None) -> tuple[SyncResult, LiveState]:
        """Make the broker's clients exactly ``desired`` and its roles theirs (plus the admin and its role);
        return what changed and what the broker holds now. ``known``: what the broker held after an
        earlier sync, taken instead of listing every client again (at 100,000 devices a listing costs the
        broker and the operator a few tenths of a second each); a command it makes fail raises, and the
        next sync lists. ``progress`` is told, after each message, how many new clients of each label
        the broker holds so far and how many this sync creates."""
        if self.version is not None and self.version < PATTERN_ACLS_FROM:
            shown = ".".join(map(str, self.version))
            raise BrokerCommandFailed(f"Mosquitto {shown} does not substitute %u in access rules, which confine every device "
                                      "to its own topics: the stack needs Mosquitto 2.1 or later (stackImages.broker)")
        live = known if known is not None else self.live_state()
        roles = desired_roles(share_group, desired.values())
        commands, result = plan_commands(live, desired, roles)
        after = LiveState.after(live, desired, roles)
        if not commands:
            return result, after
        started = time.monotonic()
        failures = []
        planned = Counter(desired[username].label for username in result.created)
        created: Counter[str] = Counter()

        def answered_message(batch: list[dict[str, Any]]) -> None:
            created.update(desired[c["username"]].label for c in batch if c["command"] == "createClient")
            if progress is not None and planned:
                progress(created, planned)

        for command, response in zip(commands, self.execute(commands, len(live.clients) + len(live.roles), answered_message)):
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
        return result, after
