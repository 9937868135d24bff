"""The main job: a local control plane, the CRDs, the operator and the examples, shown until Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from iotenant.licensing import licence as licences

from iotenant.licensing import keys as licence_keys
from iotenant.devcluster import cluster
from iotenant.devcluster.binaries import cache_dir, ensure_binaries, source_dir
from iotenant.broker.identities import DeviceCredentials
from iotenant.devcluster.local_pods import LocalProcess, localise_database_url, read_secret, run_container
from iotenant.devcluster.mosquitto import MosquittoBroker, generated_broker_files, set_broker_address, start_tenant_broker
from iotenant.devcluster.loopback import free_port
from iotenant.devcluster.postgres import PostgresServer
from iotenant.render.fleet import FLEET_LABEL
from iotenant.render.meta import COMPONENT, namespace_for
from iotenant.licensing.plans import load_catalogue

OPERATOR_NAMESPACE = "iotenant-system"
# Simulated sensors follow a wave between about 17 and 28 (iotenant simulate): this fires and resolves.
DEMO_ALERT_RULE = {"name": "sensor0 above 26 for 10 s", "type": "sensor0", "operator": ">", "threshold": 26, "forSeconds": 10}
BILLING_NAMESPACE = "billing"


def repository_root() -> Path:
    return source_dir().parent


DEMO_BILLING_ISSUER = "demo-billing"


def billing_issuer(folder: Path) -> tuple[licence_keys.SigningKey, Path]:
    """A demo billing system's key (made once) and the trusted issuers file naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "billing-key.pem", folder / "billing-jwks.json"
    key = licence_keys.write_key_pair(private, public) if not private.is_file() or not public.is_file() else \
        licence_keys.SigningKey.from_pem(private.read_bytes())
    trusted = folder / "trusted-issuers.json"
    trusted.write_text(json.dumps({DEMO_BILLING_ISSUER: json.loads(public.read_text())}))
    return key, trusted


@dataclass
class LocalStack:
    """One customer's data plane on this machine."""

    namespace: str
    broker: MosquittoBroker
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
        self.postgres = PostgresServer(root=self.root / "postgres", superuser_password=secrets.token_urlsafe(16))
        self.postgres.initialise()
        self.postgres.start()
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
        stack.database_url = stack.database_url or self.postgres.create_database(stack.namespace.replace("-", "_"))
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

    def _alert_rule(self, stack: LocalStack, token: str) -> list[str]:
        """Where the licence sells alerts: a rule the simulated sensors cross every few minutes, made through the API."""
        rule = json.dumps(DEMO_ALERT_RULE).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{stack.api_port}/api/v1/alert-rules", data=rule, method="POST",
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as error:  # 403: this licence has no alerts
            return [] if error.code == 403 else [f"    (alert rule not created: {error.code} {error.read()[:200]!r})"]
        except OSError as error:
            return [f"    (alert rule not created: {error})"]
        return [f"    curl -s -H 'Authorization: Bearer {token}' 'http://127.0.0.1:{stack.api_port}/api/v1/alerts?state=firing'"
                f"   # rule {DEMO_ALERT_RULE['name']!r}, made by the demo"]

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
        for secret in self.core.list_namespaced_secret(stack.namespace, label_selector=FLEET_LABEL).items:
            for device_id, value in (secret.data or {}).items():
                credentials[device_id] = DeviceCredentials.from_url(base64.b64decode(value).decode())
        quiet = next((c for device_id, c in sorted(credentials.items()) if device_id not in reporting), None)
        api = f"http://127.0.0.1:{stack.api_port}/api/v1/devices"
        lines = [f"  try it ({stack.namespace}):",
                 f"    curl -s -H 'Authorization: Bearer {token}' {api}/{reporting[0]}/telemetry/last",
                 *self._alert_rule(stack, token)]
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
            set_broker_address(self.addresses, namespace, None)
        self.postgres.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def run(name: str) -> int:
    binaries = ensure_binaries()
    kubeconfig = cluster.up(name)
    repo = repository_root()

    def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(binaries, kubeconfig, *args, stdin=stdin, check=check)

    print(f"iotenant: cluster {name!r} is up; KUBECONFIG={kubeconfig}", file=sys.stderr)
    kubectl("apply", "--server-side", "--field-manager=iotenant-demo", "-f", str(repo / "crds"))
    # Stands in for the Prometheus Operator, so shared-tier customers get their ServiceMonitor.
    kubectl("apply", "--server-side", "--field-manager=iotenant-demo", "-f", str(repo / "examples" / "monitoring"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for namespace in (OPERATOR_NAMESPACE, BILLING_NAMESPACE):
        kubectl("create", "namespace", namespace, check=False)

    billing_key, trusted_issuers = billing_issuer(cache_dir() / "demo")
    claims = load_catalogue()["professional"].claims("umbrella-corp", DEMO_BILLING_ISSUER, 30 * 86400)
    token = licences.sign(claims, billing_key)
    secret = kubectl(
        "create", "secret", "generic", "umbrella-licence", "-n", BILLING_NAMESPACE,
        f"--from-literal=licence.jwt={token}", "--dry-run=client", "-o", "yaml",
    ).stdout
    kubectl("apply", "-f", "-", stdin=secret)

    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    # Tenant brokers run here (pods on the fake nodes run nothing); the operator finds them in this file.
    addresses = cache_dir() / "clusters" / name / "broker-addresses.json"
    addresses.write_text("{}")
    stacks = LocalStacks(kubeconfig, addresses)
    log_path = cache_dir() / "clusters" / name / "operator.log"
    print(f"iotenant: starting the operator (log: {log_path})", file=sys.stderr)
    with log_path.open("a") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "iotenant", "operator", "--namespace", OPERATOR_NAMESPACE,
             "--trusted-issuers", str(trusted_issuers), "--resync-seconds", "30",
             "--broker-addresses-file", str(addresses),
             "--metrics-address", "127.0.0.1", "--metrics-port", "9100", "--health-port", "8081"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        examples = sorted((repo / "examples").glob("customerinstance-*.yaml"))
        for example in examples:
            kubectl("apply", "-f", str(example))
        fleets_applied = False
        while True:
            if operator.poll() is not None:
                print(f"iotenant: the operator exited with {operator.returncode}; see {log_path}", file=sys.stderr)
                return 1
            if not fleets_applied:
                fleets = sorted((repo / "examples").glob("devicefleet-*.yaml"))
                fleets_applied = all(kubectl("apply", "-f", str(f), check=False).returncode == 0 for f in fleets)
            stacks.step()
            table = kubectl("get", "customerinstances", check=False).stdout
            fleet_table = kubectl("get", "devicefleets", "-A", check=False).stdout
            print(f"\n{time.strftime('%H:%M:%S')}  (Ctrl-C stops the operator; `iotenant dev down` stops the cluster)")
            print(table.rstrip())
            if fleet_table.strip():
                print(fleet_table.rstrip())
            for line in stacks.report():
                print(line)
            time.sleep(5)
    except KeyboardInterrupt:
        print("\niotenant: stopping the operator", file=sys.stderr)
        return 0
    finally:
        stacks.stop()
        if operator.poll() is None:
            operator.send_signal(signal.SIGINT)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
