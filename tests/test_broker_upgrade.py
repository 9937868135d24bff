"""A broker volume made by the release the stack shipped before is taken over by the shipped one.

The previous release (Mosquitto 2.0.21) gave every device a role of its own with its topics spelt
out; the shipped one (2.1) confines every device with a device role by pattern. The volume's
dynamic-security file, its stored sessions, queued and retained messages come across; the operator's
next sync moves the devices to their device roles and removes the old ones.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from conftest import wait_for
from iotenant.mosquitto.config import Listeners, mosquitto_conf
from iotenant.mosquitto.dynamic_security import DynamicSecurity
from iotenant.mosquitto.identities import (
    DEVICE_ROLE_PREFIX, INGEST, Identity, device_role_name, dynamic_security_config, service_identities,
)
from iotenant.settings import MOSQUITTO_VERSION
from iotenant.vocabulary import topics
from iotenant_testbed.mosquitto import MosquittoBroker
from iotenant_testbed.mosquitto_package import PREVIOUS, installed
from mqtt_probe import NOT_AUTHORIZED, Probe

SHARE_GROUP = "ingest-upgrade"
DEVICES = {name: Identity(name, f"{name}-password", None, "fleet/meters") for name in ("m1", "m2")}
SERVICES = service_identities("ingest-pw", "api-pw")


def previous_release_seed() -> dict[str, Any]:
    """The dynamic-security document as the previous release wrote it: a role per device, topics spelt out."""
    document = dynamic_security_config([*SERVICES, *DEVICES.values()], SHARE_GROUP)
    document["roles"] = [role for role in document["roles"] if not role["rolename"].startswith(DEVICE_ROLE_PREFIX)]
    for client in document["clients"]:
        if client["username"] in DEVICES:
            own = f"device:{client['username']}"
            client["roles"] = [{"rolename": own}]
            allows = [("publishClientSend", topics.device_topic(client["username"], kind)) for kind in topics.DEVICE_PUBLISHES]
            allows += [("subscribePattern", topics.device_filter(client["username"])),
                       ("publishClientReceive", topics.device_filter(client["username"]))]
            document["roles"].append({"rolename": own, "acls": [{"acltype": t, "topic": topic, "priority": 0, "allow": True}
                                                                for t, topic in allows]})
    return document


def test_a_volume_of_the_previous_release_keeps_its_identities_sessions_and_retained_messages(service_root: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="broker-upgrade-", dir=service_root))
    old = MosquittoBroker(root=root, share_group=SHARE_GROUP, package=installed(PREVIOUS))
    old.write_generated(*_generated(old))
    old.start()
    try:
        assert old.package.version() == f"mosquitto version {PREVIOUS.version}"
        ingest = Probe.connect(old.port, INGEST, "ingest-pw", client_id="ingest-0", session_seconds=3600)
        assert ingest.subscribe(f"$share/{SHARE_GROUP}/iot/+/telemetry") == 1
        ingest.close()
        meter = Probe.connect(old.port, "m1", "m1-password")
        assert meter.publish("iot/m1/status", b'{"state": "online"}', retain=True) in (0, 16)
        assert meter.publish("iot/m1/telemetry", b'{"queued": true}') == 0  # for ingest's stored session
        meter.close()
    finally:
        old.stop()

    new = MosquittoBroker(root=root, share_group=SHARE_GROUP, admin_tls=old.admin_tls)
    new.write_generated(*_generated(new))
    new.start()
    try:
        assert new.package.version() == f"mosquitto version {MOSQUITTO_VERSION}"
        for device in DEVICES.values():  # the previous release's stored hashes still log in
            Probe.connect(new.port, device.username, device.password).close()
        ingest = Probe.connect(new.port, INGEST, "ingest-pw", client_id="ingest-0", session_seconds=3600)
        wait_for(lambda: [m.payload for m in ingest.messages] == [b'{"queued": true}'], what="the queued message after the upgrade")
        ingest.close()
        status = Probe.connect(new.port, INGEST, "ingest-pw", client_id="status-reader")
        status.subscribe("iot/+/status")
        wait_for(lambda: [(m.topic, m.retain) for m in status.messages] == [("iot/m1/status", True)], what="the retained status")
        status.close()

        connected = Probe.connect(new.port, "m2", "m2-password")
        with DynamicSecurity("127.0.0.1", new.admin_port, new.admin_tls) as broker:
            moved, _ = broker.sync({**{i.username: i for i in SERVICES}, **DEVICES}, SHARE_GROUP)
            assert sorted(moved.modified) == ["m1", "m2"]
            assert sorted(moved.roles_changed) == sorted({device_role_name("m1"), device_role_name("m2"), "device:m1", "device:m2"})
            assert broker.sync({**{i.username: i for i in SERVICES}, **DEVICES}, SHARE_GROUP)[0].changed is False
        # Moved to its device role, a connected device is disconnected once (as docs/concepts.md says).
        assert connected.disconnected.wait(10) and "Administrative action" in str(connected.disconnect_reason)
        connected.client.loop_stop()
        meter = Probe.connect(new.port, "m1", "m1-password")
        assert meter.subscribe("iot/m1/#") == 1
        assert meter.subscribe("iot/m2/#") == NOT_AUTHORIZED
        assert meter.publish("iot/m1/telemetry") in (0, 16) and meter.publish("iot/m2/telemetry") == NOT_AUTHORIZED
        meter.close()
        stored = json.loads((root / "data" / "dynamic-security.json").read_text())
        # The stored hashes were rewritten in 2.1's form, which 2.0 cannot read: there is no way back.
        devices = [client for client in stored["clients"] if client["username"] in DEVICES]
        assert all(client["encoded_password"].startswith("$7$") and "salt" not in client for client in devices), devices
        assert {role["rolename"] for role in stored["roles"]} == {"admin", "ingest", "api", device_role_name("m1"), device_role_name("m2")}
        assert [line for line in new.log().splitlines() if ": Error: " in line or ": Warning: " in line] == []
    finally:
        new.stop()


def _generated(broker: MosquittoBroker) -> tuple[str, str, dict[str, str]]:
    """The configuration the operator renders, the previous release's identities, the admin listener."""
    return mosquitto_conf(Listeners(), limits=broker.limits), json.dumps(previous_release_seed()), broker.admin_tls.server_secret()
