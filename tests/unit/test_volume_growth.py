"""Volume growth's pure decisions: sizes compared as quantities, a smaller size never applied."""

from __future__ import annotations

from typing import Any

from iotenant.customer_instance.volume_growth import bytes_of, claim_size, grow_volumes, with_claim_size
from iotenant.kube.apply import key_of
from iotenant.render.builders import stateful_set
from iotenant.vocabulary import meta

OWNER = meta.Owner("acme", "00000000-0000-0000-0000-000000000001")


class NoCalls:
    """Stands where the API would: any request is a failure of the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"no request expected, got {name}")


def prometheus(storage: str) -> dict:
    return stateful_set(OWNER, "prometheus", "monitoring", 1, {"spec": {}}, storage)


def test_sizes_are_compared_as_quantities() -> None:
    assert bytes_of("1Gi") == bytes_of("1024Mi") and bytes_of("5G") < bytes_of("5Gi") < bytes_of("6G")
    assert claim_size(prometheus("2Gi")) == "2Gi"
    assert claim_size(stateful_set(OWNER, "x", "broker", 1, {"spec": {}}, None)) is None


def test_a_smaller_size_keeps_the_volume_as_it_is_and_asks_nothing_of_the_cluster() -> None:
    desired, live = prometheus("10Gi"), prometheus("50Gi")
    growth = grow_volumes(NoCalls(), OWNER, [desired], {key_of(live): live})  # type: ignore[arg-type]
    assert [claim_size(m) for m in growth.desired] == ["50Gi"] and claim_size(desired) == "10Gi", "the desired manifest is left unchanged"
    assert growth.refusals == {} and growth.live == {key_of(live): live}


def test_an_equal_size_written_otherwise_changes_nothing() -> None:
    desired, live = prometheus("1024Mi"), prometheus("1Gi")
    growth = grow_volumes(NoCalls(), OWNER, [desired], {key_of(live): live})  # type: ignore[arg-type]
    assert [claim_size(m) for m in growth.desired] == ["1Gi"], "the template is left as it was made"
    assert growth.live == {key_of(live): live}
    assert claim_size(with_claim_size(desired, "3Gi")) == "3Gi"
