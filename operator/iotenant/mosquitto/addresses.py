"""Where the operator reaches each tenant's broker: a file of overrides (the local test bed), else the template."""

from __future__ import annotations

import json
from pathlib import Path

from iotenant.vocabulary.contract import MQTT_PORT


def split_address(address: str, default_port: int = MQTT_PORT) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    return (host, int(port)) if colon and port.isdigit() else (address, default_port)


class BrokerAddresses:
    """Where the operator reaches each tenant's broker: a file of overrides, else the template."""

    def __init__(self, template: str, overrides_file: Path | None = None) -> None:
        self.template = template
        self.overrides_file = overrides_file
        self._overrides: dict[str, str] = {}
        self._stamp: tuple[float, int] | None = None

    def _read_overrides(self) -> dict[str, str]:
        if self.overrides_file is None:
            return {}
        try:
            stat = self.overrides_file.stat()
        except FileNotFoundError:
            return {}
        if (stat.st_mtime, stat.st_size) != self._stamp:
            self._overrides = {str(k): str(v) for k, v in json.loads(self.overrides_file.read_text() or "{}").items()}
            self._stamp = (stat.st_mtime, stat.st_size)
        return self._overrides

    def __call__(self, namespace: str) -> tuple[str, int]:
        address = self._read_overrides().get(namespace) or self.template.format(namespace=namespace)
        return split_address(address)
