"""The plan catalogue: data, not code. Defaults below; a YAML or JSON file may replace them (Helm values)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from iotenant.licensing.licence import Claims, Features, Limits, Monitoring
from iotenant.vocabulary import topics


@dataclass(frozen=True)
class Quota:
    """The customer namespace's ResourceQuota for a plan."""

    cpu: str
    memory: str
    limitsCpu: str
    limitsMemory: str
    storage: str
    pods: int
    persistentVolumeClaims: int


@dataclass(frozen=True)
class BrokerLimits:
    """What one client may cost the tenant's broker (mosquitto.conf): every device is untrusted.

    ``maxPacketBytes`` bounds every MQTT packet a client sends (a larger one disconnects it);
    ``maxInflightMessages`` is how many QoS 1 messages an MQTT 5 client may leave unacknowledged
    towards the broker (the Receive Maximum it advertises), and the broker towards an MQTT 3.1.1
    client; ``maxQueuedMessages`` and
    ``maxQueuedBytes`` bound what the broker keeps for one client that is away or slow (ingest's
    persistent session while it restarts); ``sessionExpirySeconds`` is how long the session of a
    client that left is kept at most.
    """

    maxPacketBytes: int = 17_408
    maxInflightMessages: int = 20
    maxQueuedMessages: int = 100_000
    maxQueuedBytes: int = 64 * 1024 * 1024
    sessionExpirySeconds: int = 86_400


# The broker limits of a catalogue entry that names none, and of a tenant without a valid licence.
STRICTEST_BROKER_LIMITS = BrokerLimits()


@dataclass(frozen=True)
class Plan:
    name: str
    limits: Limits
    features: Features
    monitoring: Monitoring
    quota: Quota
    broker: BrokerLimits = STRICTEST_BROKER_LIMITS

    def claims(self, subject: str, issuer: str, validity_seconds: int, now: float | None = None) -> Claims:
        """Fresh licence claims for this plan."""
        issued = int(time.time() if now is None else now)
        return Claims(
            iss=issuer,
            sub=subject,
            iat=issued,
            nbf=issued,
            exp=issued + validity_seconds,
            jti=str(uuid.uuid4()),
            plan=self.name,
            features=self.features,
            limits=self.limits,
            monitoring=self.monitoring,
        )


DEFAULT_CATALOGUE: dict[str, dict[str, Any]] = {
    "starter": {
        "limits": {"maxDevices": 25, "maxFleets": 2, "retentionDays": 7, "maxMessagesPerSecond": 50, "maxAlertRules": 10},
        "features": {},
        "monitoring": {"tier": "shared"},
        "quota": {"cpu": "2", "memory": "4Gi", "limitsCpu": "8", "limitsMemory": "8Gi", "storage": "20Gi", "pods": 20, "persistentVolumeClaims": 4},
        "broker": {"maxPacketBytes": 17_408, "maxInflightMessages": 20, "maxQueuedMessages": 100_000, "maxQueuedBytes": 64 * 1024 * 1024, "sessionExpirySeconds": 86_400},
    },
    "professional": {
        "limits": {"maxDevices": 500, "maxFleets": 20, "retentionDays": 30, "maxMessagesPerSecond": 1000, "maxAlertRules": 100},
        "features": {"commands": True, "alerts": True},
        "monitoring": {"tier": "shared"},
        "quota": {"cpu": "8", "memory": "16Gi", "limitsCpu": "32", "limitsMemory": "64Gi", "storage": "200Gi", "pods": 60, "persistentVolumeClaims": 8},
        "broker": {"maxPacketBytes": 66_560, "maxInflightMessages": 20, "maxQueuedMessages": 500_000, "maxQueuedBytes": 256 * 1024 * 1024, "sessionExpirySeconds": 3 * 86_400},
    },
    "enterprise": {
        "limits": {"maxDevices": 10000, "maxFleets": 200, "retentionDays": 365, "maxMessagesPerSecond": 10000, "maxAlertRules": 1000},
        # Every feature, those of later releases included (their enterprise licences are re-issued with them).
        "features": {feature.name: True for feature in dataclasses.fields(Features)},
        "monitoring": {"tier": "dedicated", "retentionDays": 30, "storageGb": 50},
        "quota": {"cpu": "32", "memory": "64Gi", "limitsCpu": "128", "limitsMemory": "256Gi", "storage": "2Ti", "pods": 250, "persistentVolumeClaims": 16},
        "broker": {"maxPacketBytes": 66_560, "maxInflightMessages": 20, "maxQueuedMessages": 2_000_000, "maxQueuedBytes": 1024 * 1024 * 1024, "sessionExpirySeconds": 7 * 86_400},
    },
}


class CatalogueError(ValueError):
    """The plan catalogue is not valid; the message names the plan and field."""


def _plan(name: str, entry: dict[str, Any]) -> Plan:
    try:
        monitoring = Monitoring(**entry["monitoring"])
        if monitoring.tier not in ("shared", "dedicated"):
            raise CatalogueError(f"plan {name}: monitoring.tier must be shared or dedicated")
        if monitoring.tier == "dedicated" and (monitoring.retentionDays < 1 or monitoring.storageGb < 1):
            raise CatalogueError(f"plan {name}: a dedicated tier needs monitoring.retentionDays and storageGb >= 1")
        limits = Limits(**entry["limits"])
        broker = BrokerLimits(**entry.get("broker", {}))
        for group, values in (("limits", limits), ("broker", broker)):
            for field_name, value in vars(values).items():
                if not isinstance(value, int) or value < 1:
                    raise CatalogueError(f"plan {name}: {group}.{field_name} must be a positive integer")
        if broker.maxPacketBytes > topics.MAX_PACKET_BYTES:
            raise CatalogueError(f"plan {name}: broker.maxPacketBytes must be at most {topics.MAX_PACKET_BYTES} (what ingest accepts)")
        return Plan(
            name=name,
            limits=limits,
            features=Features(**entry.get("features", {})),
            monitoring=monitoring,
            quota=Quota(**entry["quota"]),
            broker=broker,
        )
    except (KeyError, TypeError) as error:
        raise CatalogueError(f"plan {name}: {error}") from error


def load_catalogue(path: Path | None = None) -> dict[str, Plan]:
    """The default catalogue, or the one in ``path`` (a mapping of plan name to entry)."""
    entries = DEFAULT_CATALOGUE
    if path is not None:
        loaded = yaml.safe_load(path.read_text())
        if not isinstance(loaded, dict) or not loaded:
            raise CatalogueError(f"{path}: expected a mapping of plan names to plans")
        entries = loaded
    return {name: _plan(name, entry) for name, entry in entries.items()}
