"""What an ingest process is told by its command line (``iotenant ingest --help``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IngestSettings:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    mqtt_username: str
    mqtt_password: str
    client_id: str
    share_group: str
    inflight: int
    batch_size: int
    batch_seconds: float
    licence_file: Path
    jwks_file: Path
    customer_id: str | None
    licence_grace_seconds: int
    replicas: int
    metrics_address: str
    metrics_port: int
