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


def test_volumes_are_made_in_the_class_asked_for_and_keep_the_one_they_were_made_in() -> None:
    import dataclasses

    from iotenant.customer_instance.reconciler import volume_class

    stack = dataclasses.replace(fixture_stack("enterprise"), storage_classes={"database": "fast-ssd", "prometheus": "bulk"})
    templates = {o["metadata"]["name"]: o["spec"].get("volumeClaimTemplates", [{}])[0].get("spec", {})
                 for o in render_customer_stack(stack) if o["kind"] == "StatefulSet"}
    assert templates["database"]["storageClassName"] == "fast-ssd" and templates["prometheus"]["storageClassName"] == "bulk"
    assert "storageClassName" not in templates["broker"]
    made_with = {"spec": {"volumeClaimTemplates": [{"spec": {"storageClassName": "old"}}]}}
    assert volume_class(None, "new") == "new" and volume_class(made_with, "new") == "old"
    assert volume_class({"spec": {"volumeClaimTemplates": [{"spec": {}}]}}, "new") is None, "made in the default class: kept there"
