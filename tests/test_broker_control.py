"""Driving a real Mosquitto's identities over the dynamic-security control topic."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_for
from iotenant.mosquitto.dynamic_security import DynamicSecurity
from iotenant.mosquitto.identities import ADMIN, INGEST, Identity, Role, desired_roles, device_role_name, service_identities
from iotenant.mosquitto.sync_plan import LiveState, plan_commands
from iotenant_testbed.mosquitto import MosquittoBroker
from mqtt_probe import NOT_AUTHORIZED, Probe, Refused, refused

SHARE_GROUP = "ingest-0123456789abcdef"


@pytest.fixture
def bare_broker(service_root: Path) -> Iterator[MosquittoBroker]:
    """A broker seeded like a new tenant's: the admin and the two services, no devices."""
    server = MosquittoBroker(
        root=Path(tempfile.mkdtemp(prefix="broker-", dir=service_root)),
        identities=service_identities("ingest-pw", "api-pw"),
        share_group=SHARE_GROUP,
    )
    server.write_configuration()
    server.start()
    yield server
    server.stop()


def admin(broker: MosquittoBroker) -> DynamicSecurity:
    """The operator's way in: the admin listener, with the client certificate of the broker's CA."""
    return DynamicSecurity("127.0.0.1", broker.admin_port, broker.admin_tls)


def devices(*names: str, password: str = "pw") -> dict[str, Identity]:
    return {name: Identity(name, f"{name}-{password}", None, "fleet/test") for name in names}


def desired(*names: str) -> dict[str, Identity]:
    return {**{i.username: i for i in service_identities("ingest-pw", "api-pw")}, **devices(*names)}


def test_plan_deletes_first_never_touches_the_admin_and_skips_what_matches() -> None:
    wanted = desired("d1", "d2", "d3")
    roles = desired_roles(SHARE_GROUP, wanted.values())
    live = LiveState.listed(
        clients={ADMIN: {"username": ADMIN}, "rogue": {"username": "rogue"}, "d1": wanted["d1"].client(),
                 "d2": {**wanted["d2"].client(), "textname": "fleet/test 000000000000"},
                 "d3": {**wanted["d3"].client(), "clientid": None}, INGEST: wanted[INGEST].client()},
        roles={"device:d1": frozenset(), "api": frozenset(),
               **{name: Role.allows_of(role.acls()) for name, role in roles.items() if name not in (device_role_name("d1"), "api")}},
    )
    commands, result = plan_commands(live, wanted, roles)
    assert [(c["command"], c.get("username") or c.get("rolename")) for c in commands] == [
        ("deleteClient", "rogue"), ("modifyRole", "api"), ("createRole", device_role_name("d1")),
        ("modifyClient", "d2"), ("modifyClient", "d3"), ("createClient", "iotenant:api"), ("deleteRole", "device:d1"),
    ]
    assert (result.deleted, result.modified, result.created) == (["rogue"], ["d2", "d3"], ["iotenant:api"])
    assert commands[4]["clientid"] == "d3" and commands[4]["roles"] == [{"rolename": device_role_name("d3")}]
    assert commands[3]["password"] == "d2-pw" and "password" not in commands[4]  # same password: not hashed again


def test_devices_of_the_former_shared_role_move_to_their_own_role_which_is_then_deleted() -> None:
    wanted = desired("d1", "d2")
    roles = desired_roles(SHARE_GROUP, wanted.values())
    former = {name: {**identity.client(), "roles": [{"rolename": "device"}]} for name, identity in wanted.items() if identity.is_device}
    live = LiveState.listed(clients={ADMIN: {"username": ADMIN}, **{i: wanted[i].client() for i in wanted if i not in former}, **former},
                     roles={**{name: Role.allows_of(role.acls()) for name, role in roles.items()}, "device": frozenset()})
    commands, result = plan_commands(live, wanted, roles)
    assert [(c["command"], c.get("username") or c.get("rolename")) for c in commands] == [
        ("modifyClient", "d1"), ("modifyClient", "d2"), ("deleteRole", "device")]
    assert [c["roles"] for c in commands[:2]] == [[{"rolename": device_role_name("d1")}], [{"rolename": device_role_name("d2")}]]
    assert all("password" not in c for c in commands)


