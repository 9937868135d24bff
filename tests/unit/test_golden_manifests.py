"""One customer stack per plan, rendered and compared with the reviewed manifests in ``golden/``.

A renderer change shows here as a diff to review. When the change is meant, write the new manifests
with ``IOTENANT_UPDATE_GOLDEN=1 make unit`` and commit them with the change.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
import yaml

from iotenant.render.stack import render_customer_stack
from stacks import fixture_stack

GOLDEN = Path(__file__).parent / "golden"
PLANS = ("starter", "professional", "enterprise")


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
