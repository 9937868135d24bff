"""An MQTT 5 client for tests that need the broker's verdicts: CONNACK, PUBACK and SUBACK reason codes."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

NOT_AUTHORIZED = 135
BAD_CREDENTIALS = 134


class Refused(Exception):
    def __init__(self, reason: Any) -> None:
        super().__init__(f"connection refused: {reason}")
        self.reason = reason


class Probe:
    """One MQTT 5 connection as ``username``; ``Probe.connect`` raises ``Refused`` when the broker says no."""

    def __init__(self, port: int, username: str, password: str, client_id: str | None = None, host: str = "127.0.0.1",
                 will_topic: str | None = None, session_seconds: int = 0) -> None:
        self.username = username
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        if will_topic is not None:
            self.client.will_set(will_topic, b'{"state": "offline"}', qos=1)
        self.client.reconnect_delay_set(3600, 3600)  # a dropped probe stays dropped: tests look for that
        self.connack = threading.Event()
        self.connect_reason: Any = None
        self.disconnected = threading.Event()
        self.disconnect_reason: Any = None
        self.messages: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, Any] = {}
        self._lock = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.append(message)
        self.host, self.port = host, port
        self.session_seconds = session_seconds

    @classmethod
    def connect(cls, port: int, username: str, password: str, **kwargs: Any) -> "Probe":
        probe = cls(port, username, password, **kwargs)
        properties = None
        if probe.session_seconds:  # a session the broker keeps (and queues for) while the client is away
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = probe.session_seconds
        probe.client.connect(probe.host, port, keepalive=30, clean_start=not probe.session_seconds, properties=properties)
        probe.client.loop_start()
        if not probe.connack.wait(10):
            probe.close()
            raise TimeoutError(f"{username}: no CONNACK within 10 s")
        if getattr(probe.connect_reason, "is_failure", False):
            probe.close()
            raise Refused(probe.connect_reason)
        return probe

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        self.connect_reason = reason
        self.connack.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        self.disconnect_reason = reason
        self.disconnected.set()
        self.connack.set()

    def _on_ack(self, _c: mqtt.Client, _u: object, mid: int, reason: Any, _p: object) -> None:
        with self._lock:
            self._acks[mid] = reason
            self._lock.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, reasons: list[Any], _p: object) -> None:
        with self._lock:
            self._acks[mid] = reasons
            self._lock.notify_all()

    def _wait_ack(self, mid: int, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._lock:
            while mid not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.username}: no acknowledgement for message {mid}")
                self._lock.wait(remaining)
            return self._acks.pop(mid)

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK reason code (0 or 16: accepted, 135: not authorised)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return int(self._wait_ack(info.mid).value)

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; the SUBACK reason code (0..2: granted QoS, 135: not authorised)."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        reasons = self._wait_ack(mid)
        return int(reasons[0].value)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Gone without DISCONNECT, as a device that loses power: the broker publishes its will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def refused(port: int, username: str, password: str) -> bool:
    """Whether the broker refuses this username and password."""
    try:
        Probe.connect(port, username, password).close()
    except Refused:
        return True
    return False