def test_new_clients_go_in_descending_order_so_each_insert_into_the_brokers_sorted_list_stops_at_once() -> None:
    wanted = desired("big-001", "big-010", "big-002", "a-1", "z-9")
    live = LiveState.listed(clients={ADMIN: {"username": ADMIN}, "big-002": wanted["big-002"].client()}, roles={})
    commands, result = plan_commands(live, wanted, desired_roles(SHARE_GROUP, wanted.values()))
    created = [c["username"] for c in commands if c["command"] == "createClient"]
    assert created == sorted(set(wanted) - {"big-002"}, reverse=True) == result.created
    assert created[0] == "z-9" and created[-1] == "a-1"


def test_a_hostile_listing_from_the_broker_is_judged_entry_by_entry_and_the_good_entries_stay_in_step() -> None:
    """The broker runs in the tenant's namespace: what it lists is read as untrusted."""
    wanted = desired("d1", "d2", "d3")
    roles = desired_roles(SHARE_GROUP, wanted.values())
    good_roles = [{"rolename": name, "acls": role.acls()} for name, role in roles.items()]
    clients = [
        {"username": ADMIN}, *(wanted[name].client() for name in (INGEST, "iotenant:api", "d1")),
        {**wanted["d2"].client(), "roles": "device-00"},  # a string where a list belongs
        {**wanted["d3"].client(), "roles": [None, 7, {"rolename": ["x" * 10_000]}]},
        "not an object", None, 12, {"username": None}, {"username": ["d4"]}, {"textname": "no username"},
        {"username": "stray", "roles": {"deep": [[[[]]]]}, "textname": "\x00\ud800"},
    ]
    hostile_roles = [*good_roles[1:], {"rolename": good_roles[0]["rolename"], "acls": "#"},
                     {"rolename": "odd", "acls": [None, "x", {"acltype": 1}]}, {"acls": []}, "role", None]
    live = LiveState.from_listings(clients, hostile_roles)
    commands, result = plan_commands(live, wanted, roles)
    assert result.deleted == ["stray"] and result.modified == ["d2", "d3"] and result.created == []
    assert sorted(result.roles_changed) == sorted([good_roles[0]["rolename"], "odd"])
    assert "d1" not in {c.get("username") for c in commands}  # the good entry is in step: nothing sent for it


def test_sync_changes_only_what_differs_and_other_clients_stay_connected(bare_broker: MosquittoBroker) -> None:
    port = bare_broker.port
    with admin(bare_broker) as broker:
        first, _ = broker.sync(desired("d1", "d2", "d3"), SHARE_GROUP)
    assert sorted(first.created) == ["d1", "d2", "d3"] and not first.modified and not first.deleted

    stays = Probe.connect(port, "d1", "d1-pw")
    moves = Probe.connect(port, "d2", "d2-pw")
    goes = Probe.connect(port, "d3", "d3-pw")
    assert stays.publish("iot/d1/telemetry") in (0, 16)
    assert stays.publish("iot/d2/telemetry") == NOT_AUTHORIZED

    wanted = desired("d1", "d2")
    wanted["d2"] = Identity("d2", "d2-new", None, "fleet/test")
    with admin(bare_broker) as broker:
        again, _ = broker.sync(wanted, SHARE_GROUP)
        assert broker.sync(wanted, SHARE_GROUP)[0].changed is False  # in step: nothing to send
    assert (again.created, again.modified, again.deleted) == ([], ["d2"], ["d3"])

    assert goes.disconnected.wait(5), "a removed device keeps its connection"
    assert moves.disconnected.wait(5), "a device whose password changed keeps its old connection"
    assert not stays.disconnected.is_set()
    assert stays.publish("iot/d1/telemetry") in (0, 16)
    assert refused(port, "d3", "d3-pw")
    assert refused(port, "d2", "d2-pw")
    assert not refused(port, "d2", "d2-new")
    stays.close()


