"""Ingest's broker session: MQTT 5, a persistent session, its subscriptions, and what arrives, queued.

The shared subscription (``$share/<group>/iot/+/<kind>``) brings every kind ingest stores; a direct
subscription to ``iot/+/status`` brings retained status whatever the order of start-up (a new shared
subscription gets no retained messages). Each message says which subscription delivered it (MQTT 5
subscription identifiers): a live status through the direct one is acknowledged and dropped, as its
copy comes through the share group.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Gauge

from iotenant.vocabulary import topics
from iotenant_workloads.ingest.judge import Incoming
from iotenant_workloads.ingest.refusals import BUSY, REJECTED
from iotenant_workloads.ingest.settings import IngestSettings

log = logging.getLogger("iotenant.ingest")

BROKER_UP = Gauge("iotenant_ingest_broker_up", "1 while connected to the broker")
INFLIGHT = Gauge("iotenant_ingest_inflight_messages", "Messages received and not yet acknowledged")
# MQTT 5 subscription identifiers: which of ingest's subscriptions delivered a message.
SHARED_SUBSCRIPTION, RETAINED_STATUS_SUBSCRIPTION = 1, 2
SESSION_EXPIRY_SECONDS = 86400
# Mosquitto (2.0.21, 2.1.2) keeps a shared subscription over its own restart but delivers nothing to
# it until the subscriber is back: a device message in between is acknowledged and lost. Coming back
# within seconds of the broker keeps that window short.
RECONNECT_MAX_SECONDS = 2
# QoS 0 messages are dropped on arrival while this many bytes of them wait (or ``--inflight`` messages
# of any QoS): no Receive Maximum bounds them, and at most once is all they promise.
QOS0_BACKLOG_BYTES = 16 * 1024 * 1024


class Inbox(queue.Queue[Incoming]):
    """What arrived and awaits judging, in order; it also counts the bytes of the QoS 0 messages waiting."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self.qos0_bytes = 0

    def _put(self, item: Incoming) -> None:
        super()._put(item)
        if item.qos == 0:
            self.qos0_bytes += len(item.payload)

    def _get(self) -> Incoming:
        item = super()._get()
        if item.qos == 0:
            self.qos0_bytes -= len(item.payload)
        return item


class BrokerSession:
    def __init__(self, settings: IngestSettings, inbox: Inbox, leaving: Callable[[], bool]) -> None:
        """``leaving``: whether a disconnection is meant (stopping or paused), so not worth a warning."""
        self.settings = settings
        self.inbox = inbox
        self.leaving = leaving
        self.connected = threading.Event()
        self.client = self._mqtt_client()

    def _mqtt_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.settings.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        client.max_inflight_messages_set(self.settings.inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_SECONDS)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        properties.ReceiveMaximum = self.settings.inflight
        properties.MaximumPacketSize = topics.MAX_PACKET_BYTES
        self.client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30, clean_start=False,
                                  properties=properties)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        group = self.settings.share_group
        shared = Properties(PacketTypes.SUBSCRIBE)
        shared.SubscriptionIdentifier = SHARED_SUBSCRIPTION
        client.subscribe([(f"$share/{group}/{topics.all_devices_filter(kind)}", SubscribeOptions(qos=1)) for kind in topics.INGESTED],
                         properties=shared)
        retained = Properties(PacketTypes.SUBSCRIBE)
        retained.SubscriptionIdentifier = RETAINED_STATUS_SUBSCRIPTION
        client.subscribe([(topics.all_devices_filter(topics.STATUS), SubscribeOptions(qos=1))], properties=retained)
        self.connected.set()
        BROKER_UP.set(1)
        log.info("connected to the broker as %s", self.settings.client_id)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object) -> None:
        self.connected.clear()
        BROKER_UP.set(0)
        if not self.leaving():
            log.warning("disconnected from the broker: %s; reconnecting", reason)

    def _on_message(self, client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        delivered_by = getattr(message.properties, "SubscriptionIdentifier", None) or []
        if SHARED_SUBSCRIPTION not in delivered_by and not message.retain:
            # A live status through the direct subscription: its copy comes through the share group.
            if message.qos > 0:
                client.ack(message.mid, message.qos)
            return
        if message.qos == 0 and (self.inbox.qos0_bytes >= QOS0_BACKLOG_BYTES or self.inbox.qsize() >= self.settings.inflight):
            REJECTED.labels(BUSY).inc()  # no device's flood can grow this process
            return
        self.inbox.put(Incoming(message.topic, bytes(message.payload), message.mid, message.qos, datetime.now(timezone.utc)))
        INFLIGHT.inc()

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
