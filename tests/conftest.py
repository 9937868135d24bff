"""Fixtures that give tests real parts: a local Kubernetes control plane built from source."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from dataplane import LicenceFiles, Stack, broker_identities, start_stack, write_licence
from iotenant.licensing import keys as licence_keys
from iotenant.mosquitto.identities import new_share_group
from iotenant_testbed import cluster as devcluster
from iotenant_testbed.binaries import Binaries, MissingPart, ensure_binaries
from iotenant_testbed.loopback import free_port
from iotenant_testbed.mosquitto import MosquittoBroker
from real_services import PostgresServer

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"
TEST_CLUSTER = os.environ.get("IOTENANT_TEST_CLUSTER", "iotenant-test")


@dataclass
class Cluster:
    """A running local cluster with an admin client."""

    name: str
    kubeconfig: Path
    binaries: Binaries
    api: client.ApiClient

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return devcluster.kubectl(self.binaries, self.kubeconfig, *args, stdin=stdin, check=check)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def audit_log(self) -> Path:
        return devcluster.LocalCluster(self.name).audit_log


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    try:
        return ensure_binaries()
    except MissingPart as error:
        pytest.fail(f"{error}\nSet up a fresh machine with: bash .ci/run (or see README.md)", pytrace=False)


@pytest.fixture(scope="session")
def kube(binaries: Binaries) -> Iterator[Cluster]:
    """A fresh local cluster for this test session, deleted afterwards."""
    devcluster.down(TEST_CLUSTER)
    kubeconfig = devcluster.up(TEST_CLUSTER)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Cluster(name=TEST_CLUSTER, kubeconfig=kubeconfig, binaries=binaries, api=api)
    finally:
        api.close()
        if os.environ.get("IOTENANT_KEEP_TEST_CLUSTER") != "1":
            devcluster.down(TEST_CLUSTER)


def load_yaml(path: Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="session")
def crds(kube: Cluster) -> list[dict]:
    """The CRDs from crds/, installed and Established."""
    documents = [load_yaml(path) for path in sorted(CRD_DIR.glob("*.yaml"))]
    for path in sorted(CRD_DIR.glob("*.yaml")):
        kube.kubectl("apply", "--server-side", "--field-manager=iotenant-tests", "-f", str(path))
    for document in documents:
        kube.kubectl("wait", "--for=condition=Established", f"crd/{document['metadata']['name']}", "--timeout=30s")
    return documents


OPERATOR_NAMESPACE = "iotenant-system"
RESYNC_SECONDS = 5
EXPIRY_GRACE_SECONDS = 86400


BILLING_ISSUER = "billing-test"


@dataclass
class BillingIssuer:
    """A billing system's key pair, trusted by the operator under test as issuer ``BILLING_ISSUER``.

    Its trusted JWKS also holds what must never verify anything: a 1024-bit RSA key (``weak_key``),
    an EC key and a key without ``kid``.
    """

    key: licence_keys.SigningKey
    weak_key: licence_keys.SigningKey
    trusted_issuers_file: Path


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def billing(tmp_path_factory: pytest.TempPathFactory) -> BillingIssuer:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = licence_keys.SigningKey.generate()
    weak = licence_keys.SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    ec_key = {"kty": "EC", "kid": "billing-ec", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    without_kid = {key_name: value for key_name, value in licence_keys.SigningKey.generate().jwk.items() if key_name != "kid"}
    trusted_issuers_file = tmp_path_factory.mktemp("billing") / "trusted-issuers.json"
    trusted_issuers_file.write_text(json.dumps({BILLING_ISSUER: {"keys": [key.jwk, weak.jwk, ec_key, without_kid]}}))
    return BillingIssuer(key=key, weak_key=weak, trusted_issuers_file=trusted_issuers_file)


@pytest.fixture(scope="session")
def broker_addresses(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's broker address overrides: tenant brokers run here on loopback, not in pods."""
    path = tmp_path_factory.mktemp("brokers") / "addresses.json"
    path.write_text("{}")
    return path


CHART = REPO / "charts" / "iotenant"
OPERATOR_ACCOUNT = "iotenant-operator"
SECRET_READER_ROLE = f"{OPERATOR_ACCOUNT}-secrets"  # the chart's, bound by the operator in each customer namespace
# The registry credentials the suite's operator is configured with (chart value imagePullSecrets), for the tenant pods.
PULL_SECRET = "registry-credentials"
PULL_SECRET_CONFIG = {"auths": {"registry.invalid": {"auth": "aW90ZW5hbnQ6dGVzdA=="}}}
OPERATOR_IDENTITY = "pytest-operator"


