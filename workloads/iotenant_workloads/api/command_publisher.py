"""The API's broker connection, which sends commands to devices."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Gauge

from iotenant.vocabulary import topics
from iotenant_workloads.api.errors import ApiError

BROKER_UP = Gauge("iotenant_api_broker_up", "1 while connected to the broker (commands)")


class CommandPublisher:
    """The API's broker connection: publishes ``iot/<id>/command`` at QoS 1."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"api-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda *_: (self.connected.set(), BROKER_UP.set(1))
        self.client.on_disconnect = lambda *_: (self.connected.clear(), BROKER_UP.set(0))
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def publish(self, device_id: str, message: dict[str, Any]) -> None:
        info = self.client.publish(topics.device_topic(device_id, topics.COMMAND), json.dumps(message), qos=1)
        info.wait_for_publish(timeout=5)
        if not info.is_published():
            raise ApiError(503, "broker_unavailable", "the broker did not accept the command")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
