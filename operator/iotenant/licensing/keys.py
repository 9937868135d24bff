"""Licence signing keys as RSA keys and as JWKs: generated, stored as PEM, published as a JWKS whose
``kid`` is each key's RFC 7638 thumbprint."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"
KEY_BITS = 3072


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """The public key as a JWK with ``kid`` = its RFC 7638 thumbprint."""
    numbers = public_key.public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return {**members, "kid": kid, "use": "sig", "alg": ALGORITHM}


@dataclass(frozen=True)
class SigningKey:
    """A private RSA key that signs licences."""

    private_key: rsa.RSAPrivateKey
    created_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS))

    @classmethod
    def from_pem(cls, pem: bytes, created_at: int | None = None) -> "SigningKey":
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("a licence signing key must be an RSA private key")
        return cls(key, created_at if created_at is not None else int(time.time()))

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @cached_property
    def jwk(self) -> dict[str, str]:
        return public_jwk(self.private_key.public_key())

    @property
    def kid(self) -> str:
        return self.jwk["kid"]


def write_key_pair(private_key: Path, public_jwks: Path) -> SigningKey:
    """A new issuer key: its private PEM (mode 0600) and its public JWKS, for the operator to trust."""
    key = SigningKey.generate()
    private_key.write_bytes(key.to_pem())
    private_key.chmod(0o600)
    public_jwks.write_text(json.dumps(jwks([key.jwk]), indent=2) + "\n")
    return key


def jwks(public_jwks: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """A JWKS document, one entry per key id, in a stable order."""
    unique = {key["kid"]: key for key in public_jwks}
    return {"keys": [unique[kid] for kid in sorted(unique)]}
