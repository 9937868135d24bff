"""Device messages that once stopped ingest or can stop a naive one: one per way of breaking it."""

from __future__ import annotations

# (topic kind, payload): numbers too large for a double, timestamps Python cannot represent, text
# PostgreSQL refuses (NUL, unpaired surrogates), deep nesting, JSON's missing constants, bytes that are
# not UTF-8. Each must be refused alone, acknowledged once, and never stop the next good message.
POISON = [
    ("telemetry", b'{"v": 2, "ts": 1790000000, "seq": 1, "measurements": [{"type": "t", "val": 1' + b"0" * 400 + b"}]}"),
    ("telemetry", b'{"v": 2, "ts": 1e400, "seq": 1, "measurements": [{"type": "t", "val": 1}]}'),
    ("telemetry", b'{"v": 2, "ts": 10000000000000000000000, "seq": 1, "measurements": [{"type": "t", "val": 1}]}'),
    ("telemetry", b'{"v": 2, "ts": "0001-01-01T00:00:00+23:59", "seq": 1, "measurements": [{"type": "t", "val": 1}]}'),
    ("telemetry", b'{"v": 2, "ts": 1790000000, "seq": 1, "measurements": [{"type": "t\\u0000", "val": 1}]}'),
    ("telemetry", b'{"v": 2, "ts": 1790000000, "seq": 1, "measurements": [{"type": "t\\ud800", "val": 1}]}'),
    ("telemetry", b"[" * 20_000 + b"]" * 20_000),
    ("hello", b'{"fw": "1.0\\u0000"}'),
    ("hello", b'{"fw": "\\udfff"}'),
    ("hello", b'{"fw": NaN}'),
    ("hello", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
    ("status", b'{"state": "online", "ts": "9999-12-31T23:59:59-23:59"}'),
    ("command/ack", b'{"cmd_id": "c\\u0000", "status": "done"}'),
    ("command/ack", b'{"cmd_id": "c1", "status": "done", "result": {"x": "\\ud800"}}'),
    ("telemetry", b"\xff\xfe\x00\x00"),
]
