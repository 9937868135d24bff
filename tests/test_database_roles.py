"""The tenant database's least-privilege roles, made by `iotenant database-setup`, on Debian's PostgreSQL
with SCRAM password checks (no service uses the superuser)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from iotenant.vocabulary import tenant_database
from iotenant_workloads import tenant_schema as schema
from iotenant_workloads.datagram import Measurement, Telemetry
from iotenant_workloads.ingest.telemetry_store import Accepted, store
from real_services import PostgresServer


@pytest.fixture
def scram_postgres(postgres: PostgresServer) -> PostgresServer:
    assert postgres.superuser_password, "the session's PostgreSQL must check passwords"
    return postgres


def create_database(server: PostgresServer, name: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')


def set_up(server: PostgresServer, name: str, ingest_password: str, api_password: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iotenant", "database-setup", "--admin-database-url", server.url(name),
         "--ingest-password", ingest_password, "--api-password", api_password, "--log-format", "text", "--timeout", "10"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def telemetry(seq: int) -> Accepted:
    now = datetime.now(timezone.utc)
    return Accepted("iot/dev-1/telemetry", b"{}", Telemetry("dev-1", now, seq, "telemetry", (Measurement(now, "t", 1.0, None),)))


def refused(connection: psycopg.Connection, statement: str) -> bool:
    try:
        with connection.transaction():
            connection.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def test_ingest_owns_and_keeps_the_tables_api_only_reads_and_sends_commands(scram_postgres: PostgresServer) -> None:
    create_database(scram_postgres, "roles_fresh")
    set_up(scram_postgres, "roles_fresh", "ingest-pw", "api-pw")
    ingest_url = scram_postgres.url("roles_fresh", tenant_database.INGEST_ROLE, "ingest-pw")
    api_url = scram_postgres.url("roles_fresh", tenant_database.API_ROLE, "api-pw")
    with psycopg.connect(ingest_url) as ingest:
        assert schema.migrate(ingest) == max(version for version, _ in schema.MIGRATIONS)
        schema.ensure_partitions(ingest, 3)  # partition upkeep: creating tables in the schema
        assert store(ingest, [telemetry(1), telemetry(2)], datetime.now(timezone.utc)).stored_messages == 2
        assert schema.apply_retention(ingest, 1) != []  # and dropping old ones
        ingest.commit()
        assert refused(ingest, "CREATE ROLE intruder")
        assert refused(ingest, "ALTER ROLE iotenant_api PASSWORD 'x'")
    with psycopg.connect(api_url) as api:
        assert api.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 2
        assert api.execute("SELECT count(*) FROM refusal_counts").fetchone()[0] == 0
        api.execute("INSERT INTO commands (cmd_id, device_id, name) VALUES ('c1', 'dev-1', 'reboot')")
        rule = api.execute("INSERT INTO alert_rules (name, kind, silence_seconds) VALUES ('quiet', 'silence', 60) RETURNING id").fetchone()[0]
        api.execute("UPDATE alert_rules SET deleted_at = now() WHERE id = %s", (rule,))
        api.execute("INSERT INTO ota_updates (cmd_id, device_id, version, url, sha256) VALUES ('c1', 'dev-1', '2', 'https://u/f', 'ab')")
        api.execute("UPDATE ota_updates SET state = 'failed', error = 'stale' WHERE cmd_id = 'c1'")
        api.commit()
    with psycopg.connect(ingest_url) as ingest:
        ingest.execute("INSERT INTO alerts (rule_id, device_id, state, fired_at) VALUES (%s, 'dev-1', 'firing', now())", (rule,))
        ingest.commit()
    with psycopg.connect(api_url) as api:
        api.execute("UPDATE alerts SET acknowledged_at = now(), state = 'resolved', resolved_at = now()")
        api.commit()
        for statement in ("INSERT INTO telemetry (device_id, msg_ts, seq, idx, ts, type, val, received_at) "
                          "VALUES ('x', now(), 1, 0, now(), 't', 1, now())",
                          "UPDATE commands SET status = 'done'", "DELETE FROM devices", "DROP TABLE commands",
                          "CREATE TABLE mine (x int)", "TRUNCATE rejected_messages", "UPDATE alert_rules SET threshold = 1",
                          "DELETE FROM alerts", "UPDATE alerts SET value = 1", "UPDATE ota_updates SET url = 'https://evil/'",
                          "DELETE FROM ota_updates", "INSERT INTO ota_reports (device_id, cmd_id, ts, state, received_at) "
                          "VALUES ('d', 'c', now(), 'failed', now())", "UPDATE devices SET online = true"):
            assert refused(api, statement), statement
    with psycopg.connect(scram_postgres.url("roles_fresh")) as admin:
        roles = dict(admin.execute("SELECT rolname, rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles "
                                   "WHERE rolname IN (%s, %s)", (tenant_database.INGEST_ROLE, tenant_database.API_ROLE)).fetchall())
        assert roles == {tenant_database.INGEST_ROLE: False, tenant_database.API_ROLE: False}


def test_a_database_made_by_the_superuser_is_taken_over_and_new_partitions_stay_readable(scram_postgres: PostgresServer) -> None:
    create_database(scram_postgres, "roles_upgrade")
    with psycopg.connect(scram_postgres.url("roles_upgrade")) as admin:  # as before the roles existed
        schema.migrate(admin)
        schema.ensure_partitions(admin, 1)
    set_up(scram_postgres, "roles_upgrade", "ingest-pw", "api-pw")
    with psycopg.connect(scram_postgres.url("roles_upgrade")) as admin:
        owners = {row[0] for row in admin.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {tenant_database.INGEST_ROLE}
    with psycopg.connect(scram_postgres.url("roles_upgrade", tenant_database.INGEST_ROLE, "ingest-pw")) as ingest:
        created = schema.ensure_partitions(ingest, 10)  # new partitions, made by ingest
        assert created
    with psycopg.connect(scram_postgres.url("roles_upgrade", tenant_database.API_ROLE, "api-pw")) as api:
        api.execute(f"SELECT count(*) FROM {created[0]}")


def test_passwords_follow_the_secret_and_a_wrong_one_is_refused(scram_postgres: PostgresServer) -> None:
    create_database(scram_postgres, "roles_rotate")
    set_up(scram_postgres, "roles_rotate", "ingest-pw", "api-old")
    set_up(scram_postgres, "roles_rotate", "ingest-pw", "api-new")  # idempotent; the new password wins
    psycopg.connect(scram_postgres.url("roles_rotate", tenant_database.API_ROLE, "api-new")).close()
    for user, password in ((tenant_database.API_ROLE, "api-old"), (tenant_database.INGEST_ROLE, "wrong"),
                           (tenant_database.API_ROLE, "ingest-pw")):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(scram_postgres.url("roles_rotate", user, password)).close()


def test_setup_waits_for_the_database_and_gives_up_loudly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iotenant", "database-setup", "--admin-database-url", "postgresql://postgres@127.0.0.1:1/x",
         "--ingest-password", "a", "--api-password", "b", "--timeout", "1", "--log-format", "text"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "database unreachable" in result.stderr
