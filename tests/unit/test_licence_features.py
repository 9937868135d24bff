"""Licence features across releases: the design's four are required, a later one is off where a licence
does not name it, and a feature this release does not know is ignored, never Malformed."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import jwt
import pytest

from iotenant.licensing import keys as licence_keys
from iotenant.licensing import licence as licences
from iotenant.licensing.plans import load_catalogue

KEY = licence_keys.SigningKey.generate()
JWKS = licence_keys.jwks([KEY.jwk])
ENTERPRISE = load_catalogue()["enterprise"].claims("acme", "billing", 86400).to_payload()


def signed(payload: dict[str, Any]) -> str:
    """A token as any issuer could sign it (not through this release's Claims)."""
    return jwt.encode(payload, KEY.private_key, algorithm="RS256", headers={"kid": KEY.kid, "typ": "JWT"})


def test_a_licence_with_yesterdays_features_still_verifies_and_later_features_are_off() -> None:
    yesterday = {**ENTERPRISE, "features": {name: True for name in licences.REQUIRED_FEATURES}}
    features = licences.verify(signed(yesterday), JWKS, "acme", expected_issuer="billing").claims.features
    for feature in fields(features):
        assert getattr(features, feature.name) is (feature.name in licences.REQUIRED_FEATURES), feature.name


def test_a_feature_this_release_does_not_know_is_ignored() -> None:
    tomorrow = {**ENTERPRISE, "features": {**ENTERPRISE["features"], "digital-twins": True}}
    verified = licences.verify(signed(tomorrow), JWKS, "acme", expected_issuer="billing")
    assert verified.claims.features == licences.Features(**ENTERPRISE["features"])


@pytest.mark.parametrize("features", [
    {name: True for name in licences.REQUIRED_FEATURES[1:]},  # one of the design's four missing
    {**{name: True for name in licences.REQUIRED_FEATURES}, "ota": "yes"},  # not a boolean
    {**{name: True for name in licences.REQUIRED_FEATURES}, "commands": 1},
    ["commands", "alerts"],
])
def test_a_missing_required_feature_or_a_wrong_type_is_malformed(features: Any) -> None:
    with pytest.raises(licences.LicenceInvalid) as invalid:
        licences.verify(signed({**ENTERPRISE, "features": features}), JWKS, "acme", expected_issuer="billing")
    assert invalid.value.reason == licences.MALFORMED