def render_chart(binaries: Binaries, *arguments: str) -> list[dict]:
    """``helm template`` of the chart (release iotenant in the operator namespace), parsed."""
    result = subprocess.run(
        [str(binaries.path("helm")), "template", "iotenant", str(CHART), "--namespace", OPERATOR_NAMESPACE, *arguments],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: Cluster, binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding only the chart's ServiceAccount identity, from a TokenRequest.

    The chart's ServiceAccount, ClusterRole, Role and bindings, and its admission fence, are installed
    as helm renders them; the operator under test then runs with exactly that identity, so every test
    that uses it proves the chart's RBAC sufficient and the fence no hindrance.
    """
    kube.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kube.kubectl("create", "namespace", "billing", check=False)  # the chart's Role there lets the operator read billing licences
    rbac = [o for o in render_chart(binaries, "--set", "installCRDs=false", "--set", f"imagePullSecrets[0].name={PULL_SECRET}")
            if is_operator_rbac(o)]
    kube.kubectl("apply", "--server-side", "--field-manager=iotenant-tests", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    registry = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": PULL_SECRET, "namespace": OPERATOR_NAMESPACE},
                "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": json.dumps(PULL_SECRET_CONFIG)}}
    kube.kubectl("apply", "--server-side", "--field-manager=iotenant-tests", "-f", "-", stdin=json.dumps(registry))
    kubeconfig = token_kubeconfig(kube, OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, tmp_path_factory.mktemp("operator-identity"))
    # The API server takes a moment to load a new admission policy: wait until the fence refuses a dry run.
    probe = json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fence-probe", "namespace": "default"}})
    wait_for(lambda: devcluster.kubectl(binaries, kubeconfig, "create", "--dry-run=server", "-f", "-", stdin=probe, check=False).returncode != 0,
             timeout=30, what="the admission fence to be in force")
    return kubeconfig


SERVICE_MONITOR_CRD_FILE = REPO / "examples" / "monitoring" / "servicemonitor-crd.yaml"
PROMETHEUS_RULE_CRD_FILE = REPO / "examples" / "monitoring" / "prometheusrule-crd.yaml"


@pytest.fixture
def servicemonitor_crd(kube: Cluster) -> None:
    """The ServiceMonitor and PrometheusRule CRDs, so that shared-tier instances can become fully Ready."""
    for path in (SERVICE_MONITOR_CRD_FILE, PROMETHEUS_RULE_CRD_FILE):
        kube.kubectl("apply", "--server-side", "-f", str(path))
    for name in ("servicemonitors", "prometheusrules"):
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com", "--timeout=30s")


def is_operator_rbac(manifest: dict) -> bool:
    """The chart's objects that make the operator's identity: its account, roles, bindings and fence
    (not the roles it ships for people and billing systems)."""
    return manifest["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding") \
        and manifest["metadata"]["name"].startswith(OPERATOR_ACCOUNT)


def token_kubeconfig(kube: Cluster, account: str, namespace: str, folder: Path) -> Path:
    """A kubeconfig holding only a ServiceAccount's identity, from a TokenRequest."""
    token = kube.kubectl("create", "token", account, "-n", namespace, "--duration=8h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config_path = folder / f"{account}.kubeconfig"
    config_path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }))
    return config_path


@pytest.fixture(scope="session")
def operator(
    kube: Cluster, crds: list[dict], billing: BillingIssuer, broker_addresses: Path, operator_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningOperator]:
    """`iotenant operator` as the chart runs it (its ServiceAccount, leader election), with a short resync interval."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    metrics_port = free_port()
    env = dict(os.environ, KUBECONFIG=str(operator_kubeconfig))
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotenant", "operator",
             "--namespace", OPERATOR_NAMESPACE,
             "--service-account", OPERATOR_ACCOUNT, "--secret-reader-role", SECRET_READER_ROLE,
             "--image-pull-secrets", PULL_SECRET,
             "--resync-seconds", str(RESYNC_SECONDS),
             "--expiry-grace-seconds", str(EXPIRY_GRACE_SECONDS),
             "--trusted-issuers", str(billing.trusted_issuers_file),
             "--broker-addresses-file", str(broker_addresses),
             "--leader-election", "true", "--identity", OPERATOR_IDENTITY,
             "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port), "--health-port", "0",
             "--log-format", "text"],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )
    running = RunningOperator(process=process, log=log, metrics_port=metrics_port)

    def started() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the operator exited with {process.returncode}:\n{running.log_text()[-4000:]}")
        return kube.core.list_namespaced_config_map(OPERATOR_NAMESPACE, field_selector="metadata.name=licence-keys").items != []

    try:
        wait_for(started, timeout=60, what="the operator to publish its JWKS")
    except BaseException:
        process.kill()
        process.wait()
        print(f"\n--- operator log ---\n{running.log_text()[-4000:]}")
        raise
    try:
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"\n--- operator log (last 3000 characters) ---\n{running.log_text()[-3000:]}")


# ----------------------------------------------------------------------------------------------------
# Data plane: Debian's PostgreSQL and Mosquitto


@pytest.fixture(scope="session")
def service_root() -> Iterator[Path]:
    """A folder the services' own users can reach (pytest's temporary folders are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="iotenant-services-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(service_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(root=service_root / "postgres", superuser_password="postgres-superuser-password")
    try:
        server.initialise()
    except MissingPart as error:
        pytest.fail(str(error), pytrace=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker(service_root: Path) -> Iterator[MosquittoBroker]:
    server = MosquittoBroker(root=Path(tempfile.mkdtemp(prefix="broker-", dir=service_root)),
                             identities=broker_identities(), share_group=new_share_group())
    server.write_configuration()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres.create_database(request.node.name.replace("[", "_").replace("]", "")[:60].lower())


@pytest.fixture
def enterprise_licence(tmp_path: Path) -> LicenceFiles:
    return write_licence(tmp_path / "licence", "enterprise")


@pytest.fixture
def api_stack(database: str, broker: MosquittoBroker, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Starts ingest and api under a licence of a plan (claims overridden by keyword), with fixture telemetry;
    stops them after the test."""
    started: list[Stack] = []

    def start(plan: str, **overrides: object) -> Stack:
        stack = start_stack(database, broker, write_licence(tmp_path / "licence", plan, **overrides), tmp_path)
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.api.stop()
        stack.ingest.stop()
