"""Over-the-air updates (``features.ota``): what a customer may ask for and what a device may report.

An update is the command ``start_ota`` on ``iot/<id>/command`` with ``args {version, url, sha256}``
and the command's ``cmd_id`` as the update's id. The device reports progress on
``iot/<id>/ota/status``: ``{v: 2, cmd_id, state, progress?, version?, error?, ts?}`` with ``state``
one of ``STATES``. Both sides are judged here, purely: a request the API refuses names the field and
the rule; a report ingest refuses is counted as ``bad_ota_status``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from iotenant.vocabulary import topics
from iotenant_workloads import datagram, untrusted_json
from iotenant_workloads.datagram import BAD_OTA_STATUS
from iotenant_workloads.untrusted_json import Unacceptable

# What the API records when it sends an update, then what devices report, in order.
SENT = "sent"
DOWNLOADING, VERIFYING, INSTALLING = "downloading", "verifying", "installing"
SUCCEEDED, FAILED = "succeeded", "failed"
STATES = (DOWNLOADING, VERIFYING, INSTALLING, SUCCEEDED, FAILED)
TERMINAL = frozenset({SUCCEEDED, FAILED})
# An update with no report for this long no longer blocks a new one for the same device.
STALE_SECONDS = 3600

MAX_URL = 2048
MAX_ERROR = 256
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class UpdateRequest:
    version: str
    url: str
    sha256: str

    def command_args(self) -> dict[str, str]:
        return {"version": self.version, "url": self.url, "sha256": self.sha256}


class InvalidRequest(ValueError):
    """A field of an update request that breaks its rule; the message names both."""


def _https_url(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_URL:
        raise InvalidRequest(f"url must be a string of 1..{MAX_URL} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in value):
        raise InvalidRequest("url must be printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidRequest("url is not a valid URL") from None
    if parts.scheme != "https":
        raise InvalidRequest("url must use https")
    if not parts.hostname:
        raise InvalidRequest("url must name a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url must not carry credentials (devices and logs would see them)")
    if port == 0:
        raise InvalidRequest("url must not name port 0")
    return value


def judge_request(body: dict[str, Any]) -> UpdateRequest:
    """An update request from the API's body ``{version, url, sha256}``; nothing else is allowed."""
    unknown = sorted(set(body) - {"version", "url", "sha256"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}: only version, url and sha256 are allowed")
    version = body.get("version")
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise InvalidRequest("version must be 1..64 of [A-Za-z0-9._+~-], starting with a letter or digit")
    digest = body.get("sha256")
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise InvalidRequest("sha256 must be 64 hexadecimal digits")
    return UpdateRequest(version=version, url=_https_url(body.get("url")), sha256=digest.lower())


@dataclass(frozen=True)
class Report:
    """One progress report of a device, judged."""

    device_id: str
    cmd_id: str
    ts: datetime
    state: str
    progress: int | None
    version: str | None
    error: str | None


def parse_report(device_id: str, payload: bytes, received: datetime) -> Report:
    """A report on ``iot/<device_id>/ota/status``; raises ``Unacceptable`` with a reason."""
    document = untrusted_json.parse_object(payload, topics.MAX_DATAGRAM_BYTES)
    datagram.same_device(document, device_id)
    ts = datagram.timestamp(document["ts"]) if "ts" in document else received
    cmd_id = datagram.text(document.get("cmd_id"), "cmd_id", datagram.MAX_ID, BAD_OTA_STATUS)
    state = document.get("state")
    if state not in STATES:
        raise Unacceptable(BAD_OTA_STATUS, f"state must be one of {', '.join(STATES)}")
    progress = document.get("progress")
    if progress is not None and (isinstance(progress, bool) or not isinstance(progress, int) or not 0 <= progress <= 100):
        raise Unacceptable(BAD_OTA_STATUS, "progress must be an integer from 0 to 100")
    version = document.get("version")
    if version is not None and (not isinstance(version, str) or not VERSION.fullmatch(version)):
        raise Unacceptable(BAD_OTA_STATUS, "version must be 1..64 of [A-Za-z0-9._+~-]")
    error = document.get("error")
    if error is not None:
        error = datagram.text(error, "error", MAX_ERROR, BAD_OTA_STATUS)
    return Report(device_id, cmd_id, ts, state, progress, version, error)
