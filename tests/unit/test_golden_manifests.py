"""One customer stack per plan, rendered and compared with the reviewed manifests in ``golden/``.

A renderer change shows here as a diff to review. When the change is meant, write the new manifests
with ``IOTENANT_UPDATE_GOLDEN=1 make unit`` and commit them with the change.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

import pytest
import yaml

from iotenant.broker.admin_tls import AdminTLS
from iotenant.licensing.plans import load_catalogue
from iotenant.render.inputs import GeneratedSecrets, StackInput
from iotenant.render.meta import Owner
from iotenant.render.stack import render_customer_stack
from iotenant.settings import OperatorSettings

GOLDEN = Path(__file__).parent / "golden"
PLANS = ("starter", "professional", "enterprise")


def fixture_stack(plan_name: str) -> StackInput:
    """A fixed instance of ``plan_name``: fixed secrets, licence and keys, so the output is stable."""
    plan = load_catalogue()[plan_name]
    claims = dataclasses.replace(plan.claims("acme-0001", "iotenant-operator", 365 * 86400, now=1_790_000_000), jti="jti-" + plan_name)
    tls = AdminTLS("CA-CERT", "SERVER-CERT", "SERVER-KEY", "CLIENT-CERT", "CLIENT-KEY")
    secrets = GeneratedSecrets("db-pw", "db-ingest-pw", "db-api-pw", "api-token", tls, "broker-ingest-pw", "broker-api-pw", "share-group-x")
    spec: dict = {"customerId": "acme-0001", "plan": plan_name}
    if plan_name == "enterprise":
        spec |= {"ingest": {"replicas": 2}, "broker": {"tls": {"secretName": "broker-tls"}}}
    return StackInput(owner=Owner("acme", "uid-acme"), spec=spec, settings=OperatorSettings(), secrets=secrets, claims=claims,
                      licence_token="licence-token-" + plan_name, jwks={"keys": [{"kid": "k1", "kty": "RSA", "n": "n", "e": "AQAB"}]},
                      quota=plan.quota, serving=True, service_monitor_crd_present=True, prometheus_rule_crd_present=True,
                      broker_limits=plan.broker)


def rendered(plan_name: str) -> str:
    return yaml.safe_dump_all(render_customer_stack(fixture_stack(plan_name)), sort_keys=True)


@pytest.mark.parametrize("plan_name", PLANS)
def test_the_stack_of_each_plan_matches_its_reviewed_manifests(plan_name: str) -> None:
    path = GOLDEN / f"{plan_name}.yaml"
    text = rendered(plan_name)
    if os.environ.get("IOTENANT_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), f"golden/{path.name}", "rendered", n=2))
        pytest.fail(f"the {plan_name} stack differs from golden/{path.name} (IOTENANT_UPDATE_GOLDEN=1 make unit writes it):\n{diff[:6000]}")
