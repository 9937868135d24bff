"""Whether the broker can serve devices over TLS, judged from its Secret (outside input) and cert-manager's presence.

Pure. A Secret whose certificate and key do not parse, or do not belong together, never reaches
Mosquitto (which would refuse to start and take every device of the tenant down with it): the TLS
listener stays closed and ``TLSReady`` says why, while the rest of the tenant keeps working.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotenant.customer_instance.kept_secrets import Undecodable, decode
from iotenant.kube.conditions import FALSE, TRUE, Condition
from iotenant.vocabulary.contract import MQTTS_PORT

Manifest = dict[str, Any]
CERT_MANAGER_MISSING = "CertManagerMissing"
# PEM text larger than this is not a certificate chain anyone serves.
MAX_PEM_BYTES = 64 * 1024


@dataclass(frozen=True)
class BrokerTLS:
    condition: Condition | None  # None: the spec asks for no TLS
    certificate_hash: str | None = None  # set when the listener can start with this certificate

    @property
    def pending(self) -> bool:
        """Waiting for a Secret that nothing watched will announce (cert-manager, or the customer)."""
        return self.condition is not None and self.condition.status != TRUE and self.condition.reason != CERT_MANAGER_MISSING


def _judge_pair(certificate_pem: str, key_pem: str) -> str | None:
    """Why this certificate and key cannot serve, or None when they can."""
    if len(certificate_pem) > MAX_PEM_BYTES or len(key_pem) > MAX_PEM_BYTES:
        return "tls.crt or tls.key is larger than 64 KiB"
    try:
        chain = x509.load_pem_x509_certificates(certificate_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        return f"tls.crt and tls.key must be a PEM certificate and an unencrypted PEM private key ({type(error).__name__})"
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != public:
        return "tls.key is not the key of the first certificate in tls.crt"
    return None


def broker_tls(tls_spec: dict[str, Any] | None, secret_name: str | None, certificate_crd_present: bool,
               secret: Manifest | None) -> BrokerTLS:
    """``TLSReady`` and, when the listener can start, a hash of the certificate (the broker restarts when it changes)."""
    if not tls_spec or secret_name is None:
        return BrokerTLS(None)
    issued = bool(tls_spec.get("issuerRef"))
    if issued and not certificate_crd_present:
        return BrokerTLS(Condition(
            "TLSReady", FALSE, CERT_MANAGER_MISSING,
            "CRD certificates.cert-manager.io is not installed: install cert-manager; the broker serves without TLS "
            "until it is, and the Certificate is created as soon as the CRD appears"))
    try:
        certificate, key = decode(secret, "tls.crt"), decode(secret, "tls.key")
    except Undecodable as error:
        return BrokerTLS(Condition("TLSReady", FALSE, "SecretInvalid", f"Secret {secret_name}: {error}"))
    if secret is None or not certificate or not key:
        if issued:
            return BrokerTLS(Condition("TLSReady", FALSE, "CertificatePending",
                                       f"waiting for cert-manager to issue Secret {secret_name} (Certificate {secret_name})"))
        return BrokerTLS(Condition("TLSReady", FALSE, "SecretMissing", f"Secret {secret_name} with tls.crt and tls.key does not exist yet"))
    problem = _judge_pair(certificate, key)
    if problem is not None:
        return BrokerTLS(Condition("TLSReady", FALSE, "SecretInvalid", f"Secret {secret_name}: {problem}"))
    digest = hashlib.sha256((certificate + "\n" + key).encode()).hexdigest()[:16]
    only = " only" if tls_spec.get("only") else ""
    return BrokerTLS(Condition("TLSReady", TRUE, "Serving", f"devices connect over TLS{only} on {MQTTS_PORT} with Secret {secret_name}"),
                     certificate_hash=digest)
