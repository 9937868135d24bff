"""A hand-written MQTT client for attacks a well-behaved library will not make: QoS 2 messages whose
PUBREL never comes, and a client that publishes without ever reading its socket."""

from __future__ import annotations

import socket
import struct
import time

MQTT_311, MQTT_5 = 4, 5


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, version: int) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # username, password, clean start
    properties = b"\x00" if version == MQTT_5 else b""
    body = _string("MQTT") + bytes([version, flags]) + struct.pack("!H", 60) + properties
    return _packet(0x10, body + _string(client_id) + _string(username) + _string(password))


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int, version: int) -> bytes:
    properties = b"\x00" if version == MQTT_5 else b""
    identifier = struct.pack("!H", packet_id) if qos else b""
    return _packet(0x30 | (qos << 1), _string(topic) + identifier + properties + payload)


def subscribe_packet(topic_filter: str, packet_id: int, version: int) -> bytes:
    properties = b"\x00" if version == MQTT_5 else b""
    return _packet(0x82, struct.pack("!H", packet_id) + properties + _string(topic_filter) + b"\x01")


class RawClient:
    """One TCP connection speaking just enough MQTT to misbehave."""

    def __init__(self, port: int, username: str, password: str, version: int = MQTT_5) -> None:
        self.version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(connect_packet(username, username, password, version))
        connack = self.sock.recv(64)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"{username}: CONNACK {connack!r}")

    def send_for(self, packets: list[bytes], seconds: float) -> int:
        """Send ``packets`` in turn (again from the start when done) for at most ``seconds``, never reading;
        returns how many went out before the time was up or the broker closed the connection."""
        sent = 0
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                self.sock.sendall(packets[sent % len(packets)])
            except OSError:  # the time ran out while the broker read no more, or it closed the connection
                break
            sent += 1
        return sent

    def close(self) -> None:
        self.sock.close()
