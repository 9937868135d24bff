"""``iotenant database-setup``: the tenant database's least-privilege roles, made or mended, then migrated.

Runs as ingest's init container with the superuser's URL, which no long-running service holds.
Idempotent, and safe from several replicas at once (an advisory lock):

- roles ``iotenant_ingest`` and ``iotenant_api`` exist, may log in, hold nothing else (no
  superuser, no role or database creation) and have the passwords the operator generated (a
  changed password is set again, so the Secret is always the truth);
- every table of the schema belongs to ingest (a database made before the roles existed is taken
  over), which migrates them and keeps the daily partitions;
- api may read every table, now and later (default privileges for ingest's new partitions), insert
  commands and OTA updates, keep alert rules (insert, mark deleted), acknowledge and resolve alerts,
  and mark a stale OTA update failed; nothing else.
"""

from __future__ import annotations

import argparse
import logging
import time

import psycopg
from psycopg import sql

from iotenant import logs
from iotenant.environment_flags import flag
from iotenant.vocabulary import tenant_database
from iotenant_workloads import tenant_schema as database

log = logging.getLogger("iotenant.database_setup")

SETUP_LOCK = 4242003
# What the API may change, column by column where it changes only some.
API_WRITES = (
    "GRANT INSERT ON commands, ota_updates, alert_rules TO {}",
    "GRANT UPDATE (deleted_at) ON alert_rules TO {}",
    "GRANT UPDATE (state, resolved_at, acknowledged_at) ON alerts TO {}",
    "GRANT UPDATE (state, error) ON ota_updates TO {}",
)


def _ensure_role(connection: psycopg.Connection, role: str, password: str) -> None:
    exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        connection.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        log.info("created database role %s", role)
    connection.execute(
        sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )


def set_up(connection: psycopg.Connection, ingest_password: str, api_password: str) -> None:
    """Roles, ownership, migrations and grants, in one transaction (``connection`` is the superuser's)."""
    ingest, api = sql.Identifier(tenant_database.INGEST_ROLE), sql.Identifier(tenant_database.API_ROLE)
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
        _ensure_role(connection, tenant_database.INGEST_ROLE, ingest_password)
        _ensure_role(connection, tenant_database.API_ROLE, api_password)
        name = sql.Identifier(connection.info.dbname)
        connection.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(name, ingest, api))
        connection.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(ingest))
        connection.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(api))
        others = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> %s ORDER BY tablename",
            (tenant_database.INGEST_ROLE,),
        ).fetchall()
        for (table,) in others:
            connection.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), ingest))
        if others:
            log.info("%d tables handed over to %s", len(others), tenant_database.INGEST_ROLE)
    with connection.transaction():
        connection.execute(sql.SQL("SET LOCAL ROLE {}").format(ingest))
        database.migrate(connection)  # a savepoint inside this transaction, as ingest
    with connection.transaction():
        connection.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(ingest, api)
        )
        connection.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(api))
        for grant in API_WRITES:
            connection.execute(sql.SQL(grant).format(api))


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    deadline = time.monotonic() + args.timeout
    delay = 0.5
    while True:
        try:
            with psycopg.connect(args.admin_database_url, connect_timeout=5) as connection:
                set_up(connection, args.ingest_password, args.api_password)
            log.info("database roles %s and %s ready", tenant_database.INGEST_ROLE, tenant_database.API_ROLE)
            return 0
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                log.error("database unreachable for %.0f s: %s", args.timeout, str(error).strip().splitlines()[0])
                return 1
            log.warning("database unavailable (%s); retrying in %.1f s", str(error).strip().splitlines()[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("database-setup", help="make the tenant database's roles and migrate it (ingest's init container)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(parser, "--admin-database-url", "IOTENANT_DATABASE_ADMIN_URL", "the superuser's PostgreSQL URL", required=True)
    flag(parser, "--ingest-password", "IOTENANT_INGEST_DATABASE_PASSWORD", "password of the ingest role", required=True)
    flag(parser, "--api-password", "IOTENANT_API_DATABASE_PASSWORD", "password of the api role", required=True)
    flag(parser, "--timeout", "IOTENANT_DATABASE_SETUP_TIMEOUT", "seconds to wait for the database", kind=float, default=300.0)
    logs.add_flags(parser)
    parser.set_defaults(run=_run)