def test_a_sync_from_the_state_it_left_sends_only_the_difference_and_that_state_is_what_the_broker_lists(
        bare_broker: MosquittoBroker) -> None:
    with admin(bare_broker) as broker:
        _, state = broker.sync(desired("d1", "d2"), SHARE_GROUP)
        assert state == broker.live_state()
        result, state = broker.sync(desired("d1", "d3"), SHARE_GROUP, known=state)
        assert (result.created, result.deleted, result.modified) == (["d3"], ["d2"], [])
        assert state == broker.live_state()
    assert not refused(bare_broker.port, "d3", "d3-pw") and refused(bare_broker.port, "d2", "d2-pw")


def test_unknown_clients_are_removed_and_services_restored(bare_broker: MosquittoBroker) -> None:
    port = bare_broker.port
    with admin(bare_broker) as broker:
        broker.execute([{"command": "createClient", "username": "intruder", "password": "x"},
                        {"command": "deleteClient", "username": INGEST}])
        assert "intruder" in broker.list_clients()
        result, _ = broker.sync(desired(), SHARE_GROUP)
        assert result.deleted == ["intruder"] and result.created == [INGEST]
        assert set(broker.list_clients()) == {ADMIN, INGEST, "iotenant:api"}
    assert refused(port, "intruder", "x")
    assert not refused(port, INGEST, "ingest-pw")


def test_the_broker_keeps_identities_across_a_restart(bare_broker: MosquittoBroker) -> None:
    with admin(bare_broker) as broker:
        broker.sync(desired("kept-1"), SHARE_GROUP)
    bare_broker.stop()
    bare_broker.start()
    wait_for(lambda: not refused(bare_broker.port, "kept-1", "kept-1-pw"), timeout=10, what="kept-1 to connect after a restart")
    saved = json.loads((bare_broker.data_dir / "dynamic-security.json").read_text())
    assert "kept-1" in {client["username"] for client in saved["clients"]}


def test_the_admin_logs_in_only_with_its_certificate_on_the_admin_listener(bare_broker: MosquittoBroker) -> None:
    from iotenant.mosquitto.admin_tls import issue
    from iotenant.mosquitto.dynamic_security import BrokerUnavailable

    with admin(bare_broker) as broker:
        assert ADMIN in broker.list_clients()
    with pytest.raises(BrokerUnavailable):  # a certificate of another tenant's CA
        with DynamicSecurity("127.0.0.1", bare_broker.admin_port, issue("someone-else")):
            pass
    with pytest.raises(BrokerUnavailable):  # the device listener speaks no TLS, and the admin has no password there
        with DynamicSecurity("127.0.0.1", bare_broker.port, bare_broker.admin_tls):
            pass
    for password in ("", "admin", "admin-password"):
        assert refused(bare_broker.port, ADMIN, password)
    with pytest.raises(BrokerUnavailable, match="cannot reach broker"):
        with DynamicSecurity("127.0.0.1", 1, bare_broker.admin_tls):
            pass


def test_a_device_is_confined_to_its_own_topics_and_client_id(bare_broker: MosquittoBroker) -> None:
    port = bare_broker.port
    with admin(bare_broker) as broker:
        broker.sync(desired("d1", "d2"), SHARE_GROUP)
    with pytest.raises(Refused):
        Probe.connect(port, "d1", "d1-pw", client_id="d1-second")  # the client id must be the device id
    with pytest.raises(Refused):
        Probe.connect(port, "d1", "d1-pw", client_id="d2")
    device = Probe.connect(port, "d1", "d1-pw")
    for own in ("iot/d1/#", "iot/d1/command", "iot/d1/+"):
        assert device.subscribe(own) == 1, own
    for foreign in ("iot/d2/#", "iot/d2/telemetry", "#", "iot/#", "iot/+/telemetry", "+/d1/#", "$SYS/#",
                    f"$share/{SHARE_GROUP}/iot/+/telemetry", f"$share/{SHARE_GROUP}/iot/d1/telemetry", "$share/x/#",
                    "$CONTROL/dynamic-security/#"):
        assert device.subscribe(foreign) == NOT_AUTHORIZED, foreign
    for kind in ("telemetry", "hello", "status", "command/ack", "ota/status"):
        assert device.publish(f"iot/d1/{kind}") in (0, 16), kind
    for topic in ("iot/d1/anything", "iot/d1/telemetry/extra", "iot/d1/command", "iot/d2/telemetry", "$CONTROL/dynamic-security/v1"):
        assert device.publish(topic) == NOT_AUTHORIZED, topic
    device.close()


