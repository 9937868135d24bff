"""How far ahead a device's clock may run: the judge's time checks on their own."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from iotenant_workloads import datagram
from iotenant_workloads.ingest.judge import CLOCK_AHEAD_LIMIT, in_window, not_ahead
from iotenant_workloads.untrusted_json import Unacceptable

RECEIVED = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
WINDOW = (RECEIVED - timedelta(days=7), RECEIVED + timedelta(days=3))


@pytest.mark.parametrize("ahead", [timedelta(0), timedelta(minutes=1), CLOCK_AHEAD_LIMIT, -timedelta(days=6)])
def test_a_time_within_the_allowance_and_the_window_passes(ahead: timedelta) -> None:
    in_window(RECEIVED + ahead, WINDOW, RECEIVED)
    not_ahead(RECEIVED + ahead, RECEIVED)


@pytest.mark.parametrize("moment", [RECEIVED + CLOCK_AHEAD_LIMIT + timedelta(seconds=1), RECEIVED + timedelta(days=2),
                                    datetime(2099, 1, 1, tzinfo=timezone.utc), WINDOW[0] - timedelta(seconds=1)])
def test_a_time_ahead_of_the_clock_or_outside_the_partitions_is_refused_by_reason(moment: datetime) -> None:
    with pytest.raises(Unacceptable) as refused:
        in_window(moment, WINDOW, RECEIVED)
    assert refused.value.reason == datagram.TIMESTAMP_OUT_OF_RANGE
