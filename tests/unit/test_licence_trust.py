"""Licence verification and trusted issuers, judged without a cluster: every hostile input is a reason, never an exception."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotenant.licensing import licence as licences

from iotenant.licensing import keys as licence_keys
from iotenant.licensing.plans import load_catalogue
from iotenant.licensing.trusted_issuers import TrustedIssuers, TrustedIssuersError

PLAN = load_catalogue()["professional"]
KEY = licence_keys.SigningKey.generate()
WEAK = licence_keys.SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=1024))


def token(issuer: str = "billing", key: licence_keys.SigningKey = KEY, **overrides: object) -> str:
    claims = PLAN.claims("acme", issuer, 86400)
    return licences.sign(licences._claims_from_payload({**claims.to_payload(), **overrides}), key)


def reason(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(licences.LicenceInvalid) as invalid:
        call()
    return invalid.value.reason


def test_the_issuer_must_be_the_one_whose_key_verified() -> None:
    jwks = licence_keys.jwks([KEY.jwk])
    assert licences.verify(token(), jwks, "acme", expected_issuer="billing").claims.iss == "billing"
    assert reason(lambda: licences.verify(token("elsewhere"), jwks, "acme", expected_issuer="billing")) == licences.WRONG_ISSUER


def test_a_licence_issued_in_the_future_is_refused() -> None:
    later = int(time.time()) + 3600
    assert reason(lambda: licences.verify(token(iat=later), licence_keys.jwks([KEY.jwk]), "acme")) == licences.ISSUED_IN_FUTURE


def test_weak_and_foreign_keys_verify_nothing() -> None:
    assert reason(lambda: licences.verify(token(key=WEAK), licence_keys.jwks([WEAK.jwk]), "acme")) == licences.WEAK_KEY
    ec_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True), "kid": KEY.kid}
    assert reason(lambda: licences.verify(token(), {"keys": [ec_jwk]}, "acme")) == licences.UNKNOWN_KEY
    assert reason(lambda: licences.verify(token(), {"keys": [{"kid": KEY.kid, "kty": "RSA", "n": "!!", "e": "AQAB"}]}, "acme")) == licences.UNKNOWN_KEY


@pytest.mark.parametrize("hostile", [
    "", "   ", "a.b", "a.b.c", "%%%.%%%.%%%", "eyJhbGciOiJub25lIn0.e30.", "\x00\ud800", "x" * 100_000,
    jwt.encode({"sub": "acme"}, "secret", algorithm="HS256", headers={"kid": KEY.kid}),
])
def test_hostile_tokens_are_reasons_never_exceptions(hostile: str) -> None:
    assert reason(lambda: licences.verify(hostile, licence_keys.jwks([KEY.jwk]), "acme")) in {
        licences.MISSING, licences.MALFORMED, licences.UNKNOWN_KEY}


@pytest.mark.parametrize("hostile_jwks", [{}, {"keys": None}, {"keys": [None, 7, "x"]}, {"keys": [{"kid": None}]}, []])
def test_hostile_key_sets_are_reasons_never_exceptions(hostile_jwks: object) -> None:
    assert reason(lambda: licences.verify(token(), hostile_jwks, "acme")) in {licences.UNKNOWN_KEY, licences.MALFORMED}  # type: ignore[arg-type]


def test_trusted_issuers_keep_what_can_serve_and_report_the_rest() -> None:
    other = licence_keys.SigningKey.generate()
    without_kid = {k: v for k, v in other.jwk.items() if k != "kid"}
    trusted = TrustedIssuers.parse({
        "billing": {"keys": [KEY.jwk, WEAK.jwk, without_kid, {"kty": "EC", "kid": "ec"}]},
        "second": {"keys": [other.jwk]},
        "iotenant-operator": {"keys": [other.jwk]},
        "broken": "not a jwks",
    }, operator_issuer="iotenant-operator")
    assert trusted.issuer_of(KEY.kid) == "billing" and trusted.issuer_of(other.kid) == "second"
    assert trusted.issuer_of(WEAK.kid) == "billing"  # kept, so that its licences are refused as WeakSigningKey
    assert trusted.issuer_of("ec") is None and trusted.jwks_of(None) == {"keys": []}
    assert len(trusted.problems) == 5, trusted.problems
    shared = TrustedIssuers.parse({"a": {"keys": [KEY.jwk]}, "b": {"keys": [KEY.jwk]}}, "iotenant-operator")
    assert shared.issuer_of(KEY.kid) is None and "several issuers" in shared.problems[0]
    with pytest.raises(TrustedIssuersError):
        TrustedIssuers.parse({"keys": [KEY.jwk]}, "iotenant-operator")  # a bare JWKS names no issuer
