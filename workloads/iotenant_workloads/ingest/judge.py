"""Judging each message ingest receives, alone: stored, or refused with a reason; nothing escapes.

The licence's limits are applied here: devices, the tenant's messages per second (telemetry), and
one device's share of them (every kind: each becomes a row or an update).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter

from iotenant.licensing.licence import VerifiedLicence
from iotenant.vocabulary import topics
from iotenant_workloads import datagram, ota
from iotenant_workloads.ingest.refusals import Refusals, RefusedMessage
from iotenant_workloads.ingest.telemetry_store import Accepted
from iotenant_workloads.rate_limits import KeyedBuckets, TokenBucket
from iotenant_workloads.untrusted_json import Unacceptable

log = logging.getLogger("iotenant.ingest")

RECEIVED = Counter("iotenant_ingest_received_total", "MQTT messages received", ["kind"])

# A device may use at most this share of the tenant's messages per second (at least one per second),
# in bursts of a few seconds' worth (a device catching up after a lost connection).
DEVICE_SHARE_OF_RATE = 0.1
DEVICE_BURST_SECONDS = 2.0
# How far a device's clock may run ahead of ingest's: a message or measurement dated later is refused,
# so that no device can pin "last telemetry", its online state or an alert with a date to come.
CLOCK_AHEAD_LIMIT = timedelta(minutes=5)


def not_ahead(moment: datetime, received: datetime) -> None:
    """Refuse a time later than the message's arrival plus the clock allowance."""
    if moment > received + CLOCK_AHEAD_LIMIT:
        raise Unacceptable(datagram.TIMESTAMP_OUT_OF_RANGE, f"{moment.isoformat()} is ahead of this service's clock")


def in_window(moment: datetime, window: tuple[datetime, datetime], received: datetime) -> None:
    """Refuse a time outside the stored partitions (retention) or ahead of the clock allowance."""
    if not window[0] <= moment < window[1]:
        raise Unacceptable(datagram.TIMESTAMP_OUT_OF_RANGE, moment.isoformat())
    not_ahead(moment, received)


@dataclass
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received: datetime


class MessageJudge:
    def __init__(self) -> None:
        self.known_devices: set[str] = set()
        self.bucket: TokenBucket | None = None
        self.device_buckets: KeyedBuckets | None = None
        self.refusals = Refusals()

    def apply_limits(self, verified: VerifiedLicence | None, replicas: int) -> None:
        """The rates of the licence in force, shared between ``replicas`` of ingest (none without a licence)."""
        if verified is None:
            self.bucket = self.device_buckets = None
            return
        limits = verified.claims.limits
        rate = limits.maxMessagesPerSecond / max(1, replicas)
        if self.bucket is None or self.bucket.rate != rate:
            self.bucket = TokenBucket(rate)
            self.device_buckets = KeyedBuckets(max(1.0, rate * DEVICE_SHARE_OF_RATE), limits.maxDevices, DEVICE_BURST_SECONDS)

    def _take_device_share(self, device_id: str) -> None:
        """One message of this device's share of the tenant's rate, or a refusal."""
        if self.device_buckets is not None and not self.device_buckets.take(device_id):
            raise Unacceptable(datagram.DEVICE_RATE_LIMITED, f"over this device's {self.device_buckets.rate:g} msg/s")

    def judge(self, item: Incoming, verified: VerifiedLicence | None, window: tuple[datetime, datetime],
              accepted: list[Accepted], refused: list[RefusedMessage]) -> None:
        """Accept or refuse one message; whatever it holds, nothing escapes."""
        device_id = ""
        try:
            device_id, kind = datagram.topic_parts(item.topic)
            RECEIVED.labels(kind).inc()
            if verified is None:  # the licence went while this batch was collected: the next batch pauses
                raise Unacceptable(datagram.UNEXPECTED, "no valid licence")
            limits = verified.claims.limits
            if device_id not in self.known_devices and len(self.known_devices) >= limits.maxDevices:
                raise Unacceptable(datagram.DEVICE_LIMIT, f"licence allows {limits.maxDevices} devices")
            message: datagram.Telemetry | datagram.DeviceEvent | ota.Report
            if kind == topics.TELEMETRY:
                message = datagram.parse_telemetry(device_id, item.payload)
                for moment in (message.ts, *(measurement.ts for measurement in message.measurements)):
                    in_window(moment, window, item.received)
                self._take_device_share(device_id)
                if self.bucket is not None and not self.bucket.take():
                    raise Unacceptable(datagram.RATE_LIMITED, f"over {limits.maxMessagesPerSecond} msg/s")
            elif kind == topics.OTA_STATUS:  # each report is a row: the device's own rate bounds them
                message = ota.parse_report(device_id, item.payload, item.received)
                self._take_device_share(device_id)
            else:  # hello, status, command/ack: each is a write too, so it takes from the device's share
                message = datagram.parse_event(device_id, kind, item.payload, item.received)
                not_ahead(message.ts, item.received)
                self._take_device_share(device_id)
            self.known_devices.add(device_id)
            accepted.append(Accepted(item.topic, item.payload, message))
        except Unacceptable as refusal:
            if refusal.reason == datagram.BAD_TOPIC:
                RECEIVED.labels("unknown").inc()
            refused.append(self.refusals.refuse(item.topic, device_id, refusal.reason, refusal.detail, item.payload))
        except Exception as error:  # a defect in judging must cost one message, never the service
            log.exception("unexpected error judging a message on %s", item.topic[:200])
            refused.append(self.refusals.refuse(item.topic, device_id, datagram.UNEXPECTED, type(error).__name__, item.payload))
