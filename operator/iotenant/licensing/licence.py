"""Licences: the claims, how they are signed, and how they are verified.

One module for the operator and the workloads alike. A licence is an RS256 JWT whose header
carries ``kid`` = the RFC 7638 thumbprint of the signing key. Plan, limits, features and the
monitoring tier are only ever read from a token whose signature, ``aud``, ``sub``, ``nbf`` and
``exp`` were verified here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from iotenant.licensing.keys import ALGORITHM, SigningKey
from iotenant.timestamps import rfc3339

AUDIENCE = "iotenant"
# The features every licence carries (DESIGN §2): absent, the licence is Malformed. A feature added to
# ``Features`` later is off in a licence that does not name it (licences issued before it, by the operator or
# a billing system, stay valid); a feature a licence names that this release does not know is ignored.
REQUIRED_FEATURES = ("commands", "alerts", "export", "ota")
MonitoringTier = Literal["shared", "dedicated"]

# Reasons a licence is not valid; each becomes LicenceValid=False with that reason.
MISSING = "LicenceMissing"
MALFORMED = "Malformed"
UNKNOWN_KEY = "UnknownSigningKey"
BAD_SIGNATURE = "BadSignature"
WRONG_AUDIENCE = "WrongAudience"
WRONG_SUBJECT = "WrongSubject"
NOT_YET_VALID = "NotYetValid"
ISSUED_IN_FUTURE = "IssuedInFuture"
WRONG_ISSUER = "WrongIssuer"
WEAK_KEY = "WeakSigningKey"
EXPIRED = "Expired"

# Trusted RSA keys shorter than this are refused (NIST SP 800-131A).
MIN_RSA_BITS = 2048


class LicenceInvalid(Exception):
    """A licence that must not be trusted; ``reason`` is a CamelCase word, ``message`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Features:
    """What a licence sells; every field defaults to off (a new one is off in older licences)."""

    commands: bool = False
    alerts: bool = False
    export: bool = False
    ota: bool = False


# Alert rules a tenant may keep when its licence names no ``limits.maxAlertRules`` (a licence issued
# before the claim existed, or by a billing system that does not set it).
DEFAULT_MAX_ALERT_RULES = 10


@dataclass(frozen=True)
class Limits:
    maxDevices: int
    maxFleets: int
    retentionDays: int
    maxMessagesPerSecond: int
    maxAlertRules: int = DEFAULT_MAX_ALERT_RULES


# The limits every licence must carry; the others have a default.
REQUIRED_LIMITS = ("maxDevices", "maxFleets", "retentionDays", "maxMessagesPerSecond")


@dataclass(frozen=True)
class Monitoring:
    tier: MonitoringTier
    retentionDays: int = 0
    storageGb: int = 0


@dataclass(frozen=True)
class Claims:
    """The fixed licence claims (DESIGN §2)."""

    iss: str
    sub: str
    iat: int
    nbf: int
    exp: int
    jti: str
    plan: str
    features: Features
    limits: Limits
    monitoring: Monitoring
    aud: str = AUDIENCE

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def validity_seconds(self) -> int:
        return self.exp - self.nbf

    def remaining_fraction(self, now: float) -> float:
        return max(0.0, (self.exp - now) / self.validity_seconds) if self.validity_seconds > 0 else 0.0


@dataclass(frozen=True)
class VerifiedLicence:
    """A licence whose signature, audience and subject were verified; ``expired`` is reported, not hidden."""

    token: str
    claims: Claims
    key_id: str
    expired: bool = False


def sign(claims: Claims, key: SigningKey) -> str:
    return jwt.encode(claims.to_payload(), key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"})


def _require(payload: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = payload.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise LicenceInvalid(MALFORMED, f"claim {name!r} is missing or not of type {getattr(kind, '__name__', kind)}")
    return value


def _claims_from_payload(payload: dict[str, Any]) -> Claims:
    features = _require(payload, "features", dict)
    limits = _require(payload, "limits", dict)
    monitoring = _require(payload, "monitoring", dict)
    tier = _require(monitoring, "tier", str)
    if tier not in ("shared", "dedicated"):
        raise LicenceInvalid(MALFORMED, f"monitoring.tier must be shared or dedicated, not {tier!r}")
    try:
        return Claims(
            iss=_require(payload, "iss", str),
            sub=_require(payload, "sub", str),
            aud=_require(payload, "aud", str),
            iat=_require(payload, "iat", int),
            nbf=_require(payload, "nbf", int),
            exp=_require(payload, "exp", int),
            jti=_require(payload, "jti", str),
            plan=_require(payload, "plan", str),
            features=Features(**{name: _require(features, name, bool) for name in Features.__dataclass_fields__
                                 if name in REQUIRED_FEATURES or name in features}),
            limits=Limits(**{name: _require(limits, name, int) for name in Limits.__dataclass_fields__
                             if name in REQUIRED_LIMITS or name in limits}),
            monitoring=Monitoring(
                tier=tier,
                retentionDays=int(monitoring.get("retentionDays", 0)),
                storageGb=int(monitoring.get("storageGb", 0)),
            ),
        )
    except (TypeError, ValueError, OverflowError) as error:
        raise LicenceInvalid(MALFORMED, str(error)) from error


def verify(
    token: str,
    trusted_jwks: dict[str, Any],
    expected_subject: str | None,
    now: float | None = None,
    leeway_seconds: int = 60,
    expected_issuer: str | None = None,
) -> VerifiedLicence:
    """Verify signature, ``aud``, ``sub``, ``iss`` (when given), ``iat`` and ``nbf``; report ``exp`` as
    ``expired`` (callers decide grace).

    Raises ``LicenceInvalid`` with a specific reason for anything else: whatever the token or the key
    set holds, nothing else escapes (fail closed).
    """
    try:
        return _verify(token, trusted_jwks, expected_subject, time.time() if now is None else now, leeway_seconds, expected_issuer)
    except LicenceInvalid:
        raise
    except Exception as error:  # a hostile token or key set must never abort the caller
        raise LicenceInvalid(MALFORMED, f"the licence cannot be verified ({type(error).__name__})") from error


def key_id_of(token: str) -> str | None:
    """The ``kid`` a token's header names, unverified (which issuer to ask), or None."""
    try:
        kid = jwt.get_unverified_header(token.strip()).get("kid")
    except Exception:  # any bytes may arrive here
        return None
    return kid if isinstance(kid, str) else None


def trusted_public_key(jwk: Any) -> rsa.RSAPublicKey:
    """The RSA public key of a trusted JWK with RS256, at least ``MIN_RSA_BITS`` long."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        raise LicenceInvalid(UNKNOWN_KEY, "the trusted key is not an RSA key")
    try:
        key = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
    except (jwt.PyJWTError, ValueError, TypeError) as error:
        raise LicenceInvalid(UNKNOWN_KEY, f"the trusted key is not usable: {error}") from error
    if not isinstance(key, rsa.RSAPublicKey):
        raise LicenceInvalid(UNKNOWN_KEY, "the trusted key is not an RSA public key")
    if key.key_size < MIN_RSA_BITS:
        raise LicenceInvalid(WEAK_KEY, f"the signing key has {key.key_size} bits, fewer than {MIN_RSA_BITS}")
    return key


def _verify(
    token: str, trusted_jwks: dict[str, Any], expected_subject: str | None, current: float, leeway_seconds: int,
    expected_issuer: str | None,
) -> VerifiedLicence:
    if not isinstance(token, str) or not token.strip():
        raise LicenceInvalid(MISSING, "no licence token")
    token = token.strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise LicenceInvalid(MALFORMED, f"not a JWT: {error}") from error
    if header.get("alg") != ALGORITHM:
        raise LicenceInvalid(MALFORMED, f"algorithm {str(header.get('alg'))[:20]!r} is not {ALGORITHM}")
    kid = header.get("kid")
    keys = {key.get("kid"): key for key in trusted_jwks.get("keys", []) if isinstance(key, dict)}
    if not isinstance(kid, str) or kid not in keys:
        raise LicenceInvalid(UNKNOWN_KEY, f"signing key {str(kid)[:80]!r} is not among the trusted keys")
    public_key = trusted_public_key(keys[kid])
    try:
        payload = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_nbf": False, "verify_aud": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError as error:
        raise LicenceInvalid(BAD_SIGNATURE, "the signature does not match the licence contents") from error
    except jwt.PyJWTError as error:
        raise LicenceInvalid(MALFORMED, str(error)) from error
    claims = _claims_from_payload(payload)
    if claims.aud != AUDIENCE:
        raise LicenceInvalid(WRONG_AUDIENCE, f"audience is {claims.aud!r}, expected {AUDIENCE!r}")
    if expected_issuer is not None and claims.iss != expected_issuer:
        raise LicenceInvalid(WRONG_ISSUER, f"issued by {claims.iss[:80]!r}, but signed with a key of {expected_issuer!r}")
    if expected_subject is not None and claims.sub != expected_subject:
        raise LicenceInvalid(WRONG_SUBJECT, f"licence is for {claims.sub!r}, not for customer {expected_subject!r}")
    if claims.iat > current + leeway_seconds:
        raise LicenceInvalid(ISSUED_IN_FUTURE, f"licence claims to be issued at {rfc3339(claims.iat)}, in the future")
    if claims.nbf > current + leeway_seconds:
        raise LicenceInvalid(NOT_YET_VALID, f"licence is valid only from {rfc3339(claims.nbf)}")
    return VerifiedLicence(token=token, claims=claims, key_id=kid, expired=claims.exp <= current - leeway_seconds)


def require_current(licence: VerifiedLicence) -> VerifiedLicence:
    """The licence, or ``LicenceInvalid(Expired)`` when it has expired."""
    if licence.expired:
        raise LicenceInvalid(EXPIRED, f"licence {licence.claims.jti} expired at {rfc3339(licence.claims.exp)}")
    return licence


