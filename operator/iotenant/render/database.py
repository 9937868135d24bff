"""The tenant's database: PostgreSQL with a volume, and the credentials of its superuser and service roles."""

from __future__ import annotations

from iotenant.render.builders import Manifest, container, empty_dir, pod_template, resources, secret, service, stateful_set
from iotenant.render.inputs import StackInput
from iotenant.render.stack_part import Peers, StackPart, Volume, WayIn, Workload
from iotenant.vocabulary import tenant_database
from iotenant.vocabulary.contract import DATABASE_CREDENTIALS
from iotenant.vocabulary.meta import Component

# The postgres image's Debian variant runs as uid 999 (postgres).
DATABASE_UID = 999
WORKLOAD = Workload("StatefulSet", "database")
# The parts that connect to the database (ingest and api) are let in by this policy, and no other pod.
CLIENTS_WAY = "allow-database-from-its-clients"
DATABASE_DEFAULT = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}


def database(stack: StackInput) -> list[Manifest]:
    owner, spec = stack.owner, stack.spec.get("database", {})
    generated, namespace = stack.secrets, owner.namespace
    env = [
        {"name": "POSTGRES_USER", "valueFrom": {"secretKeyRef": {"name": DATABASE_CREDENTIALS, "key": "username"}}},
        {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": DATABASE_CREDENTIALS, "key": "password"}}},
        {"name": "POSTGRES_DB", "valueFrom": {"secretKeyRef": {"name": DATABASE_CREDENTIALS, "key": "database"}}},
        {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
    ]
    ready = {"exec": {"command": ["pg_isready", "-U", tenant_database.SUPERUSER, "-d", tenant_database.NAME]}, "periodSeconds": 5}
    main = container(
        "postgres",
        stack.settings.images.database,
        env=env,
        ports=[{"name": "postgres", "containerPort": tenant_database.PORT, "protocol": "TCP"}],
        volumeMounts=[
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        resources=resources(spec.get("resources"), DATABASE_DEFAULT),
        readinessProbe=ready,
        livenessProbe={**ready, "periodSeconds": 20, "failureThreshold": 6},
    )
    template = pod_template(owner, Component.DATABASE, DATABASE_UID, [main], [empty_dir("run"), empty_dir("tmp")],
                            pull_secrets=stack.settings.image_pull_secrets)
    credentials = {
        # The superuser: the image initialises the database with it; only ingest's init container uses it.
        "username": tenant_database.SUPERUSER, "password": generated.database_password, "database": tenant_database.NAME,
        "url": tenant_database.url(tenant_database.SUPERUSER, generated.database_password, namespace),
        # The roles the services use.
        "ingest-password": generated.database_ingest_password,
        "ingest-url": tenant_database.url(tenant_database.INGEST_ROLE, generated.database_ingest_password, namespace),
        "api-password": generated.database_api_password,
        "api-url": tenant_database.url(tenant_database.API_ROLE, generated.database_api_password, namespace),
    }
    return [
        secret(owner, DATABASE_CREDENTIALS, Component.DATABASE, credentials),
        stateful_set(owner, WORKLOAD.name, Component.DATABASE, 1, template, spec.get("storage", "5Gi"),
                     storage_class=stack.storage_classes.get(WORKLOAD.name)),
        service(owner, "database", Component.DATABASE, [("postgres", tenant_database.PORT)]),
    ]


PART = StackPart(
    name="database",
    component=Component.DATABASE,
    render=database,
    workload=WORKLOAD,
    required=True,
    volume=Volume(section="database"),
    ways_in=(WayIn(CLIENTS_WAY, (tenant_database.PORT,), Peers(clients=True)),),
)
