"""Alert rules (``features.alerts``): what a rule may say, and how a rule moves an alert. Pure.

Two kinds of rule, for one device or for all of them:

- ``threshold``: a measurement ``type`` compared with ``operator`` (``>``, ``<``, ``>=``, ``<=``) to
  ``threshold``; the alert fires once the condition has held for ``forSeconds`` (by the
  measurements' own timestamps, so a late batch is judged as it happened), and resolves at the
  first measurement for which it no longer holds. A measurement older than the newest one judged
  for the same rule and device changes nothing.
- ``silence``: no telemetry received from a device for ``silenceSeconds``; resolves when it speaks.

An alert fires once: while it fires, the same rule and device raise no other.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from iotenant.vocabulary import topics
from iotenant_workloads import datagram
from iotenant_workloads.untrusted_json import Unacceptable

THRESHOLD, SILENCE = "threshold", "silence"
KINDS = (THRESHOLD, SILENCE)
COMPARISONS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
MAX_NAME = 64
MAX_FOR_SECONDS = 7 * 86400
MIN_SILENCE_SECONDS, MAX_SILENCE_SECONDS = 5, 7 * 86400
FIELDS = frozenset({"name", "kind", "deviceId", "type", "operator", "threshold", "forSeconds", "silenceSeconds"})
FIRING, RESOLVED = "firing", "resolved"


class InvalidRule(ValueError):
    """A field of a rule that breaks its rule; the message names both."""


@dataclass(frozen=True)
class AlertRule:
    id: int
    name: str
    kind: str
    device_id: str | None  # None: every device
    type: str | None = None
    operator: str | None = None
    threshold: float | None = None
    for_seconds: int = 0
    silence_seconds: int | None = None

    def watches(self, device_id: str, measurement_type: str) -> bool:
        return self.kind == THRESHOLD and self.type == measurement_type and self.device_id in (None, device_id)

    def holds(self, value: float) -> bool:
        assert self.operator is not None and self.threshold is not None
        return COMPARISONS[self.operator](value, self.threshold)

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"id": self.id, "name": self.name, "kind": self.kind, "deviceId": self.device_id}
        if self.kind == THRESHOLD:
            shown |= {"type": self.type, "operator": self.operator, "threshold": self.threshold, "forSeconds": self.for_seconds}
        else:
            shown |= {"silenceSeconds": self.silence_seconds}
        return shown


def _seconds(body: dict[str, Any], name: str, lowest: int, highest: int, default: int | None = None) -> int:
    """An integer in range; 60.0 is the integer 60, as JSON Schema counts it."""
    value = body.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise InvalidRule(f"{name} must be an integer from {lowest} to {highest}")
    return value


def judge_rule(body: dict[str, Any]) -> AlertRule:
    """A new rule (id 0) from the API's body; unknown fields and fields of the other kind are refused."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidRule(f"unknown field {unknown[0]!r}: allowed are {', '.join(sorted(FIELDS))}")
    name = body.get("name")
    try:
        name = datagram.text(name, "name", MAX_NAME, "invalid_body")
    except Unacceptable as error:
        raise InvalidRule(error.detail or f"name must be a string of 1..{MAX_NAME} characters") from None
    kind = body.get("kind", THRESHOLD)
    if kind not in KINDS:
        raise InvalidRule(f"kind must be one of {', '.join(KINDS)}")
    device_id = body.get("deviceId")
    if device_id is not None and not topics.is_device_id(device_id):
        raise InvalidRule(f"deviceId must be a device id ({topics.DEVICE_ID_RULE}) or null")
    if kind == SILENCE:
        extra = sorted({"type", "operator", "threshold", "forSeconds"} & set(body))
        if extra:
            raise InvalidRule(f"{extra[0]} is not a field of a silence rule")
        return AlertRule(0, name, SILENCE, device_id,
                         silence_seconds=_seconds(body, "silenceSeconds", MIN_SILENCE_SECONDS, MAX_SILENCE_SECONDS))
    if "silenceSeconds" in body:
        raise InvalidRule("silenceSeconds is not a field of a threshold rule")
    try:
        measurement_type = datagram.text(body.get("type"), "type", datagram.MAX_TEXT, "invalid_body")
    except Unacceptable as error:
        raise InvalidRule(error.detail or "type is required") from None
    comparison = body.get("operator")
    if not isinstance(comparison, str) or comparison not in COMPARISONS:
        raise InvalidRule(f"operator must be one of {' '.join(COMPARISONS)}")
    try:
        threshold = datagram.number(body.get("threshold"), "threshold")
    except Unacceptable as error:
        raise InvalidRule(error.detail or "threshold must be a finite number") from None
    return AlertRule(0, name, THRESHOLD, device_id, measurement_type, comparison, threshold,
                     _seconds(body, "forSeconds", 0, MAX_FOR_SECONDS, default=0))


@dataclass(frozen=True)
class Observation:
    """A measurement a threshold rule watches."""

    rule_id: int
    device_id: str
    ts: datetime
    value: float


@dataclass(frozen=True)
class PairState:
    """What a rule knows about one device between batches."""

    holding_since: datetime | None = None  # when the condition began to hold; None while it does not
    last_ts: datetime | None = None  # the newest measurement judged
    firing: bool = False


@dataclass(frozen=True)
class Transition:
    state: str  # FIRING or RESOLVED
    at: datetime
    value: float


def advance(rule: AlertRule, state: PairState, observations: Iterable[Observation]) -> tuple[PairState, list[Transition]]:
    """The pair's state after ``observations`` (any order), and the alerts that fire or resolve on the way."""
    transitions: list[Transition] = []
    for observation in sorted(observations, key=lambda o: o.ts):
        if state.last_ts is not None and observation.ts < state.last_ts:
            continue
        if rule.holds(observation.value):
            since = state.holding_since or observation.ts
            fires = not state.firing and (observation.ts - since).total_seconds() >= rule.for_seconds
            state = PairState(since, observation.ts, state.firing or fires)
            if fires:
                transitions.append(Transition(FIRING, observation.ts, observation.value))
        else:
            if state.firing:
                transitions.append(Transition(RESOLVED, observation.ts, observation.value))
            state = replace(state, holding_since=None, last_ts=observation.ts, firing=False)
    return state, transitions
