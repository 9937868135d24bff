"""What the one apply path decides without a cluster: when an object differs, and conditions merged."""

from __future__ import annotations

import pytest

from iotenant.kube.apply import DESIRED_HASH, contains, controlled_by, key_of, needs_apply, quantity, with_hash
from iotenant.kube.conditions import FALSE, TRUE, Condition, merge_conditions

SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"}, "data": {"k": "dg=="}}


def test_an_object_is_applied_when_missing_changed_or_edited_by_hand() -> None:
    desired = with_hash(SECRET)
    assert desired["metadata"]["annotations"][DESIRED_HASH] and "annotations" not in SECRET["metadata"]
    assert needs_apply(desired, None)
    live = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "7", "uid": "x"}}
    assert not needs_apply(desired, live), "server-added fields are not a difference"
    assert needs_apply(with_hash({**SECRET, "data": {"k": "dw=="}}), live), "a changed desired object"
    edited = {**live, "data": {"k": "ZXZpbA=="}}
    assert needs_apply(desired, edited), "a hand edit is healed"


@pytest.mark.parametrize(("live", "desired", "same"), [
    ("500m", "0.5", True), ("1Gi", "1024Mi", True), ("2", 2, True), ("1G", "1Gi", False), ("abc", "abc", True),
    ([1, 2], [1, 2], True), ([1, 2, 3], [1, 2], False), ({"a": 1, "b": 2}, {"a": 1}, True), ({"a": 1}, {"a": 1, "b": 2}, False),
    ("1e3", "1000", False),
])
def test_contains_compares_quantities_by_value(live: object, desired: object, same: bool) -> None:
    assert contains(live, desired) is same


def test_quantities_and_keys() -> None:
    assert quantity("250m") == quantity("0.25") and quantity("nonsense") is None and quantity("1.2.3") is None
    assert key_of(SECRET) == ("Secret", "n", "s")
    owned = {"metadata": {"ownerReferences": [{"uid": "u1", "controller": True}, {"uid": "u2"}]}}
    assert controlled_by(owned, "u1") and not controlled_by(owned, "u2")


def test_conditions_keep_their_transition_time_until_they_flip() -> None:
    first = merge_conditions(None, [Condition("Ready", FALSE, "Provisioning", "wait")], 1, "2026-01-01T00:00:00Z")
    same = merge_conditions(first, [Condition("Ready", FALSE, "Other", "still")], 2, "2026-02-01T00:00:00Z")
    flipped = merge_conditions(same, [Condition("Ready", TRUE, "Ready", "ok")], 2, "2026-03-01T00:00:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "2026-03-01T00:00:00Z"
    with pytest.raises(ValueError, match="CamelCase"):
        Condition("Ready", TRUE, "not camel", "x")
    with pytest.raises(ValueError, match="True, False or Unknown"):
        Condition("Ready", "yes", "Ready", "x")
