"""Every customer's data plane run on this machine for the demo, from what the operator rendered
(pods on the fake nodes run nothing): Debian's Mosquitto and PostgreSQL, and ``iotenant`` processes.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from iotenant.mosquitto.identities import DeviceCredentials
from iotenant.vocabulary import tenant_database
from iotenant.vocabulary.meta import COMPONENT, FLEET, namespace_for
from iotenant_testbed.local_pods import LocalProcess, localise_database_url, read_secret, run_container
from iotenant_testbed.loopback import free_port
from iotenant_testbed.mosquitto import MosquittoBroker, generated_broker_files, set_broker_address, start_tenant_broker
from iotenant_testbed.postgres import PostgresServer

# Simulated sensors follow a wave between about 17 and 28 (iotenant simulate): this fires and resolves.
DEMO_ALERT_RULE = {"name": "sensor0 above 26 for 10 s", "type": "sensor0", "operator": ">", "threshold": 26, "forSeconds": 10}


@dataclass
class LocalStack:
    """One customer's data plane on this machine."""

    namespace: str
    broker: MosquittoBroker
    postgres: PostgresServer | None = None  # the tenant's own server: roles are per server, as in its pod
    database_url: str | None = None  # the superuser's URL of the tenant's database
    api_port: int | None = None
    processes: dict[str, LocalProcess] = field(default_factory=dict)
    announced: bool = False


