"""A container the operator rendered, run on this machine (demo, tests): pods on the local cluster's
fake nodes run nothing, so ingest, api, the simulator and the database setup run here instead.

The container's ``args`` run as ``iotenant <args>``; its environment comes from the manifest
(``valueFrom`` Secrets read from the cluster); its Secret and ConfigMap volumes are written out as
folders, as the kubelet mounts them, and environment values that point into a mount point there;
``overrides`` replace what only exists in a cluster (service host names, ports).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kubernetes import client
from kubernetes.client.exceptions import ApiException


@dataclass
class LocalProcess:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def read_secret(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's values as text, or None when it does not exist."""
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}


def localise_database_url(rendered: str, local: str) -> str:
    """A rendered database URL (role and password as generated) aimed at this machine's database."""
    role, here = urlsplit(rendered), urlsplit(local)
    return urlunsplit((role.scheme, f"{role.username}:{role.password}@{here.hostname}:{here.port}", here.path, "", ""))


def _volume_folder(core: client.CoreV1Api, namespace: str, volume: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if "secret" in volume:
        values = read_secret(core, namespace, volume["secret"]["secretName"]) or {}
        items = volume["secret"].get("items")
    elif "configMap" in volume:
        values = core.read_namespaced_config_map(volume["configMap"]["name"], namespace).data or {}
        items = volume["configMap"].get("items")
    else:
        return folder  # emptyDir: an empty folder
    for key, path in ((item["key"], item["path"]) for item in items) if items else ((key, key) for key in values):
        (folder / path).write_text(values[key])
    return folder


def pod_spec(apps: client.AppsV1Api, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """The pod template spec of a StatefulSet or Deployment, as the API serves it (camelCase)."""
    read = apps.read_namespaced_stateful_set if kind.lower() == "statefulset" else apps.read_namespaced_deployment
    manifest = apps.api_client.sanitize_for_serialization(read(name, namespace))
    return manifest["spec"]["template"]["spec"]


def run_container(core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str, kind: str, name: str, folder: Path,
                  overrides: dict[str, str], init_container: str | None = None) -> LocalProcess:
    """Run the first container (or the init container named) of ``kind``/``name`` here."""
    pod = pod_spec(apps, namespace, kind, name)
    container = next(c for c in pod["initContainers"] if c["name"] == init_container) if init_container else pod["containers"][0]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = {
        mount["mountPath"]: _volume_folder(core, namespace, volumes[mount["name"]], folder / mount["name"])
        for mount in container.get("volumeMounts", [])
    }
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = item["value"]
            for mount_path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
                if value.startswith(mount_path + "/") or value == mount_path:
                    value = str(local) + value[len(mount_path):]
                    break
            env[item["name"]] = value
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = (read_secret(core, namespace, ref["name"]) or {})[ref["key"]]
    env.update(overrides)
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("IOTENANT_")}
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{init_container or name}.log"
    process = subprocess.Popen([sys.executable, "-m", "iotenant", *container["args"]], env={**inherited, **env},
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return LocalProcess(process=process, env=env, log=log)
