"""Each plan's customer stack, part by part, rendered and compared with the reviewed manifests in
``golden/<plan>/<part>.yaml`` (``namespace.yaml``: the namespace, its guard rails and the licence).

A renderer change shows here as a diff to review in the file of the part it changes. When the change is
meant, write the new manifests with ``IOTENANT_UPDATE_GOLDEN=1 make unit`` and commit them with it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from iotenant.render.parts import enabled_parts
from iotenant.render.stack import namespace_objects, render_customer_stack
from stacks import fixture_stack

GOLDEN = Path(__file__).parent / "golden"
PLANS = ("starter", "professional", "enterprise")


def rendered_files(plan_name: str) -> dict[str, list[dict[str, Any]]]:
    """The plan's stack as golden files: the namespace's objects, then one file per part it has."""
    stack = fixture_stack(plan_name)
    files = {"namespace": namespace_objects(stack)}
    files |= {part.name: part.render(stack) for part in enabled_parts(stack) if part.render is not None}
    return files


@pytest.mark.parametrize("plan_name", PLANS)
def test_the_stack_of_each_plan_matches_its_reviewed_manifests(plan_name: str) -> None:
    folder = GOLDEN / plan_name
    files = rendered_files(plan_name)
    if os.environ.get("IOTENANT_UPDATE_GOLDEN") == "1":
        folder.mkdir(exist_ok=True)
        for stale in set(folder.glob("*.yaml")) - {folder / f"{name}.yaml" for name in files}:
            stale.unlink()
        for name, objects in files.items():
            (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=True))
    assert sorted(path.stem for path in folder.glob("*.yaml")) == sorted(files), \
        f"golden/{plan_name}/ must hold one file per part the plan has (IOTENANT_UPDATE_GOLDEN=1 make unit writes them)"
    differences = []
    for name, objects in files.items():
        expected, text = (folder / f"{name}.yaml").read_text(), yaml.safe_dump_all(objects, sort_keys=True)
        if text != expected:
            differences += difflib.unified_diff(expected.splitlines(True), text.splitlines(True), f"golden/{plan_name}/{name}.yaml", "rendered", n=2)
    if differences:
        pytest.fail(f"the {plan_name} stack differs from golden/{plan_name}/ (IOTENANT_UPDATE_GOLDEN=1 make unit writes it):\n"
                    f"{''.join(differences)[:6000]}")


def test_the_stack_is_the_namespace_and_its_parts_in_order() -> None:
    for plan_name in PLANS:
        assert render_customer_stack(fixture_stack(plan_name)) == [o for objects in rendered_files(plan_name).values() for o in objects]


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
