"""One device cannot take its broker's memory: floods played against the shipped Mosquitto running the
configuration the operator generates for the starter plan, with an honest device's PUBACK checked
after each.

- QoS 2 messages whose PUBREL never comes (the broker must keep each until it does), over MQTT 5
  and 3.1.1;
- a device that publishes QoS 1 to its own topics, subscribed to them, and never reads its socket
  (the broker would queue every echo for it).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotenant.licensing.plans import load_catalogue
from iotenant.mosquitto.identities import Identity, new_share_group, service_identities
from iotenant.render.broker import memory_limit_bytes
from iotenant.render.builders import SMALL, resources
from iotenant_testbed.mosquitto import MosquittoBroker
from mqtt_probe import Probe
from raw_mqtt import MQTT_5, MQTT_311, RawClient, publish_packet, subscribe_packet
from real_services import resident_kib

STARTER = load_catalogue()["starter"].broker
PAYLOAD = b"x" * (STARTER.maxPacketBytes - 200)  # as large as the plan lets a packet be
FLOOD_SECONDS = 8.0
# What the broker may grow by under one device's flood: far below its container's limit (512Mi).
GROWTH_LIMIT_MIB = 64
DEVICES = [Identity(name, f"{name}-password", None, "fleet/floods") for name in ("attacker", "honest")]


@pytest.fixture
def starter_broker(service_root: Path) -> Iterator[MosquittoBroker]:
    server = MosquittoBroker(root=Path(tempfile.mkdtemp(prefix="broker-floods-", dir=service_root)), limits=STARTER,
                             container_memory_bytes=memory_limit_bytes(resources(None, SMALL)),
                             identities=[*service_identities("ingest-pw", "api-pw"), *DEVICES], share_group=new_share_group())
    server.write_configuration()
    server.start()
    yield server
    server.stop()


class PeakMemory:
    """The broker's highest resident memory while the block runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib, self._stop = pid, resident_kib(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kib = max(self.peak_kib, resident_kib(self.pid))

    def __enter__(self) -> "PeakMemory":
        self.start_kib = resident_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


def assert_honest_device_served(broker: MosquittoBroker) -> None:
    honest = Probe.connect(broker.port, "honest", "honest-password")
    try:
        assert honest.publish("iot/honest/telemetry", b'{"v": 2}') in (0, 16)
    finally:
        honest.close()


def flood_stays_bounded(broker: MosquittoBroker, attacker: RawClient, qos: int, what: str) -> None:
    """The attacker publishes as fast as the broker reads, for FLOOD_SECONDS; then the broker's growth is
    judged and an honest device of the same tenant must still get its PUBACK."""
    packets = [publish_packet("iot/attacker/telemetry", PAYLOAD, qos, packet_id, attacker.version) for packet_id in range(1, 65536)]
    with PeakMemory(broker.process.pid) as memory:  # type: ignore[union-attr]
        sent = attacker.send_for(packets, FLOOD_SECONDS)
    attacker.close()
    print(f"{what}: {sent} sent, broker +{memory.growth_mib:.0f} MiB")
    assert memory.growth_mib < GROWTH_LIMIT_MIB, f"{what}: {sent} messages grew the broker by {memory.growth_mib:.0f} MiB"
    assert_honest_device_served(broker)


@pytest.mark.parametrize("version", [MQTT_5, MQTT_311], ids=["mqtt5", "mqtt311"])
def test_qos2_messages_never_released_cannot_take_the_brokers_memory(starter_broker: MosquittoBroker, version: int) -> None:
    attacker = RawClient(starter_broker.port, "attacker", "attacker-password", version)
    flood_stays_bounded(starter_broker, attacker, 2, f"QoS 2 without PUBREL (MQTT {'5' if version == MQTT_5 else '3.1.1'})")


def test_a_device_that_never_reads_its_socket_cannot_take_the_brokers_memory(starter_broker: MosquittoBroker) -> None:
    attacker = RawClient(starter_broker.port, "attacker", "attacker-password", MQTT_311)
    attacker.sock.sendall(subscribe_packet("iot/attacker/#", 1, MQTT_311))
    flood_stays_bounded(starter_broker, attacker, 1, "QoS 1 to its own subscription, never read")
