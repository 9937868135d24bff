"""The simulator's devices reconnect as careful devices do: spread out at first, backing off while refused."""

from __future__ import annotations

from iotenant.mosquitto.identities import DeviceCredentials
from iotenant_workloads.simulate.device import MAX_RETRY_SECONDS, RECONNECT_SPREAD_SECONDS, RETRY_SECONDS, SimulatedDevice


def device() -> SimulatedDevice:
    return SimulatedDevice(DeviceCredentials.from_url("mqtt://dev-001:secret@127.0.0.1:1883/dev-001"), interval=10.0, measurements=1, keepalive=30)


def test_a_dropped_device_waits_a_random_while_and_backs_off_while_refused() -> None:
    simulated = device()
    first = [simulated.retry_delay() for _ in range(500)]
    assert all(0 <= d <= RECONNECT_SPREAD_SECONDS for d in first) and max(first) - min(first) > RECONNECT_SPREAD_SECONDS / 2, "spread, not at once"
    for failures, ceiling in ((1, RETRY_SECONDS), (3, 4 * RETRY_SECONDS), (30, MAX_RETRY_SECONDS)):
        simulated.failures = failures
        delays = [simulated.retry_delay() for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, min(delays), max(delays))


def test_a_device_wakes_for_its_next_message_or_earlier_ota_progress() -> None:
    simulated = device()
    simulated.next_at = 100.0
    assert simulated.wake_at() == 100.0
    simulated.scheduled = [(40.0, "ota/status", {"state": "downloading"})]
    assert simulated.wake_at() == 40.0
