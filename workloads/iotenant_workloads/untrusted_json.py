"""JSON that came from outside (a device, an API client): judged before anything else looks at it.

``parse_object`` bounds size and nesting before parsing (deep nesting would exhaust the parser's
recursion), refuses the constants JSON does not have (``NaN``, ``Infinity``) and numbers too large
for a double, and ``storable`` checks that a value can be stored by PostgreSQL as ``text`` or
``jsonb``: no NUL character, no unpaired UTF-16 surrogate, only finite numbers. Every refusal is an
``Unacceptable`` with a stable reason; nothing else escapes.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 16
# Integers beyond this many digits are refused while parsing (a double holds about 17 significant digits).
MAX_INTEGER_DIGITS = 40

# Reasons (stable: metric labels and API output).
PAYLOAD_TOO_LARGE = "payload_too_large"
INVALID_JSON = "invalid_json"
NESTING_TOO_DEEP = "nesting_too_deep"
NOT_AN_OBJECT = "not_an_object"
UNSTORABLE_TEXT = "unstorable_text"
NUMBER_OUT_OF_RANGE = "number_out_of_range"


class Unacceptable(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _refuse_constant(name: str) -> Any:
    raise Unacceptable(NUMBER_OUT_OF_RANGE, f"{name} is not a JSON number")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise Unacceptable(NUMBER_OUT_OF_RANGE, f"an integer of {len(text)} digits")
    return int(text)


def _real(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Unacceptable(NUMBER_OUT_OF_RANGE, f"{text[:40]} does not fit a double")
    return value


def nesting_depth(payload: bytes, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects, counted without parsing (brackets in strings skipped);
    the count stops as soon as it passes ``stop_above``."""
    if payload.count(b"[") + payload.count(b"{") <= 1:
        return payload.count(b"[") + payload.count(b"{")
    depth = deepest = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse(payload: bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Any JSON value, within ``max_bytes`` and ``max_depth``."""
    if len(payload) > max_bytes:
        raise Unacceptable(PAYLOAD_TOO_LARGE, f"{len(payload)} bytes, at most {max_bytes}")
    if payload.count(b"[") + payload.count(b"{") > max_depth and nesting_depth(payload, stop_above=max_depth) > max_depth:
        raise Unacceptable(NESTING_TOO_DEEP, f"nested deeper than {max_depth}")
    try:
        return json.loads(payload, parse_constant=_refuse_constant, parse_int=_integer, parse_float=_real)
    except Unacceptable:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise Unacceptable(INVALID_JSON, str(error)[:200]) from None


def parse_object(payload: bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    document = parse(payload, max_bytes, max_depth)
    if not isinstance(document, dict):
        raise Unacceptable(NOT_AN_OBJECT, type(document).__name__)
    return document


def storable_text(value: str, what: str) -> str:
    """``value`` when PostgreSQL can store it as text: no NUL, valid UTF-8 (no lone surrogate)."""
    if "\x00" in value:
        raise Unacceptable(UNSTORABLE_TEXT, f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unacceptable(UNSTORABLE_TEXT, f"{what} contains an unpaired surrogate") from None
    return value


def storable(value: Any, what: str = "value") -> Any:
    """``value`` when PostgreSQL can store it as jsonb (its keys and strings as text, numbers finite)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            storable_text(item, what)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Unacceptable(NUMBER_OUT_OF_RANGE, f"{what} holds a number that is not finite")
        elif isinstance(item, dict):
            for key, child in item.items():
                storable_text(str(key), what)
                pending.append(child)
        elif isinstance(item, list):
            pending.extend(item)
    return value


def printable(value: str | bytes, limit: int = 200) -> str:
    """A short form of untrusted text that is always safe to log and to store as text."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    text = text[:limit]
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