class LocalStacks:
    """Every customer's broker, database, ingest, api and simulators, run here from what the operator rendered
    (pods on the fake nodes run nothing): Debian's Mosquitto and PostgreSQL, and ``iotenant`` processes."""

    def __init__(self, kubeconfig: Path, addresses: Path) -> None:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core, self.apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.addresses = addresses
        self.root = Path(tempfile.mkdtemp(prefix="iotenant-demo-"))
        self.root.chmod(0o755)  # mosquitto and postgres drop to their own users, which must reach their files
        self.stacks: dict[str, LocalStack] = {}

    def step(self) -> None:
        """Start what became ready since the last step."""
        instances = self.custom.list_cluster_custom_object("iotenant.io", "v1alpha1", "customerinstances")["items"]
        for item in instances:
            namespace = namespace_for(item["metadata"]["name"])
            stack = self.stacks.get(namespace) or self._start_broker(namespace)
            if stack is None:
                continue
            try:
                self._start_services(stack)
                self._start_simulators(stack)
            except ApiException as error:  # the operator is still making the objects
                if error.status != 404:
                    raise

    def _start_broker(self, namespace: str) -> LocalStack | None:
        files = generated_broker_files(self.core, namespace)
        if files is None:
            return None
        broker = start_tenant_broker(files, self.root / namespace / "broker")
        set_broker_address(self.addresses, namespace, f"127.0.0.1:{broker.admin_port}")
        print(f"iotenant: {namespace}: broker on 127.0.0.1:{broker.port}", file=sys.stderr)
        self.stacks[namespace] = stack = LocalStack(namespace, broker)
        return stack

    def _overrides(self, stack: LocalStack) -> dict[str, str]:
        return {"IOTENANT_MQTT_HOST": "127.0.0.1", "IOTENANT_MQTT_PORT": str(stack.broker.port),
                "IOTENANT_METRICS_ADDRESS": "127.0.0.1", "IOTENANT_LOG_FORMAT": "text"}

    def _start_services(self, stack: LocalStack) -> None:
        if "ingest" in stack.processes:
            return
        ingest = self.apps.read_namespaced_stateful_set("ingest", stack.namespace)
        credentials = read_secret(self.core, stack.namespace, "database-credentials")
        if not ingest.spec.replicas or credentials is None or read_secret(self.core, stack.namespace, "licence") is None:
            return  # not serving (yet): no licence, or suspended
        folder = self.root / stack.namespace
        if stack.postgres is None:
            stack.postgres = PostgresServer(root=folder / "postgres", superuser_password=secrets.token_urlsafe(16))
            stack.postgres.initialise()
            stack.postgres.start()
            stack.database_url = stack.postgres.create_database(tenant_database.NAME)
        setup = run_container(self.core, self.apps, stack.namespace, "statefulset", "ingest", folder / "setup",
                              {"IOTENANT_DATABASE_ADMIN_URL": stack.database_url, "IOTENANT_LOG_FORMAT": "text"},
                              init_container="database-setup")
        if setup.process.wait(timeout=120) != 0:
            print(f"iotenant: {stack.namespace}: database setup failed, see {setup.log}", file=sys.stderr)
            return
        stack.processes["ingest"] = run_container(
            self.core, self.apps, stack.namespace, "statefulset", "ingest", folder / "ingest",
            {**self._overrides(stack), "IOTENANT_DATABASE_URL": localise_database_url(credentials["ingest-url"], stack.database_url),
             "IOTENANT_METRICS_PORT": str(free_port()), "IOTENANT_CLIENT_ID": "ingest-0"})
        stack.api_port = free_port()
        stack.processes["api"] = run_container(
            self.core, self.apps, stack.namespace, "deployment", "api", folder / "api",
            {**self._overrides(stack), "IOTENANT_DATABASE_URL": localise_database_url(credentials["api-url"], stack.database_url),
             "IOTENANT_METRICS_PORT": str(free_port()), "IOTENANT_API_ADDRESS": "127.0.0.1", "IOTENANT_API_PORT": str(stack.api_port)})
        print(f"iotenant: {stack.namespace}: database, ingest and api running (logs in {folder})", file=sys.stderr)

    def _start_simulators(self, stack: LocalStack) -> None:
        if "ingest" not in stack.processes:
            return
        simulators = self.apps.list_namespaced_deployment(stack.namespace, label_selector=f"{COMPONENT}=simulator").items
        for deployment in simulators:
            name = deployment.metadata.name
            if name not in stack.processes:
                stack.processes[name] = run_container(self.core, self.apps, stack.namespace, "deployment", name,
                                                      self.root / stack.namespace / name,
                                                      {**self._overrides(stack), "IOTENANT_METRICS_PORT": "0"})

    def counts(self, stack: LocalStack) -> tuple[int, int, int] | None:
        """(telemetry rows stored, devices online, alerts firing) in the tenant's database, or None before it exists."""
        if stack.database_url is None:
            return None
        try:
            with psycopg.connect(stack.database_url, connect_timeout=2) as connection:
                rows, online, firing = connection.execute(
                    "SELECT (SELECT count(*) FROM telemetry), (SELECT count(*) FROM devices WHERE online), "
                    "(SELECT count(*) FROM alerts WHERE state = 'firing')").fetchone()
            return int(rows), int(online), int(firing)
        except psycopg.Error:
            return None

    def _api(self, stack: LocalStack, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{stack.api_port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def _feature_commands(self, stack: LocalStack, token: str, device: str) -> list[str]:
        """What the tenant's licence sells, shown: an alert rule the simulated sensors cross every few
        minutes (made through the API), an export, an OTA update."""
        api, auth = f"http://127.0.0.1:{stack.api_port}/api/v1", f"-H 'Authorization: Bearer {token}'"
        try:
            features = self._api(stack, token, "GET", "/api/v1/licence")["features"]
            if features.get("alerts"):
                self._api(stack, token, "POST", "/api/v1/alert-rules", DEMO_ALERT_RULE)
        except (OSError, ValueError, KeyError) as error:
            return [f"    (licensed features not shown: {error})"]
        lines = []
        if features.get("alerts"):
            lines.append(f"    curl -s {auth} '{api}/alerts?state=firing'   # rule {DEMO_ALERT_RULE['name']!r}, made by the demo")
        if features.get("export"):
            lines.append(f"    curl -s {auth} '{api}/export?format=ndjson' | head")
        if features.get("ota"):
            update = json.dumps({"version": "2.0.0", "url": "https://updates.example/fw/2.0.0.bin", "sha256": "0" * 64})
            lines.append(f"    curl -s {auth} -H 'Content-Type: application/json' -d '{update}' {api}/devices/{device}/ota"
                         "   # then GET the same path: the simulator reports progress")
        return lines

    def report(self) -> list[str]:
        """One line per tenant; once a tenant stores telemetry, the commands a person can paste, once."""
        lines = []
        for namespace, stack in sorted(self.stacks.items()):
            counts = self.counts(stack)
            api = f", API http://127.0.0.1:{stack.api_port}" if stack.api_port else ""
            lines.append(f"{namespace}: broker 127.0.0.1:{stack.broker.port}{api}"
                         + (f"; {counts[0]} measurements stored, {counts[1]} devices online, {counts[2]} alerts firing"
                            if counts else ""))
            if counts and counts[0] and not stack.announced:
                stack.announced = True
                lines += self._commands(stack)
        return lines

    def _commands(self, stack: LocalStack) -> list[str]:
        token = (read_secret(self.core, stack.namespace, "api-token") or {}).get("token", "")
        with psycopg.connect(stack.database_url or "") as connection:
            reporting = [row[0] for row in connection.execute("SELECT device_id FROM devices ORDER BY last_seen DESC")]
        credentials = {}
        for secret in self.core.list_namespaced_secret(stack.namespace, label_selector=FLEET).items:
            for device_id, value in (secret.data or {}).items():
                credentials[device_id] = DeviceCredentials.from_url(base64.b64decode(value).decode())
        quiet = next((c for device_id, c in sorted(credentials.items()) if device_id not in reporting), None)
        api = f"http://127.0.0.1:{stack.api_port}/api/v1/devices"
        lines = [f"  try it ({stack.namespace}):",
                 f"    curl -s -H 'Authorization: Bearer {token}' {api}/{reporting[0]}/telemetry/last",
                 *self._feature_commands(stack, token, reporting[0])]
        if quiet is not None:  # a device no simulator plays: publish as it, then read it back
            datagram = '{"v": 2, "ts": \'$(date +%s)\', "seq": 1, "measurements": [{"type": "temperature", "val": 21.5, "unit": "C"}]}'
            lines += [
                f"    mosquitto_pub -h 127.0.0.1 -p {stack.broker.port} -i {quiet.device_id} -u {quiet.device_id} -P '{quiet.password}' "
                f"-q 1 -t iot/{quiet.device_id}/telemetry -m '{datagram}'",
                f"    curl -s -H 'Authorization: Bearer {token}' {api}/{quiet.device_id}/telemetry/last",
                f"    mosquitto_sub -h 127.0.0.1 -p {stack.broker.port} -i {quiet.device_id} -u {quiet.device_id} -P '{quiet.password}' "
                f"-t '#'   # refused: a device may subscribe only to iot/{quiet.device_id}/#",
            ]
        return lines

    def stop(self) -> None:
        for namespace, stack in self.stacks.items():
            for process in stack.processes.values():
                process.stop()
            stack.broker.stop()
            if stack.postgres is not None:
                stack.postgres.stop()
            set_broker_address(self.addresses, namespace, None)
        shutil.rmtree(self.root, ignore_errors=True)
