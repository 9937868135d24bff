"""The data plane's MQTT topic layout, one fact for the operator (broker ACLs) and the workloads.

Every device topic is ``iot/<device id>/<kind>``. A device id is 1..63 of ``[A-Za-z0-9._-]``
starting with a letter or digit: valid as an MQTT client id, username and topic level (no ``/``,
``+``, ``#``) and as a Secret key.
"""

from __future__ import annotations

import re

ROOT = "iot"
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# The rule in words, for whoever is refused.
DEVICE_ID_RULE = "1..63 of [A-Za-z0-9._-], starting with a letter or digit"

# What a device publishes (and nothing else: the broker refuses any other topic, which also bounds
# the retained messages one device can leave in the broker to one per kind).
TELEMETRY = "telemetry"
HELLO = "hello"
STATUS = "status"
COMMAND_ACK = "command/ack"
OTA_STATUS = "ota/status"
DEVICE_PUBLISHES = (TELEMETRY, HELLO, STATUS, COMMAND_ACK, OTA_STATUS)
# What ingest stores.
INGESTED = (TELEMETRY, HELLO, STATUS, COMMAND_ACK, OTA_STATUS)
# What the API publishes to a device; an OTA update is the command named START_OTA, whose progress
# the device reports on OTA_STATUS with the command's ``cmd_id``.
COMMAND = "command"
START_OTA = "start_ota"

# The largest message payload the data plane takes, and the largest MQTT packet carrying one (with
# its topic and headers): brokers refuse larger packets, ingest asks the broker for nothing larger.
MAX_DATAGRAM_BYTES = 64 * 1024
MAX_PACKET_BYTES = MAX_DATAGRAM_BYTES + 1024


def is_device_id(value: object) -> bool:
    return isinstance(value, str) and DEVICE_ID.fullmatch(value) is not None


def device_topic(device_id: str, kind: str) -> str:
    return f"{ROOT}/{device_id}/{kind}"


def device_filter(device_id: str) -> str:
    """Every topic of one device: what it may subscribe to."""
    return f"{ROOT}/{device_id}/#"


def all_devices_filter(kind: str) -> str:
    return f"{ROOT}/+/{kind}"
