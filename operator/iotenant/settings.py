"""The operator's settings: each a command-line flag with an IOTENANT_... environment variable."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Images:
    """Pinned container images of a customer stack (no registry host: the cluster's default applies)."""

    broker: str = "eclipse-mosquitto:2.0.20"
    database: str = "postgres:16.4-alpine"
    prometheus: str = "prom/prometheus:v2.54.1"
    iotenant: str = "iotenant:0.1.0"


@dataclass(frozen=True)
class OperatorSettings:
    namespace: str = "iotenant-system"
    issuer: str = "iotenant-operator"
    resync_seconds: float = 60.0
    expiry_grace_seconds: float = 7 * 24 * 3600.0
    renew_fraction: float = 0.2
    ingress_namespace: str = "ingress-nginx"
    monitoring_namespace: str = "monitoring"
    plan_catalogue: Path | None = None
    trusted_issuers_jwks: Path | None = None
    images: Images = Images()


# (attribute, flag, environment variable, type, help)
_FLAGS: list[tuple[str, str, str, type, str]] = [
    ("namespace", "--namespace", "IOTENANT_NAMESPACE", str, "the operator's own namespace (signing key, JWKS)"),
    ("issuer", "--issuer", "IOTENANT_ISSUER", str, "the iss claim of licences this operator issues"),
    ("resync_seconds", "--resync-seconds", "IOTENANT_RESYNC_SECONDS", float, "how often every instance is compared with the cluster (drift, renewal)"),
    ("expiry_grace_seconds", "--expiry-grace-seconds", "IOTENANT_EXPIRY_GRACE_SECONDS", float, "how long an expired billing licence keeps serving (Degraded) before Suspended"),
    ("renew_fraction", "--renew-fraction", "IOTENANT_RENEW_FRACTION", float, "re-issue an operator licence when less than this fraction of its validity remains"),
    ("ingress_namespace", "--ingress-namespace", "IOTENANT_INGRESS_NAMESPACE", str, "namespace whose pods may reach customer APIs"),
    ("monitoring_namespace", "--monitoring-namespace", "IOTENANT_MONITORING_NAMESPACE", str, "namespace whose pods may scrape customer metrics"),
    ("plan_catalogue", "--plan-catalogue", "IOTENANT_PLAN_CATALOGUE", Path, "YAML file replacing the built-in plan catalogue"),
    ("trusted_issuers_jwks", "--trusted-issuers-jwks", "IOTENANT_TRUSTED_ISSUERS_JWKS", Path, "JWKS file of billing systems whose licences are trusted"),
]
_IMAGE_FLAGS = [
    ("broker", "--broker-image", "IOTENANT_BROKER_IMAGE"),
    ("database", "--database-image", "IOTENANT_DATABASE_IMAGE"),
    ("prometheus", "--prometheus-image", "IOTENANT_PROMETHEUS_IMAGE"),
    ("iotenant", "--iotenant-image", "IOTENANT_IMAGE"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = OperatorSettings()
    for attribute, flag, variable, kind, help_text in _FLAGS:
        default = getattr(defaults, attribute)
        parser.add_argument(
            flag,
            dest=attribute,
            type=kind,
            default=os.environ.get(variable, default),
            help=f"{help_text} [{variable}] (default: {default})",
        )
    for attribute, flag, variable in _IMAGE_FLAGS:
        default = getattr(defaults.images, attribute)
        parser.add_argument(
            flag, dest=f"image_{attribute}", default=os.environ.get(variable, default), help=f"[{variable}] (default: {default})"
        )


def from_arguments(args: argparse.Namespace) -> OperatorSettings:
    values = {}
    for attribute, _flag, _variable, kind, _help in _FLAGS:
        value = getattr(args, attribute)
        values[attribute] = kind(value) if value is not None and not isinstance(value, kind) else value
    images = Images(**{attribute: getattr(args, f"image_{attribute}") for attribute, _f, _v in _IMAGE_FLAGS})
    return OperatorSettings(**values, images=images)
