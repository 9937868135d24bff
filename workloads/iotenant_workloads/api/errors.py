"""How the API refuses: ``ApiError``, the JSON answer every refusal becomes (a stable ``error`` code and a
message naming the field and the rule), and ``StreamBroken`` for an answer that cannot be finished."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
# Every refusal's body (401, 403, 404, 405, 409, 413, 415, 422, 429, 503): a stable code and a message.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error", "message"], "additionalProperties": False,
    "properties": {"error": {"type": "string", "description": "stable code, e.g. invalid_parameter"},
                   "message": {"type": "string", "description": "what was refused and why, naming the field and the rule"}},
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class StreamBroken(Exception):
    """A streamed answer that cannot be finished (its status is sent): the connection is closed, so the
    client sees an incomplete answer rather than a short one that looks whole."""
