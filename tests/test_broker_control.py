"""Driving a real Mosquitto's identities over the dynamic-security control topic."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_for
from mqtt_probe import NOT_AUTHORIZED, Probe, refused
from iotenant.devcluster.mosquitto import MosquittoBroker

from iotenant.broker_control import DynamicSecurity, plan_commands
from iotenant.broker_identities import ADMIN, INGEST, Identity, service_identities

ADMIN_PASSWORD = "admin-secret"


@pytest.fixture
def bare_broker(service_root: Path) -> Iterator[MosquittoBroker]:
    """A broker seeded like a new tenant's: the admin and the two services, no devices."""
    server = MosquittoBroker(
        root=Path(tempfile.mkdtemp(prefix="broker-", dir=service_root)),
        admin_password=ADMIN_PASSWORD,
        identities=service_identities("ingest-pw", "api-pw"),
    )
    server.write_configuration()
    server.start()
    yield server
    server.stop()


def devices(*names: str, password: str = "pw") -> dict[str, Identity]:
    return {name: Identity(name, f"{name}-{password}", None, "fleet/test") for name in names}


def desired(*names: str) -> dict[str, Identity]:
    return {**{i.username: i for i in service_identities("ingest-pw", "api-pw")}, **devices(*names)}


def test_plan_deletes_first_never_touches_the_admin_and_skips_what_matches() -> None:
    wanted = desired("d1", "d2")
    live = {ADMIN: "x", "rogue": "", "d1": wanted["d1"].text_name, "d2": "fleet/test 000000000000",
            INGEST: wanted[INGEST].text_name}
    commands, result = plan_commands(live, wanted)
    assert [c["command"] for c in commands] == ["deleteClient", "modifyClient", "createClient"]
    assert (result.deleted, result.modified, result.created) == (["rogue"], ["d2"], ["iotenant:api"])


def test_sync_changes_only_what_differs_and_other_clients_stay_connected(bare_broker: MosquittoBroker) -> None:
    port = bare_broker.port
    with DynamicSecurity("127.0.0.1", port, ADMIN_PASSWORD) as broker:
        first = broker.sync(desired("d1", "d2", "d3"))
    assert sorted(first.created) == ["d1", "d2", "d3"] and not first.modified and not first.deleted

    stays = Probe.connect(port, "d1", "d1-pw")
    moves = Probe.connect(port, "d2", "d2-pw")
    goes = Probe.connect(port, "d3", "d3-pw")
    assert stays.publish("iot/d1/telemetry") in (0, 16)
    assert stays.publish("iot/d2/telemetry") == NOT_AUTHORIZED

    wanted = desired("d1", "d2")
    wanted["d2"] = Identity("d2", "d2-new", None, "fleet/test")
    with DynamicSecurity("127.0.0.1", port, ADMIN_PASSWORD) as broker:
        again = broker.sync(wanted)
        assert broker.sync(wanted).changed is False  # in step: nothing to send
    assert (again.created, again.modified, again.deleted) == ([], ["d2"], ["d3"])

    assert goes.disconnected.wait(5), "a removed device keeps its connection"
    assert moves.disconnected.wait(5), "a device whose password changed keeps its old connection"
    assert not stays.disconnected.is_set()
    assert stays.publish("iot/d1/telemetry") in (0, 16)
    assert refused(port, "d3", "d3-pw")
    assert refused(port, "d2", "d2-pw")
    assert not refused(port, "d2", "d2-new")
    stays.close()


def test_unknown_clients_are_removed_and_services_restored(bare_broker: MosquittoBroker) -> None:
    port = bare_broker.port
    with DynamicSecurity("127.0.0.1", port, ADMIN_PASSWORD) as broker:
        broker.execute([{"command": "createClient", "username": "intruder", "password": "x"},
                        {"command": "deleteClient", "username": INGEST}])
        assert "intruder" in broker.list_clients()
        result = broker.sync(desired())
        assert result.deleted == ["intruder"] and result.created == [INGEST]
        assert set(broker.list_clients()) == {ADMIN, INGEST, "iotenant:api"}
    assert refused(port, "intruder", "x")
    assert not refused(port, INGEST, "ingest-pw")


def test_the_broker_keeps_identities_across_a_restart(bare_broker: MosquittoBroker) -> None:
    with DynamicSecurity("127.0.0.1", bare_broker.port, ADMIN_PASSWORD) as broker:
        broker.sync(desired("kept-1"))
    bare_broker.stop()
    bare_broker.start()
    wait_for(lambda: not refused(bare_broker.port, "kept-1", "kept-1-pw"), timeout=10, what="kept-1 to connect after a restart")
    saved = json.loads((bare_broker.data_dir / "dynamic-security.json").read_text())
    assert "kept-1" in {client["username"] for client in saved["clients"]}


def test_a_wrong_admin_password_is_reported_as_unavailable(bare_broker: MosquittoBroker) -> None:
    from iotenant.broker_control import BrokerUnavailable

    with pytest.raises(BrokerUnavailable, match="refused the admin identity"):
        with DynamicSecurity("127.0.0.1", bare_broker.port, "wrong"):
            pass
    with pytest.raises(BrokerUnavailable, match="cannot reach broker"):
        with DynamicSecurity("127.0.0.1", 1, ADMIN_PASSWORD):
            pass
