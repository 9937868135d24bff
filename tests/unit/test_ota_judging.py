"""OTA requests and device reports judged without any service."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from iotenant_workloads import datagram, ota
from iotenant_workloads.untrusted_json import Unacceptable

SHA = "ab" * 32
RECEIVED = datetime(2026, 11, 25, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "2.0", "url": "http://updates.example/fw.bin", "sha256": SHA}, "https"),
        ({"version": "2.0", "url": "ftp://updates.example/fw.bin", "sha256": SHA}, "https"),
        ({"version": "2.0", "url": "https://user:pw@updates.example/fw.bin", "sha256": SHA}, "credentials"),
        ({"version": "2.0", "url": "https:///fw.bin", "sha256": SHA}, "host"),
        ({"version": "2.0", "url": "https://updates.example/fw bin", "sha256": SHA}, "printable"),
        ({"version": "2.0", "url": "https://updates.example/\u00e9", "sha256": SHA}, "printable"),
        ({"version": "2.0", "url": "https://updates.example:99999/fw", "sha256": SHA}, "valid URL"),
        ({"version": "2.0", "url": "https://[::1/fw", "sha256": SHA}, "valid URL"),
        ({"version": "2.0", "url": "https://u.example/" + "a" * 2100, "sha256": SHA}, "url"),
        ({"version": "2.0", "url": 5, "sha256": SHA}, "url"),
        ({"version": "2.0", "url": "https://u.example/fw", "sha256": "xyz"}, "sha256"),
        ({"version": "2.0", "url": "https://u.example/fw", "sha256": SHA + "0"}, "sha256"),
        ({"version": "", "url": "https://u.example/fw", "sha256": SHA}, "version"),
        ({"version": "2.0; rm -rf /", "url": "https://u.example/fw", "sha256": SHA}, "version"),
        ({"version": ["2"], "url": "https://u.example/fw", "sha256": SHA}, "version"),
        ({"version": "2.0", "url": "https://u.example/fw", "sha256": SHA, "force": True}, "force"),
    ],
)
def test_hostile_update_requests_are_refused_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(ota.InvalidRequest, match=field):
        ota.judge_request(body)


def test_a_good_request_becomes_the_command_arguments() -> None:
    request = ota.judge_request({"version": "2.1.0+build.7", "url": "https://updates.example:8443/fw/2.1.0.bin?sig=abc", "sha256": SHA.upper()})
    assert request.command_args() == {"version": "2.1.0+build.7", "url": "https://updates.example:8443/fw/2.1.0.bin?sig=abc", "sha256": SHA}


def report(**fields: object) -> bytes:
    return json.dumps({"v": 2, "cmd_id": "u-1", "state": "downloading", "progress": 50, **fields}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (report(state="hacked"), datagram.BAD_OTA_STATUS),
        (report(progress=101), datagram.BAD_OTA_STATUS),
        (report(progress=-1), datagram.BAD_OTA_STATUS),
        (report(progress=True), datagram.BAD_OTA_STATUS),
        (report(progress=50.5), datagram.BAD_OTA_STATUS),
        (report(cmd_id=""), datagram.BAD_OTA_STATUS),
        (report(cmd_id="c" * 65), datagram.BAD_OTA_STATUS),
        (report(cmd_id="a\u0000"), datagram.UNSTORABLE_TEXT),
        (report(error="e" * 257), datagram.BAD_OTA_STATUS),
        (report(version="1 2"), datagram.BAD_OTA_STATUS),
        (report(device_id="dev-2"), datagram.DEVICE_ID_MISMATCH),
        (report(ts="yesterday"), datagram.BAD_TIMESTAMP),
        (b"[" * 10_000, datagram.NESTING_TOO_DEEP),
        (b"\xff\xfe", datagram.INVALID_JSON),
    ],
)
def test_hostile_reports_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(Unacceptable) as refusal:
        ota.parse_report("dev-1", payload, RECEIVED)
    assert refusal.value.reason == reason


def test_a_good_report_is_taken() -> None:
    taken = ota.parse_report("dev-1", report(state="failed", error="sha256 mismatch", ts=1_790_000_000), RECEIVED)
    assert (taken.cmd_id, taken.state, taken.progress, taken.error) == ("u-1", "failed", 50, "sha256 mismatch")
    assert ota.parse_report("dev-1", report(progress=None), RECEIVED).ts == RECEIVED
