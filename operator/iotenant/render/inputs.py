"""What rendering a customer stack needs: everything is read or decided before, nothing during."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from iotenant.licensing.licence import Claims
from iotenant.licensing.plans import STRICTEST_BROKER_LIMITS, BrokerLimits, Quota
from iotenant.mosquitto.admin_tls import AdminTLS
from iotenant.mosquitto.device_endpoint import BrokerExposure, DeviceEndpoint
from iotenant.render.image_pull import PullSecret
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.meta import Owner


@dataclass(frozen=True)
class GeneratedSecrets:
    """Credentials generated once per customer and kept stable across reconciles."""

    database_password: str
    database_ingest_password: str
    database_api_password: str
    api_token: str
    broker_admin_tls: AdminTLS
    ingest_broker_password: str
    api_broker_password: str
    ingest_share_group: str


@dataclass(frozen=True)
class StackInput:
    owner: Owner
    spec: dict[str, Any]
    settings: OperatorSettings
    secrets: GeneratedSecrets
    # The verified licence: None means no valid licence, so no service (fail closed).
    claims: Claims | None
    licence_token: str
    jwks: dict[str, Any]
    quota: Quota | None
    # Serving is False when suspended (by spec, or after an expired licence's grace period).
    serving: bool
    service_monitor_crd_present: bool
    prometheus_rule_crd_present: bool = False
    # From the plan of the verified licence; the strictest without one.
    broker_limits: BrokerLimits = STRICTEST_BROKER_LIMITS
    # The StorageClass of each StatefulSet's volume (broker, database, prometheus); absent: the cluster's default.
    storage_classes: dict[str, str] = field(default_factory=dict)
    # Where devices reach the broker (None: its in-cluster name); it goes into the certificate's names.
    device_endpoint: DeviceEndpoint | None = None
    # A hash of the broker's TLS certificate when its Secret holds a certificate and key (the 8883
    # listener starts, and restarts when it changes); None: no device TLS yet.
    broker_tls_hash: str | None = None
    certificate_crd_present: bool = False
    # The operator's pull Secrets as read from its namespace (settings.image_pull_secrets), copied into the tenant's.
    pull_secrets: tuple[PullSecret, ...] = ()

    @property
    def exposure(self) -> BrokerExposure:
        return BrokerExposure.from_spec(self.spec.get("broker") or {})

    @property
    def namespace(self) -> str:
        return self.owner.namespace
