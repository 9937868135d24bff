"""Values the operator generated once and keeps in the tenant's Secrets: read back, or made anew.

A Secret is outside input: a value that is not base64 of UTF-8 text is replaced like a missing
one (logged), never trusted and never allowed to stop the reconcile.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable

from iotenant.kube.client import Manifest
from iotenant.mosquitto.admin_tls import AdminTLS
from iotenant.mosquitto.identities import new_share_group
from iotenant.render.inputs import GeneratedSecrets

log = logging.getLogger("iotenant.customer_instance")


class Undecodable(ValueError):
    """A Secret value that is not base64 of UTF-8 text."""


def decode(secret: Manifest | None, key: str) -> str | None:
    """A Secret's value as text; raises ``Undecodable`` when it is not text."""
    if not secret:
        return None
    value = (secret.get("data") or {}).get(key)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, TypeError) as error:
        raise Undecodable(f"key {key!r} is not UTF-8 text") from error


def kept(secret: Manifest | None, key: str) -> str | None:
    """A generated value kept in a managed Secret; one that is not text is replaced like a missing one."""
    try:
        return decode(secret, key)
    except Undecodable:
        log.warning("Secret %s: %s; a new value is generated", (secret or {}).get("metadata", {}).get("name"), key)
        return None


def decoded(secret: Manifest | None) -> dict[str, str] | None:
    return {key: kept(secret, key) or "" for key in (secret.get("data") or {})} if secret else None


def generated_secrets(live_secret: Callable[[str], Manifest | None], admin_tls: AdminTLS) -> GeneratedSecrets:
    """Every generated value of the tenant: kept where a Secret holds it, new where not."""
    database, api, broker = live_secret("database-credentials"), live_secret("api-token"), live_secret("broker-service-credentials")
    return GeneratedSecrets(
        database_password=kept(database, "password") or secrets.token_urlsafe(24),
        database_ingest_password=kept(database, "ingest-password") or secrets.token_urlsafe(24),
        database_api_password=kept(database, "api-password") or secrets.token_urlsafe(24),
        api_token=kept(api, "token") or secrets.token_urlsafe(32),
        broker_admin_tls=admin_tls,
        ingest_broker_password=kept(broker, "ingest-password") or secrets.token_urlsafe(24),
        api_broker_password=kept(broker, "api-password") or secrets.token_urlsafe(24),
        ingest_share_group=kept(broker, "ingest-share-group") or new_share_group(),
    )
