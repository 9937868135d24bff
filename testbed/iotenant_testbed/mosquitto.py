"""The shipped Mosquitto (Debian's build, unpacked privately) running a tenant broker's configuration
on this machine (demo, tests, benchmarks).

Pods on the local cluster's fake nodes run nothing, so a tenant's broker runs here instead: from
the files the operator generated (ConfigMap ``broker-config``, Secret ``broker-dynamic-security``),
with local paths and a loopback listener. The operator reaches it through its broker address file.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from iotenant.licensing.plans import BrokerLimits, load_catalogue
from iotenant.mosquitto.admin_tls import ADMIN_PORT, AdminTLS, issue as issue_admin_tls
from iotenant.mosquitto.config import ADMIN_TLS_MOUNT, DYNSEC_PLUGIN, TLS_MOUNT, Listeners, mosquitto_conf
from iotenant.mosquitto.identities import Identity, dynamic_security_config
from iotenant.vocabulary.contract import MQTT_INTERNAL_PORT, MQTT_PORT, MQTTS_PORT
from iotenant_testbed.loopback import free_port, wait_port
from iotenant_testbed.mosquitto_package import MosquittoPackage, installed


def localise_broker_conf(conf: str, package: MosquittoPackage, data_dir: Path, admin_tls_dir: Path, port: int, admin_port: int,
                         tls_dir: Path | None = None, tls_port: int | None = None) -> str:
    """The operator-generated mosquitto.conf with this machine's paths and loopback listeners.

    Only paths, the plugin location and the listeners change; every other line runs as generated.
    The plaintext listener (1883, or the internal 1884 of a TLS-only broker) takes ``port``; a TLS
    device listener takes ``tls_port`` and the certificate files in ``tls_dir``. A generated file
    without the expected lines fails here, so the test follows the real file.
    """
    lines = conf.splitlines()
    plaintext = next((line for line in (f"listener {MQTT_PORT}", f"listener {MQTT_INTERNAL_PORT}") if line in lines), None)
    if plaintext is None:
        raise AssertionError(f"the generated mosquitto.conf has no plaintext listener:\n{conf}")
    replacements = {
        "persistence_location /mosquitto/data/": f"persistence_location {data_dir}/",
        f"plugin {DYNSEC_PLUGIN}": f"plugin {package.dynamic_security_plugin}",
        "plugin_opt_config_file /mosquitto/data/dynamic-security.json": f"plugin_opt_config_file {data_dir}/dynamic-security.json",
        plaintext: f"listener {port} 127.0.0.1",
        f"listener {ADMIN_PORT}": f"listener {admin_port} 127.0.0.1",
        **{f"{option} {ADMIN_TLS_MOUNT}/{name}": f"{option} {admin_tls_dir}/{name}"
           for option, name in (("cafile", "ca.crt"), ("certfile", "tls.crt"), ("keyfile", "tls.key"))},
    }
    if f"listener {MQTTS_PORT}" in lines:
        if tls_dir is None or tls_port is None:
            raise AssertionError("the generated mosquitto.conf has a TLS listener: give its certificate and a port")
        replacements.update({
            f"listener {MQTTS_PORT}": f"listener {tls_port} 127.0.0.1",
            f"certfile {TLS_MOUNT}/tls.crt": f"certfile {tls_dir}/tls.crt",
            f"keyfile {TLS_MOUNT}/tls.key": f"keyfile {tls_dir}/tls.key",
        })
    for generated, local in replacements.items():
        if generated not in lines:
            raise AssertionError(f"the generated mosquitto.conf has no line {generated!r}:\n{conf}")
        lines[lines.index(generated)] = local
    return "\n".join(lines) + "\n"


@dataclass
class MosquittoBroker:
    """Mosquitto running a configuration, a dynamic-security file and the admin listener's certificates.

    ``write_configuration`` renders them with the operator's functions (data-plane tests);
    ``write_generated`` takes them as the operator stored them in the cluster (fleet tests).
    """

    root: Path
    identities: list[Identity] = field(default_factory=list)
    share_group: str = "ingest"
    limits: BrokerLimits = field(default_factory=lambda: load_catalogue()["enterprise"].broker)
    container_memory_bytes: int | None = None  # the broker container's memory limit the configuration is rendered for
    admin_tls: AdminTLS = field(default_factory=lambda: issue_admin_tls("local"))
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    # The shipped release unless a test runs another (the previous one, to upgrade its volume).
    package: MosquittoPackage = field(default_factory=installed)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def write_configuration(self) -> None:
        conf = mosquitto_conf(Listeners(), limits=self.limits, container_memory_bytes=self.container_memory_bytes)
        seed = json.dumps(dynamic_security_config(self.identities, self.share_group))
        self.write_generated(conf, seed, self.admin_tls.server_secret())

    def write_generated(self, conf: str, dynamic_security: str, admin_listener: dict[str, str],
                        device_tls: dict[str, str] | None = None) -> None:
        """``device_tls``: the device listener's ``tls.crt`` and ``tls.key`` when the configuration has one."""
        config, data, admin_tls, device_tls_dir = self.config_dir, self.data_dir, self.config_dir / "admin-tls", self.config_dir / "tls"
        for folder in (admin_tls, device_tls_dir, data):
            folder.mkdir(parents=True, exist_ok=True)
        (config / "mosquitto.conf").write_text(
            localise_broker_conf(conf, self.package, data, admin_tls, self.port, self.admin_port, device_tls_dir, self.tls_port))
        for folder, files in ((admin_tls, admin_listener), (device_tls_dir, device_tls or {})):
            for name, text in files.items():
                (folder / name).write_text(text)
        seeded = data / "dynamic-security.json"
        if not seeded.exists():  # as the broker pod's init container: seed once, then the broker owns it
            seeded.write_text(dynamic_security)
        if os.geteuid() == 0:  # mosquitto drops to its own user: it must read the files and write its data
            user = pwd.getpwnam("mosquitto")
            for path in [self.root, config, data, *config.iterdir(), *data.iterdir(), *admin_tls.iterdir(), *device_tls_dir.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
                path.chmod(0o750 if path.is_dir() else 0o600 if path == seeded else 0o640)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.package.argv("mosquitto", "-c", str(self.config_dir / "mosquitto.conf")),
            stdout=(self.root / "mosquitto.log").open("ab"), stderr=subprocess.STDOUT,
        )
        wait_port(self.port)
        wait_port(self.admin_port)
        if f"listener {self.tls_port} 127.0.0.1" in (self.config_dir / "mosquitto.conf").read_text().splitlines():
            wait_port(self.tls_port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _secret_texts(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    data = core.read_namespaced_secret(name, namespace).data or {}
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def generated_broker_files(core: client.CoreV1Api, namespace: str) -> tuple[str, str, dict[str, str]] | None:
    """(mosquitto.conf, dynamic-security seed, admin listener certificates) as the operator stored them,
    or None while any is absent."""
    try:
        config_map = core.read_namespaced_config_map("broker-config", namespace).data or {}
        seed = _secret_texts(core, namespace, "broker-dynamic-security")
        admin_listener = _secret_texts(core, namespace, "broker-admin-listener")
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    if "mosquitto.conf" not in config_map or "dynamic-security.json" not in seed:
        return None
    return config_map["mosquitto.conf"], seed["dynamic-security.json"], admin_listener


def admin_tls_of(core: client.CoreV1Api, namespace: str) -> AdminTLS:
    """A tenant's admin certificates as the operator stored them (for tests that drive the broker directly)."""
    tls = AdminTLS.from_secrets(_secret_texts(core, namespace, "broker-admin-listener"), _secret_texts(core, namespace, "broker-admin"))
    if tls is None:
        raise AssertionError(f"{namespace}: the broker admin Secrets are incomplete")
    return tls


def start_tenant_broker(files: tuple[str, str, dict[str, str]], root: Path) -> MosquittoBroker:
    """Run a tenant's generated broker under ``root`` (a folder the mosquitto user can reach)."""
    broker = MosquittoBroker(root=root)
    broker.write_generated(*files)
    broker.start()
    return broker


def set_broker_address(addresses: Path, namespace: str, address: str | None) -> None:
    """Add or remove one entry of the operator's broker address file, atomically."""
    current = json.loads(addresses.read_text() or "{}") if addresses.exists() else {}
    if address is None:
        current.pop(namespace, None)
    else:
        current[namespace] = address
    staging = addresses.with_suffix(".tmp")
    staging.write_text(json.dumps(current))
    os.replace(staging, addresses)
