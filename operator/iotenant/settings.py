"""The operator's settings: each a command-line flag with an IOTENANT_... environment variable."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from iotenant import __version__
from iotenant.environment_flags import boolean, flag

# Where the alerts' runbooks are: the troubleshooting guide of this release's documentation.
RUNBOOK_BASE_URL = f"https://github.com/iotenant/iotenant/blob/v{__version__}/docs/operate.md"
# The Mosquitto the stack ships; `iotenant dev build` unpacks the same release from Debian for the tests.
MOSQUITTO_VERSION = "2.1.2"


@dataclass(frozen=True)
class Images:
    """Pinned container images of a customer stack. The chart sets each (``iotenant`` is the chart's own image)."""

    broker: str = f"eclipse-mosquitto:{MOSQUITTO_VERSION}"
    database: str = "postgres:17.12-trixie"
    prometheus: str = "prom/prometheus:v2.54.1"
    iotenant: str = f"ghcr.io/iotenant/iotenant:{__version__}"


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
    trusted_issuers: Path | None = None
    billing_namespaces: tuple[str, ...] = ("billing",)
    broker_address_template: str = "broker.{namespace}.svc:8884"
    broker_addresses_file: Path | None = None
    device_broker_address_template: str = "broker.{namespace}.svc:1883"
    create_signing_keys: bool = True
    # The operator's ServiceAccount (in ``namespace``) and the ClusterRole that each customer namespace binds
    # to it so that it may read that namespace's Secrets (the chart's); either empty: nothing is bound.
    service_account: str = ""
    secret_reader_role: str = ""
    # Where the tenants' pods resolve names: the cluster DNS's namespace (and pods, when a selector is
    # given) on these ports, plus addresses outside any pod network (NodeLocal DNSCache's link-local one).
    dns_namespace: str = "kube-system"
    dns_pod_selector: tuple[str, ...] = ("k8s-app=kube-dns",)
    dns_ports: tuple[int, ...] = (53,)
    dns_cidrs: tuple[str, ...] = ()
    # The API server's own addresses and ports (the endpoints of Service default/kubernetes), all that a
    # dedicated Prometheus may reach; empty: the operator reads them from EndpointSlice default/kubernetes.
    apiserver_cidrs: tuple[str, ...] = ()
    apiserver_ports: tuple[int, ...] = (443, 6443)
    # The StorageClass of tenant volumes whose spec names none (empty: the cluster's default class).
    storage_class: str = ""
    # Pull Secrets in ``namespace`` that tenant pods pull their images with (copied into each customer namespace).
    image_pull_secrets: tuple[str, ...] = ()
    # Apply changes that restart a tenant's pods at once, whatever its maintenance window (a security fix).
    urgent_restarts: bool = False
    # The troubleshooting guide that every alert's runbook_url points into (#<alert name in lower case>).
    runbook_base_url: str = RUNBOOK_BASE_URL
    images: Images = Images()

    def device_broker_address(self, namespace: str, customer: str) -> str:
        """host:port that devices of this customer connect to (in their credentials and the instance's status)."""
        return self.device_broker_address_template.format(namespace=namespace, customer=customer)


def comma_list(value: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    return tuple(item.strip() for item in value.split(",") if item.strip())


def label_list(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated key=value labels."""
    labels = comma_list(value)
    if any("=" not in label or not label.split("=", 1)[0] for label in labels):
        raise ValueError(f"labels must be key=value, comma-separated: {value!r}")
    return labels


def secret_names(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated Secret names, each a DNS label (1..63 of [a-z0-9-], alphanumeric at both ends)."""
    names = comma_list(value)
    if any(not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name) for name in names):
        raise ValueError(f"Secret names must be DNS labels (1..63 of a-z, 0-9 and -), comma-separated: {value!r}")
    return names


def port_list(value: str | tuple[int, ...]) -> tuple[int, ...]:
    """Comma-separated ports, each 1..65535."""
    if isinstance(value, tuple):
        return value
    ports = tuple(int(item) for item in comma_list(value))
    if not ports or any(not 1 <= port <= 65535 for port in ports):
        raise ValueError(f"ports must be 1..65535, comma-separated: {value!r}")
    return ports


# (attribute, environment variable, type, help); the flag is --<attribute with dashes>.
_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("namespace", "IOTENANT_NAMESPACE", str, "the operator's own namespace (signing key, JWKS)"),
    ("issuer", "IOTENANT_ISSUER", str, "the iss claim of licences this operator issues"),
    ("resync_seconds", "IOTENANT_RESYNC_SECONDS", float, "how often every instance is compared with the cluster (drift, renewal)"),
    ("expiry_grace_seconds", "IOTENANT_EXPIRY_GRACE_SECONDS", float, "how long an expired billing licence keeps serving (Degraded) before Suspended"),
    ("renew_fraction", "IOTENANT_RENEW_FRACTION", float, "re-issue an operator licence when less than this fraction of its validity remains"),
    ("ingress_namespace", "IOTENANT_INGRESS_NAMESPACE", str, "namespace whose pods may reach customer APIs"),
    ("monitoring_namespace", "IOTENANT_MONITORING_NAMESPACE", str, "namespace whose pods may scrape customer metrics"),
    ("plan_catalogue", "IOTENANT_PLAN_CATALOGUE", Path, "YAML file replacing the built-in plan catalogue"),
    ("trusted_issuers", "IOTENANT_TRUSTED_ISSUERS", Path,
     'JSON file naming the billing systems whose licences are trusted: {"<issuer>": {"keys": [...]}}; a licence\'s iss must name the issuer whose key verified it'),
    ("billing_namespaces", "IOTENANT_BILLING_NAMESPACES", comma_list,
     "namespaces (comma-separated) from which spec.licence.secretRef may take a billing licence; any other is refused"),
    ("broker_address_template", "IOTENANT_BROKER_ADDRESS_TEMPLATE", str,
     "host:port where the operator reaches a tenant broker to manage its identities; {namespace} is replaced"),
    ("broker_addresses_file", "IOTENANT_BROKER_ADDRESSES_FILE", Path,
     "JSON file {namespace: host:port} taking precedence over the template (an operator outside the cluster, port-forwards); re-read when it changes"),
    ("device_broker_address_template", "IOTENANT_DEVICE_BROKER_ADDRESS_TEMPLATE", str,
     "host:port written into device credentials (what devices connect to); {namespace} and {customer} are replaced"),
    ("dns_namespace", "IOTENANT_DNS_NAMESPACE", str, "namespace of the cluster DNS that tenant pods may query (openshift-dns on OpenShift)"),
    ("dns_pod_selector", "IOTENANT_DNS_POD_SELECTOR", label_list,
     "labels (key=value, comma-separated) of the DNS pods in that namespace (default k8s-app=kube-dns); empty: any pod there"),
    ("dns_ports", "IOTENANT_DNS_PORTS", port_list, "DNS ports tenant pods may use, UDP and TCP, comma-separated (5353 on OpenShift)"),
    ("dns_cidrs", "IOTENANT_DNS_CIDRS", comma_list,
     "addresses outside the pod network that serve DNS (NodeLocal DNSCache: 169.254.20.10/32), comma-separated"),
    ("apiserver_cidrs", "IOTENANT_APISERVER_CIDRS", comma_list,
     "the Kubernetes API server's addresses (endpoints of default/kubernetes), comma-separated: all a dedicated "
     "Prometheus may reach, on --apiserver-ports; empty: read from EndpointSlice default/kubernetes (addresses and ports), "
     "and when that cannot be read, any address on --apiserver-ports"),
    ("apiserver_ports", "IOTENANT_APISERVER_PORTS", port_list, "the API server's ports with --apiserver-cidrs (default 443,6443)"),
    ("storage_class", "IOTENANT_STORAGE_CLASS", str,
     "StorageClass of new tenant volumes whose spec names none (empty: the cluster's default); volumes keep the class they were made in"),
    ("image_pull_secrets", "IOTENANT_IMAGE_PULL_SECRETS", secret_names,
     "pull Secrets (kubernetes.io/dockerconfigjson) in --namespace, comma-separated, that tenant pods pull their images with: "
     "each is copied into every customer namespace and named by every pod the operator makes"),
    ("urgent_restarts", "IOTENANT_URGENT_RESTARTS", boolean,
     "apply changes that restart tenants' pods at once, whatever their spec.maintenance window (a security fix that cannot wait)"),
    ("runbook_base_url", "IOTENANT_RUNBOOK_BASE_URL", str,
     "the troubleshooting guide (docs/operate.md, where your copy of the docs is served) that each tenant alert's runbook_url points into"),
    ("service_account", "IOTENANT_SERVICE_ACCOUNT", str,
     "the operator's ServiceAccount in --namespace, bound in each customer namespace to --secret-reader-role"),
    ("secret_reader_role", "IOTENANT_SECRET_READER_ROLE", str,
     "ClusterRole letting the operator read Secrets, bound in each customer namespace it manages (and nowhere else); "
     "empty: nothing is bound (an operator run with credentials that read Secrets everywhere)"),
    ("create_signing_keys", "IOTENANT_CREATE_SIGNING_KEYS", boolean,
     "create the licence signing key ring on first start when its Secret is absent (false: it must be restored or provided)"),
]
# (image attribute, environment variable); the flag is --<attribute>-image. The chart sets each variable
# from its stackImages (IOTENANT_<ATTRIBUTE>_IMAGE), and the product's own image as IOTENANT_IMAGE.
_IMAGE_FLAGS = [(image.name, "IOTENANT_IMAGE" if image.name == "iotenant" else f"IOTENANT_{image.name.upper()}_IMAGE")
                for image in dataclasses.fields(Images)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = OperatorSettings()
    for attribute, variable, kind, help_text in _FLAGS:
        flag(parser, "--" + attribute.replace("_", "-"), variable, help_text, kind=kind, default=getattr(defaults, attribute))
    for attribute, variable in _IMAGE_FLAGS:
        flag(parser, f"--{attribute}-image", variable, f"the pinned {attribute} image", default=getattr(defaults.images, attribute))


def from_arguments(args: argparse.Namespace) -> OperatorSettings:
    images = Images(**{attribute: getattr(args, f"{attribute}_image") for attribute, _variable in _IMAGE_FLAGS})
    return OperatorSettings(**{attribute: getattr(args, attribute) for attribute, *_ in _FLAGS}, images=images)
