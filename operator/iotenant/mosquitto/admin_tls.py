"""The broker's admin listener: mutual TLS with a private certificate authority per tenant.

Devices reach the broker on its MQTT listener with passwords; the operator's admin identity logs in
only on a separate listener (``ADMIN_PORT``) that requires a client certificate, whose common name
becomes the MQTT username (Mosquitto's ``use_identity_as_username``). The admin identity has no
password at all, so it cannot log in on the device listener, whatever leaks. A NetworkPolicy lets
only the operator's namespace reach the admin port.

For each tenant the operator makes a CA, signs the broker's server certificate and its own client
certificate with it, and throws the CA's key away: nothing can issue another admin certificate. Both
halves are kept in Secrets (``broker-admin-listener`` for the broker, ``broker-admin`` for the
operator); when either is lost, both are issued anew and the broker restarts with them.
"""

from __future__ import annotations

import datetime
import functools
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotenant.mosquitto.identities import ADMIN

ADMIN_PORT = 8884
VALIDITY = datetime.timedelta(days=3650)

# Keys of the two Secrets.
CA_CERT, CERT, KEY = "ca.crt", "tls.crt", "tls.key"


@dataclass(frozen=True)
class AdminTLS:
    """PEM texts: the tenant CA's certificate, the broker's server pair and the operator's client pair."""

    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def server_secret(self) -> dict[str, str]:
        return {CA_CERT: self.ca_cert, CERT: self.server_cert, KEY: self.server_key}

    def client_secret(self) -> dict[str, str]:
        return {CA_CERT: self.ca_cert, CERT: self.client_cert, KEY: self.client_key}

    @classmethod
    def from_secrets(cls, server: dict[str, str] | None, client: dict[str, str] | None) -> "AdminTLS | None":
        """The pair of Secrets as one, or None when either is missing, incomplete or the two do not belong together."""
        if not server or not client or any(not server.get(k) or not client.get(k) for k in (CA_CERT, CERT, KEY)):
            return None
        if server[CA_CERT] != client[CA_CERT]:
            return None
        return cls(server[CA_CERT], server[CERT], server[KEY], client[CERT], client[KEY])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue(namespace: str, now: datetime.datetime | None = None) -> AdminTLS:
    """A new CA for one tenant's broker, the broker's server certificate and the operator's client certificate."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"iotenant broker admin CA {namespace}")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, names: list[str]) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        return _cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key)

    service = f"broker.{namespace}.svc"
    server_cert, server_key = leaf("broker", ExtendedKeyUsageOID.SERVER_AUTH, [service, f"{service}.cluster.local", "broker"])
    client_cert, client_key = leaf(ADMIN, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return AdminTLS(_cert_pem(ca), server_cert, server_key, client_cert, client_key)


# A context takes about 27 KiB outside Python's heap and 1.4 ms to make, against tens of ms for the TLS
# handshake and the commands of one sync. The tenants syncing now keep theirs; a thousand tenants do not
# keep a thousand contexts between resyncs.
CLIENT_CONTEXTS_KEPT = 64


@functools.lru_cache(maxsize=CLIENT_CONTEXTS_KEPT)
def client_context(tls: AdminTLS) -> ssl.SSLContext:
    """The operator's side: its certificate, trusting only the tenant's CA. The CA is private to one
    tenant's broker, so a chain to it identifies that broker; host names are not checked (the operator
    may reach the broker through any address). Shared by the syncs of the tenants syncing now."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=tls.ca_cert)
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="iotenant-admin-") as folder:  # load_cert_chain reads files only
        cert, key = Path(folder) / CERT, Path(folder) / KEY
        cert.write_text(tls.client_cert)
        key.touch(mode=0o600)
        key.write_text(tls.client_key)
        context.load_cert_chain(str(cert), str(key))
    return context
