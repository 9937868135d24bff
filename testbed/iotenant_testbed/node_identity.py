"""Client identities of the real node's parts, signed by the local cluster's CA, and their kubeconfigs.

The kubelet is ``system:node:<node>`` in ``system:nodes`` (the Node authorizer gives it what a kubelet
may do), kube-proxy is ``system:kube-proxy`` (bound by the cluster's default ``system:node-proxier``
role), and the cluster DNS is ``iotenant-testbed:cluster-dns`` with a role of its own to read Services,
EndpointSlices and Namespaces.
"""

from __future__ import annotations

import datetime
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = datetime.timedelta(days=365)
CLUSTER_DNS_USER = "iotenant-testbed:cluster-dns"


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()


def node_identity(node_name: str) -> Identity:
    return Identity(f"system:node:{node_name}", ("system:nodes",))


KUBE_PROXY = Identity("system:kube-proxy")
CLUSTER_DNS = Identity(CLUSTER_DNS_USER)


def issue(identity: Identity, ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[bytes, bytes]:
    """A client certificate and its key (PEM) for ``identity``, signed by the cluster's CA."""
    with warnings.catch_warnings():
        # kwokctl's CA has a serial number RFC 5280 disallows (not positive); it still signs as it should.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in identity.groups]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, identity.user))
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_kubeconfig(target: Path, identity: Identity, server: str, ca_cert: Path, ca_key: Path) -> Path:
    """A kubeconfig for ``identity`` beside its certificate and key files; returns its path."""
    certificate, key = issue(identity, ca_cert.read_bytes(), ca_key.read_bytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = target.with_suffix(".crt"), target.with_suffix(".key")
    cert_file.write_bytes(certificate)
    key_file.touch(mode=0o600)
    key_file.write_bytes(key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_cert)}}],
        "users": [{"name": identity.user, "user": {"client-certificate": str(cert_file), "client-key": str(key_file)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": identity.user}}],
        "current-context": "local",
    }
    target.write_text(json.dumps(config, indent=2))
    return target


def cluster_dns_role() -> list[dict[str, object]]:
    """What the cluster DNS reads, as CoreDNS's upstream role grants it."""
    name = "iotenant-testbed:cluster-dns"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "namespaces", "pods"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CLUSTER_DNS_USER}],
        },
    ]
