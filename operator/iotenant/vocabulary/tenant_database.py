"""The tenant database as the operator renders it and the workloads use it: one fact each.

The image's superuser (``SUPERUSER``) initialises the database and is used by nothing else than
``iotenant database-setup`` (ingest's init container). Ingest and api connect with roles of their
own, each with a generated password: ``INGEST_ROLE`` owns the tables (it migrates them and keeps
the daily partitions), ``API_ROLE`` may read every table and insert commands, nothing more.
"""

from __future__ import annotations

NAME = "iotenant"
SUPERUSER = "iotenant"
PORT = 5432
INGEST_ROLE = "iotenant_ingest"
API_ROLE = "iotenant_api"


def url(user: str, password: str, namespace: str) -> str:
    """How a workload of ``namespace`` reaches the tenant database as ``user``."""
    return f"postgresql://{user}:{password}@database.{namespace}.svc:{PORT}/{NAME}"
