"""Alert rules judged and advanced without any service: fire once, for-duration, resolve, late data."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from iotenant_workloads.alert_rules import (
    FIRING, RESOLVED, SILENCE, AlertRule, InvalidRule, Observation, PairState, advance, judge_rule,
)

T0 = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
HOT = AlertRule(1, "hot", "threshold", None, "temp", ">", 30.0, 0)


def seen(*values: float, start: int = 0, rule: AlertRule = HOT) -> list[Observation]:
    return [Observation(rule.id, "dev-1", T0 + timedelta(seconds=start + i), v) for i, v in enumerate(values)]


def test_fires_once_while_the_condition_holds_and_resolves_when_it_clears() -> None:
    state, transitions = advance(HOT, PairState(), seen(31, 35, 40, 29, 25))
    assert [(t.state, t.value) for t in transitions] == [(FIRING, 31), (RESOLVED, 29)]
    assert state == PairState(None, T0 + timedelta(seconds=4), False)
    state, transitions = advance(HOT, state, seen(32, 33, start=10))
    assert [t.state for t in transitions] == [FIRING] and state.firing


def test_for_duration_counts_from_when_the_condition_began_across_batches() -> None:
    rule = AlertRule(2, "hot for 5 s", "threshold", "dev-1", "temp", ">=", 30.0, 5)
    state, transitions = advance(rule, PairState(), seen(30, 31, 32, rule=rule))
    assert transitions == [] and state.holding_since == T0
    state, transitions = advance(rule, state, seen(33, 34, 35, rule=rule, start=3))  # t = 3, 4, 5
    assert [(t.state, t.at) for t in transitions] == [(FIRING, T0 + timedelta(seconds=5))]
    state, transitions = advance(rule, PairState(), seen(31, 10, 31, 31, 31, 31, rule=rule))  # a dip restarts the clock
    assert transitions == [] and state.holding_since == T0 + timedelta(seconds=2)


def test_older_measurements_change_nothing_and_order_within_a_batch_does_not_matter() -> None:
    state, _ = advance(HOT, PairState(), seen(35))
    late = [Observation(1, "dev-1", T0 - timedelta(seconds=60), 0.0)]
    assert advance(HOT, state, late) == (state, [])
    shuffled = list(reversed(seen(31, 20)))
    assert [t.state for t in advance(HOT, PairState(), shuffled)[1]] == [FIRING, RESOLVED]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 65}, "name"), ({"name": "a\u0000b"}, "name"),
        ({"name": "r", "type": "t", "operator": "==", "threshold": 1}, "operator"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": "1"}, "threshold"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": True}, "threshold"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": 10**400}, "threshold"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": math.inf}, "threshold"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": 1, "forSeconds": -1}, "forSeconds"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": 1, "forSeconds": 10**9}, "forSeconds"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": 1, "forSeconds": 1.5}, "forSeconds"),
        ({"name": "r", "type": "t" * 65, "operator": ">", "threshold": 1}, "type"),
        ({"name": "r", "operator": ">", "threshold": 1}, "type"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": 1, "deviceId": "a/b"}, "deviceId"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": 1, "deviceId": "+"}, "deviceId"),
        ({"name": "r", "type": "t", "operator": ">", "threshold": 1, "silenceSeconds": 60}, "silenceSeconds"),
        ({"name": "r", "kind": "silence", "silenceSeconds": 1}, "silenceSeconds"),
        ({"name": "r", "kind": "silence", "silenceSeconds": 60, "threshold": 3}, "threshold"),
        ({"name": "r", "kind": "sql"}, "kind"),
        ({"name": "r", "kind": "silence", "silenceSeconds": 60, "owner": "x"}, "owner"),
        # Wrong JSON types where a word is expected: judged, never a crash (an object is not hashable).
        ({"name": "r", "type": "t", "operator": {}, "threshold": 1}, "operator"),
        ({"name": "r", "type": "t", "operator": [">"], "threshold": 1}, "operator"),
        ({"name": "r", "type": "t", "operator": None, "threshold": 1}, "operator"),
        ({"name": "r", "kind": {"silence": True}, "silenceSeconds": 60}, "kind"),
        ({"name": "r", "kind": "silence", "silenceSeconds": 60.5}, "silenceSeconds"),
        ({"name": "r", "kind": "silence", "silenceSeconds": 1e300}, "silenceSeconds"),
    ],
)
def test_hostile_rules_are_refused_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(InvalidRule, match=field):
        judge_rule(body)


def test_good_rules_are_taken_as_written() -> None:
    rule = judge_rule({"name": "cold", "type": "temp", "operator": "<=", "threshold": -5, "forSeconds": 30, "deviceId": "dev-1"})
    assert (rule.kind, rule.device_id, rule.threshold, rule.for_seconds) == ("threshold", "dev-1", -5.0, 30)
    assert rule.holds(-5) and not rule.holds(-4.9)
    silence = judge_rule({"name": "quiet", "kind": "silence", "silenceSeconds": 300})
    assert (silence.kind, silence.device_id, silence.silence_seconds) == (SILENCE, None, 300)
    assert silence.to_json() == {"id": 0, "name": "quiet", "kind": "silence", "deviceId": None, "silenceSeconds": 300}


def test_an_integral_number_of_seconds_counts_as_an_integer_and_the_next_rule_is_judged_alike() -> None:
    """JSON Schema (and every JSON encoder that writes 60.0) counts 60.0 as the integer 60."""
    assert judge_rule({"name": "quiet", "kind": "silence", "silenceSeconds": 60.0}).silence_seconds == 60
    with pytest.raises(InvalidRule):
        judge_rule({"name": "r", "type": "t", "operator": {}, "threshold": 1})
    assert judge_rule({"name": "hot", "type": "t", "operator": ">", "threshold": 1, "forSeconds": 30.0}).for_seconds == 30
