"""The plan catalogue and the claims it issues, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from iotenant.licensing import keys as licence_keys, licence as licences
from iotenant.licensing.licence import DEFAULT_MAX_ALERT_RULES
from iotenant.licensing.plans import DEFAULT_CATALOGUE, CatalogueError, load_catalogue

KEY = licence_keys.SigningKey.generate()


def test_the_default_catalogue_sells_what_the_design_says() -> None:
    plans = load_catalogue()
    assert [(p.limits.maxDevices, p.limits.maxAlertRules, p.monitoring.tier) for p in plans.values()] == [
        (25, 10, "shared"), (500, 100, "shared"), (10000, 1000, "dedicated")]
    assert {name for name, on in vars(plans["professional"].features).items() if on} == {"commands", "alerts"}
    assert all(vars(plans["enterprise"].features).values()) and not any(vars(plans["starter"].features).values())


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p["limits"].update(maxDevices=0), "limits.maxDevices must be a positive integer"),
    (lambda p: p["limits"].update(maxAlertRules="many"), "limits.maxAlertRules must be a positive integer"),
    (lambda p: p["monitoring"].update(tier="gold"), "monitoring.tier must be shared or dedicated"),
    (lambda p: p["broker"].update(maxPacketBytes=10**9), "broker.maxPacketBytes must be at most"),
    (lambda p: p.pop("quota"), "'quota'"),
])
def test_a_broken_catalogue_names_the_plan_and_the_field(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    entry = yaml.safe_load(yaml.safe_dump(DEFAULT_CATALOGUE["starter"]))
    change(entry)
    path = tmp_path / "plans.yaml"
    path.write_text(yaml.safe_dump({"basic": entry}))
    with pytest.raises(CatalogueError, match="plan basic") as error:
        load_catalogue(path)
    assert message in str(error.value)


def test_issued_claims_verify_and_a_licence_without_max_alert_rules_gets_the_default() -> None:
    claims = load_catalogue()["enterprise"].claims("acme-0001", "iotenant-operator", 86400)
    jwks = licence_keys.jwks([KEY.jwk])
    verified = licences.verify(licences.sign(claims, KEY), jwks, "acme-0001")
    assert verified.claims == claims and verified.claims.limits.maxAlertRules == 1000
    payload = claims.to_payload()
    del payload["limits"]["maxAlertRules"]
    older = licences._claims_from_payload(payload)
    assert older.limits.maxAlertRules == DEFAULT_MAX_ALERT_RULES
    del payload["limits"]["maxDevices"]
    with pytest.raises(licences.LicenceInvalid, match="maxDevices"):
        licences._claims_from_payload(payload)
