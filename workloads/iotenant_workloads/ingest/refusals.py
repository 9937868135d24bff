"""Refused device messages: every one counted, by reason and by device; only a bounded sample kept.

A flood of bad messages must cost the tenant neither storage nor the database's time: each refusal
is counted (the metric by reason, the ``refusal_counts`` table by device and reason), but a payload
sample is kept for at most one message per device and reason every ``SAMPLE_SECONDS``, truncated
to ``SAMPLE_BYTES``; the samples table itself is pruned to a byte budget
(``database.REJECTED_BYTES_KEPT``).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from iotenant_workloads.untrusted_json import printable

REJECTED = Counter("iotenant_ingest_rejected_total", "Messages refused, by reason", ["reason"])
# A QoS 0 message dropped on arrival while ingest's backlog is full (counted only: no device row).
BUSY = "busy"
SAMPLES_KEPT = Counter("iotenant_ingest_rejected_samples_total", "Refused messages whose payload sample was stored")

SAMPLE_SECONDS = 10.0
SAMPLE_BYTES = 512
MAX_DETAIL = 300
MAX_TOPIC = 256
# The sampling memory: one entry per (device, reason) seen recently, at most this many.
MAX_SAMPLE_KEYS = 50_000


@dataclass(frozen=True)
class RefusedMessage:
    """A refused message as it is stored: every text made safe for PostgreSQL and for logs."""

    topic: str
    device_id: str
    reason: str
    detail: str
    payload: bytes | None  # None: counted, no sample kept


class Refusals:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sampled_at: OrderedDict[tuple[str, str], float] = OrderedDict()

    def refuse(self, topic: str, device_id: str, reason: str, detail: str, payload: bytes) -> RefusedMessage:
        REJECTED.labels(reason).inc()
        key = (device_id, reason)
        now = self._clock()
        sample: bytes | None = None
        last = self._sampled_at.get(key)
        if last is None or now - last >= SAMPLE_SECONDS:
            self._sampled_at[key] = now
            self._sampled_at.move_to_end(key)
            while len(self._sampled_at) > MAX_SAMPLE_KEYS:
                self._sampled_at.popitem(last=False)
            sample = payload[:SAMPLE_BYTES]
            SAMPLES_KEPT.inc()
        return RefusedMessage(printable(topic, MAX_TOPIC), printable(device_id, 64), reason, printable(detail, MAX_DETAIL), sample)


def tally(refused: list[RefusedMessage]) -> Tally[tuple[str, str]]:
    """Refusals per (device, reason)."""
    return Tally((message.device_id, message.reason) for message in refused)
