"""The broker's generated configuration and identities, judged without a broker."""

from __future__ import annotations

import pytest
import yaml

from iotenant.licensing.plans import CatalogueError, load_catalogue
from iotenant.mosquitto.admin_tls import ADMIN_PORT, AdminTLS, issue
from iotenant.mosquitto.config import Listeners, mosquitto_conf
from iotenant.mosquitto.identities import (
    ADMIN, DEVICE_ROLE_SHARDS, Identity, device_role, device_role_name, dynamic_security_config, service_identities,
)


def test_the_configuration_carries_the_plan_limits_and_the_admin_listener() -> None:
    starter = load_catalogue()["starter"].broker
    lines = mosquitto_conf(Listeners(), limits=starter).splitlines()
    assert f"max_packet_size {starter.maxPacketBytes}" in lines
    assert f"max_queued_messages {starter.maxQueuedMessages}" in lines
    assert f"max_queued_bytes {starter.maxQueuedBytes}" in lines
    assert "persistent_client_expiration 24h" in lines
    admin = lines.index(f"listener {ADMIN_PORT}")
    assert lines[admin + 1:admin + 6] == [
        "cafile /mosquitto/admin-tls/ca.crt", "certfile /mosquitto/admin-tls/tls.crt", "keyfile /mosquitto/admin-tls/tls.key",
        "require_certificate true", "use_identity_as_username true",
    ]
    assert not any(line.startswith("acl_file") for line in lines)
    assert "allow_anonymous false" in lines
    assert f"max_inflight_messages {starter.maxInflightMessages}" in lines
    assert not any(line.startswith("memory_limit") for line in lines)  # no container limit given: none


def test_the_broker_heap_stays_inside_its_container_and_devices_get_no_qos_2() -> None:
    lines = mosquitto_conf(Listeners(tls=True), limits=load_catalogue()["starter"].broker,
                           container_memory_bytes=512 * 2**20).splitlines()
    assert f"memory_limit {int(512 * 2**20 * 0.8)}" in lines
    for listener in ("listener 1883", "listener 8883"):  # where devices connect
        assert lines[lines.index(listener) + 1] == "max_qos 1", listener
    admin = lines.index(f"listener {ADMIN_PORT}")
    assert "max_qos 1" not in lines[admin:admin + 6]


@pytest.mark.parametrize(("listeners", "expected", "absent"), [
    (Listeners(), ["listener 1883"], ["listener 1884", "listener 8883"]),
    (Listeners(tls=True), ["listener 1883", "listener 8883", "certfile /mosquitto/tls/tls.crt", "keyfile /mosquitto/tls/tls.key"],
     ["listener 1884"]),
    # TLS only: devices lose plaintext; our clients keep the internal listener, even before the certificate exists.
    (Listeners(device_plaintext=False, tls=True), ["listener 1884", "listener 8883"], ["listener 1883"]),
    (Listeners(device_plaintext=False), ["listener 1884"], ["listener 1883", "listener 8883"]),
])
def test_the_listeners_follow_the_tls_settings(listeners: Listeners, expected: list[str], absent: list[str]) -> None:
    lines = mosquitto_conf(listeners, limits=load_catalogue()["starter"].broker).splitlines()
    assert all(line in lines for line in expected), lines
    assert not any(line in lines for line in absent), lines


def test_every_device_role_allows_only_each_devices_own_topics_by_pattern() -> None:
    for role in (device_role(device_role_name("dev-1")), device_role("device-63")):
        assert set(role.allows) == {
            ("publishClientSend", "iot/%u/telemetry"), ("publishClientSend", "iot/%u/hello"),
            ("publishClientSend", "iot/%u/status"), ("publishClientSend", "iot/%u/command/ack"),
            ("publishClientSend", "iot/%u/ota/status"), ("subscribePattern", "iot/%u/#"),
            ("publishClientReceive", "iot/%u/command"),
        }


def test_devices_spread_evenly_over_the_device_roles_and_always_hold_the_same_one() -> None:
    ids = [f"meter-{n:06d}" for n in range(100_000)]
    counts: dict[str, int] = {}
    for device_id in ids:
        counts[device_role_name(device_id)] = counts.get(device_role_name(device_id), 0) + 1
    assert set(counts) == {f"device-{shard:02d}" for shard in range(DEVICE_ROLE_SHARDS)}
    assert max(counts.values()) < 1.2 * len(ids) / DEVICE_ROLE_SHARDS  # no role's list much longer than its share
    assert device_role_name("meter-000001") == device_role_name("meter-000001")


def test_the_seed_gives_the_admin_no_password_and_every_device_its_role_and_client_id() -> None:
    document = dynamic_security_config(service_identities("i", "a") + [Identity("dev-1", "pw", None, "fleet/f")], "group-x")
    clients = {client["username"]: client for client in document["clients"]}
    assert "password" not in clients[ADMIN] and "salt" not in clients[ADMIN]
    assert clients["dev-1"]["clientid"] == "dev-1" and clients["dev-1"]["roles"] == [{"rolename": device_role_name("dev-1")}]
    roles = {role["rolename"]: role for role in document["roles"]}
    assert {acl["topic"] for acl in roles["ingest"]["acls"] if acl["acltype"] == "subscribePattern"} == {
        *(f"$share/group-x/iot/+/{kind}" for kind in ("telemetry", "hello", "status", "command/ack", "ota/status")), "iot/+/status"}
    assert document["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                                            "unsubscribe": True}


def test_admin_certificates_belong_together_or_not_at_all() -> None:
    first, second = issue("customer-a"), issue("customer-a")
    assert AdminTLS.from_secrets(first.server_secret(), first.client_secret()) == first
    assert AdminTLS.from_secrets(first.server_secret(), second.client_secret()) is None
    assert AdminTLS.from_secrets(first.server_secret(), None) is None
    assert AdminTLS.from_secrets({**first.server_secret(), "tls.key": ""}, first.client_secret()) is None


def test_a_plan_may_not_allow_packets_larger_than_ingest_takes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    entry = yaml.safe_dump({"big": {**_starter_entry(), "broker": {"maxPacketBytes": 10 * 1024 * 1024}}})
    (tmp_path / "plans.yaml").write_text(entry)
    with pytest.raises(CatalogueError, match="broker.maxPacketBytes"):
        load_catalogue(tmp_path / "plans.yaml")


def _starter_entry() -> dict:
    from iotenant.licensing.plans import DEFAULT_CATALOGUE

    return dict(DEFAULT_CATALOGUE["starter"])
