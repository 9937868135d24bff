"""Device messages judged without any service: every hostile shape refused with a reason, nothing raised."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotenant_workloads import datagram, untrusted_json
from iotenant_workloads.untrusted_json import Unacceptable

RECEIVED = datetime(2026, 11, 25, tzinfo=timezone.utc)


def telemetry(**fields: object) -> bytes:
    document = {"v": 2, "device_id": "dev-1", "ts": 1_790_000_000, "seq": 1,
                "measurements": [{"type": "t", "val": 1.5, "unit": "C"}], **fields}
    return json.dumps(document).encode()


def reason(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Unacceptable) as refusal:
        call()
    return refusal.value.reason


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"v": 2, "ts": 1e400}', datagram.NUMBER_OUT_OF_RANGE),
        (telemetry(measurements=[{"type": "t", "val": 10**39}]).replace(b"1000000000000000000000000000000000000000", b"9" * 400),
         datagram.NUMBER_OUT_OF_RANGE),
        (telemetry(measurements=[{"type": "t", "val": 10**38}]), None),
        (b'{"v": 2, "ts": NaN}', datagram.NUMBER_OUT_OF_RANGE),
        (b'{"v": 2, "ts": -Infinity}', datagram.NUMBER_OUT_OF_RANGE),
        (telemetry(ts=10**15), datagram.BAD_TIMESTAMP),
        (telemetry(ts=-1), datagram.BAD_TIMESTAMP),
        (telemetry(ts="0001-01-01T00:00:00-23:59"), datagram.BAD_TIMESTAMP),
        (telemetry(ts="9999-12-31T23:59:59+00:00"), datagram.BAD_TIMESTAMP),
        (telemetry(ts="9999-12-31T23:59:59-23:59"), datagram.BAD_TIMESTAMP),
        (telemetry(ts="2026-11-25T10:00:00"), datagram.BAD_TIMESTAMP),
        (telemetry(ts="2026-11-25T10:00:00Z" + " " * 100), datagram.BAD_TIMESTAMP),
        (telemetry(seq=2**32), datagram.BAD_SEQ),
        (telemetry(seq=True), datagram.BAD_SEQ),
        (telemetry(v=True), datagram.UNSUPPORTED_VERSION),
        (telemetry(measurements=[{"type": "a\u0000b", "val": 1}]), datagram.UNSTORABLE_TEXT),
        (telemetry(measurements=[{"type": "a\ud800b", "val": 1}]), datagram.UNSTORABLE_TEXT),
        (telemetry(measurements=[{"type": "t", "val": 1, "unit": "\u0000"}]), datagram.UNSTORABLE_TEXT),
        (telemetry(msg_type="\udfff"), datagram.UNSTORABLE_TEXT),
        (telemetry(msg_type=["x"]), datagram.BAD_MEASUREMENTS),
        (telemetry(measurements=[{"type": "t", "val": "1"}]), datagram.BAD_MEASUREMENTS),
        (telemetry(measurements=[{"type": "t", "val": 1}] * 201), datagram.TOO_MANY_MEASUREMENTS),
        (telemetry(device_id="dev-2"), datagram.DEVICE_ID_MISMATCH),
        (b"[" * 30_000 + b"]" * 30_000, datagram.NESTING_TOO_DEEP),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, datagram.NESTING_TOO_DEEP),
        (b"\xff\xfe", datagram.INVALID_JSON),
        (b"x" * (64 * 1024 + 1), datagram.PAYLOAD_TOO_LARGE),
        (b"[]", datagram.NOT_AN_OBJECT),
    ],
)
def test_hostile_telemetry_is_refused_with_its_reason(payload: bytes, expected: str | None) -> None:
    if expected is None:
        assert datagram.parse_telemetry("dev-1", payload).measurements[0].val == 1e38
    else:
        assert reason(lambda: datagram.parse_telemetry("dev-1", payload)) == expected


@pytest.mark.parametrize(
    ("kind", "document", "expected"),
    [
        ("hello", {"fw": "1.0\u0000"}, datagram.UNSTORABLE_TEXT),
        ("hello", {"fw\u0000": "1.0"}, datagram.UNSTORABLE_TEXT),
        ("hello", {"fw": "\ud83d"}, datagram.UNSTORABLE_TEXT),
        ("hello", {"fw": {"a": [{"b": "\u0000"}]}}, datagram.UNSTORABLE_TEXT),
        ("status", {"state": "online", "ts": "0001-01-01T00:30:00+01:00"}, datagram.BAD_TIMESTAMP),
        ("status", {"state": ["online"]}, datagram.BAD_STATUS),
        ("command/ack", {"cmd_id": "c\u0000", "status": "done"}, datagram.UNSTORABLE_TEXT),
        ("command/ack", {"cmd_id": "c" * 65, "status": "done"}, datagram.BAD_ACK),
        ("command/ack", {"cmd_id": 7, "status": "done"}, datagram.BAD_ACK),
        ("command/ack", {"cmd_id": "c1", "status": "done", "result": {"x": "\ud800"}}, datagram.UNSTORABLE_TEXT),
    ],
)
def test_hostile_events_are_refused_with_their_reason(kind: str, document: dict, expected: str) -> None:
    payload = json.dumps(document).encode()
    assert reason(lambda: datagram.parse_event("dev-1", kind, payload, RECEIVED)) == expected


def test_good_messages_pass() -> None:
    parsed = datagram.parse_telemetry("dev-1", telemetry(ts="2026-11-25T10:00:00Z"))
    assert parsed.ts == datetime(2026, 11, 25, 10, tzinfo=timezone.utc) and parsed.measurements[0].unit == "C"
    event = datagram.parse_event("dev-1", "hello", b'{"fw": "1.0", "nested": [[[1]]]}', RECEIVED)
    assert event.ts == RECEIVED and event.body["fw"] == "1.0"


@pytest.mark.parametrize(
    "topic",
    ["iot/dev-1/other", "iot/dev 1/telemetry", "iot/-dev/telemetry", "iot/dev-1/telemetry/x", "x/dev-1/telemetry",
     "iot/" + "d" * 64 + "/telemetry", "iot/dev-1\n/telemetry", "iot//telemetry", "iot/dev-1/ota/status/x", "iot/dev-1/ota"],
)
def test_topics_outside_the_layout_are_refused(topic: str) -> None:
    assert reason(lambda: datagram.topic_parts(topic)) == datagram.BAD_TOPIC


def test_nesting_depth_skips_brackets_inside_strings() -> None:
    assert untrusted_json.nesting_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[[[[["}') == 1
    assert untrusted_json.parse(b'{"a": "' + b"[" * 100 + b'"}', 1024) == {"a": "[" * 100}


def test_printable_makes_any_text_safe_to_store() -> None:
    for value in ("a\u0000b", "\ud800", b"\xff\x00", "ok"):
        text = untrusted_json.printable(value)
        text.encode("utf-8")
        assert "\x00" not in text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(document=JSON_VALUES, kind=st.sampled_from(["telemetry", "hello", "status", "command/ack"]))
def test_any_json_is_stored_or_refused_never_raised(document: object, kind: str) -> None:
    payload = json.dumps(document).encode("utf-8", "surrogatepass")
    try:
        if kind == "telemetry":
            parsed = datagram.parse_telemetry("dev-1", payload)
            for measurement in parsed.measurements:
                measurement.type.encode("utf-8")
        else:
            datagram.parse_event("dev-1", kind, payload, RECEIVED)
    except Unacceptable as refusal:
        assert refusal.reason in datagram.REASONS
