"""Fleet admission without a cluster: oldest first, whole fleets, unique device ids, the licence's bounds."""

from __future__ import annotations

from iotenant.device_fleet.admission import ADMITTED, DEVICE_LIMIT_EXCEEDED, DUPLICATE_DEVICE_IDS, Fleet, admit, device_ids
from iotenant.licensing.licence import Limits

LIMITS = Limits(maxDevices=10, maxFleets=3, retentionDays=7, maxMessagesPerSecond=50)


def fleet(name: str, created: str, spec: dict, deleting: bool = False) -> Fleet:
    metadata = {"name": name, "namespace": "customer-a", "uid": f"uid-{name}", "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return Fleet.from_body({"metadata": metadata, "spec": spec})


def test_device_ids_from_a_count_or_a_list() -> None:
    assert device_ids({"devices": {"count": 3, "idPrefix": "t-"}}) == ["t-001", "t-002", "t-003"]
    assert device_ids({"devices": {"ids": ["a", "b"]}}) == ["a", "b"]


def test_fleets_are_admitted_whole_and_oldest_first() -> None:
    decisions = admit([
        fleet("late", "2026-01-03T00:00:00Z", {"devices": {"count": 5, "idPrefix": "l"}}),
        fleet("early", "2026-01-01T00:00:00Z", {"devices": {"count": 6, "idPrefix": "e"}}),
        fleet("small", "2026-01-04T00:00:00Z", {"devices": {"count": 4, "idPrefix": "s"}}),
    ], LIMITS)
    assert [(d.fleet.name, d.reason) for d in decisions] == [("early", ADMITTED), ("late", DEVICE_LIMIT_EXCEEDED), ("small", ADMITTED)]
    assert "6" in decisions[1].message and "10" in decisions[1].message


def test_duplicate_ids_fleet_count_and_deleting_fleets() -> None:
    decisions = admit([
        fleet("a", "2026-01-01T00:00:00Z", {"devices": {"ids": ["x", "y"]}}),
        fleet("b", "2026-01-02T00:00:00Z", {"devices": {"ids": ["y", "z"]}}),
        fleet("gone", "2026-01-02T12:00:00Z", {"devices": {"ids": ["q"]}}, deleting=True),
        fleet("c", "2026-01-03T00:00:00Z", {"devices": {"ids": ["c1"]}}),
        fleet("d", "2026-01-04T00:00:00Z", {"devices": {"ids": ["d1"]}}),
        fleet("e", "2026-01-05T00:00:00Z", {"devices": {"ids": ["e1"]}}),
    ], LIMITS)
    reasons = {d.fleet.name: d.reason for d in decisions}
    assert reasons == {"a": ADMITTED, "b": DUPLICATE_DEVICE_IDS, "c": ADMITTED, "d": ADMITTED, "e": DEVICE_LIMIT_EXCEEDED}
    assert "fleet a" in next(d.message for d in decisions if d.fleet.name == "b")