def test_a_will_on_another_devices_topic_is_never_delivered(bare_broker: MosquittoBroker) -> None:
    with admin(bare_broker) as broker:
        broker.sync(desired("d1", "d2", "d3"), SHARE_GROUP)
    victim = Probe.connect(bare_broker.port, "d2", "d2-pw")
    assert victim.subscribe("iot/d2/#") == 1
    watcher = Probe.connect(bare_broker.port, INGEST, "ingest-pw", client_id="watcher")
    assert watcher.subscribe("iot/+/status") == 1
    Probe.connect(bare_broker.port, "d1", "d1-pw", will_topic="iot/d2/command").drop()
    Probe.connect(bare_broker.port, "d3", "d3-pw", will_topic="iot/d3/status").drop()
    wait_for(lambda: any(m.topic == "iot/d3/status" for m in watcher.messages), timeout=30, what="d3's own will")
    assert [m.topic for m in victim.messages] == [], "a will on another device's topic was delivered"
    victim.close()
    watcher.close()


def test_a_changed_device_role_is_restored(bare_broker: MosquittoBroker) -> None:
    port = bare_broker.port
    with admin(bare_broker) as broker:
        broker.sync(desired("d1"), SHARE_GROUP)
        broker.execute([{"command": "modifyRole", "rolename": device_role_name("d1"),
                         "acls": [{"acltype": "subscribePattern", "topic": "#", "allow": True}]},
                        {"command": "modifyClient", "username": "d1", "clientid": ""}])
        healed, _ = broker.sync(desired("d1"), SHARE_GROUP)
        assert healed.roles_changed == [device_role_name("d1")] and healed.modified == ["d1"]
        assert broker.sync(desired("d1"), SHARE_GROUP)[0].changed is False
    device = Probe.connect(port, "d1", "d1-pw")
    assert device.subscribe("#") == NOT_AUTHORIZED
    device.close()


def test_the_broker_under_test_is_the_version_the_stack_ships_and_runs_our_files_without_warnings(bare_broker: MosquittoBroker) -> None:
    from iotenant.mosquitto.sync_plan import parse_version
    from iotenant.settings import MOSQUITTO_VERSION, Images

    assert Images().broker.endswith(f":{MOSQUITTO_VERSION}")
    with admin(bare_broker) as broker:
        version = broker.version
    assert version == parse_version(MOSQUITTO_VERSION), (
        f"the tests run Mosquitto {version}, the stack ships {MOSQUITTO_VERSION}: run scripts/install-prerequisites.sh "
        "(it installs the shipped version from the Debian backports derived from this machine's sources)")
    warnings = [line for line in bare_broker.log().splitlines() if "warning" in line.lower() or "deprecated" in line.lower()]
    assert warnings == [], warnings


def test_batches_follow_how_the_broker_saves() -> None:
    from iotenant.mosquitto.sync_plan import MAX_COMMANDS_PER_SAVING_MESSAGE, commands_per_message

    assert commands_per_message(10_000, (2, 0, 21)) == 3  # 2.0 rewrites its file per command: small messages
    assert commands_per_message(10, (2, 0, 21)) == 100
    assert commands_per_message(10_000, (2, 1, 2)) == MAX_COMMANDS_PER_SAVING_MESSAGE  # 2.1 saves once per message
    assert commands_per_message(10_000, None) == 3
    from iotenant.mosquitto.sync_plan import parse_version

    assert parse_version("mosquitto version 2.0.21") == (2, 0, 21)
    assert [parse_version(hostile) for hostile in ("", "   ", "mosquitto version x.1", "\x00\ud800", "9" * 5000 + ".a")] == [None] * 5
