"""Facts the chart repeats from the operator, checked against their source in the unit tier (no helm):
the settings the chart sets and their defaults, the stack images, the plan schema, the kinds the
ClusterRole and the admission fence cover. A counterpart forgotten in the chart fails here."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml

from iotenant.cli import build_parser
from iotenant.licensing.licence import Features, Limits, Monitoring
from iotenant.licensing.plans import BrokerLimits
from iotenant.settings import Images
from iotenant.vocabulary.kinds import NAMESPACED_KINDS, ResourceKind

CHART = Path(__file__).resolve().parents[2] / "charts" / "iotenant"
TEMPLATES = CHART / "templates"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Operator settings the chart leaves at their defaults on purpose (each says why).
NOT_SET_BY_THE_CHART = {
    "IOTENANT_BROKER_ADDRESSES_FILE": "for an operator outside the cluster (the demo, the tests)",
    "IOTENANT_METRICS_ADDRESS": "every address by default, which a pod's probes and scrapes need",
}


def templated(name: str) -> list[dict[str, Any]]:
    """A template's documents, its Go template actions replaced: comments and lines of control dropped,
    an inline action read as the word TEMPLATED."""
    text = re.sub(r"\{\{-? */\*.*?\*/ *-?\}\}", "", (TEMPLATES / name).read_text(), flags=re.DOTALL)
    text = "\n".join(line for line in text.splitlines() if not re.fullmatch(r"\s*\{\{-?[^}]*-?\}\}\s*", line))
    text = re.sub(r"\{\{-?[^}]*-?\}\}", "TEMPLATED", text)
    return [document for document in yaml.safe_load_all(text) if document]


def operator_flags() -> dict[str, Any]:
    """The operator's flags by environment variable, each with its default (from the help text)."""
    parser = build_parser(["operator"])
    subparsers = next(action for action in parser._actions if isinstance(action, type(parser._subparsers._group_actions[0])))
    command = subparsers.choices["operator"]
    found = {}
    for action in command._actions:
        variable = re.search(r"\[(IOTENANT_\w+)\]", action.help or "")
        if variable:
            found[variable[1]] = action.default
    return found


def deployment_env() -> dict[str, str]:
    """Each IOTENANT_ variable the chart's Deployment sets, with the values path or template it takes (one
    variable for each of the stack images, set in a loop)."""
    text = (TEMPLATES / "deployment.yaml").read_text()
    assert "- name: IOTENANT_{{ upper $part }}_IMAGE" in text, "the stack images' loop"
    images = {f"IOTENANT_{part.upper()}_IMAGE": f"{{{{ .Values.stackImages.{part} | quote }}}}" for part in VALUES["stackImages"]}
    return images | dict(re.findall(r"- name: (IOTENANT_\w+)\n\s+(?:value: (.*)|valueFrom:)", text))


def test_every_variable_the_chart_sets_is_an_operator_setting_and_every_setting_is_set_or_left_on_purpose() -> None:
    flags, chart = operator_flags(), deployment_env()
    unknown = sorted(set(chart) - set(flags))
    assert unknown == [], f"the chart sets variables the operator does not read: {unknown}"
    assert set(NOT_SET_BY_THE_CHART) <= set(flags), "NOT_SET_BY_THE_CHART names a setting the operator no longer has"
    unset = sorted(set(flags) - set(chart) - set(NOT_SET_BY_THE_CHART))
    assert unset == [], f"operator settings the chart neither sets nor leaves on purpose (NOT_SET_BY_THE_CHART): {unset}"


def values_at(path: str) -> Any:
    value: Any = VALUES
    for key in path.split("."):
        value = value[key]
    return value


def test_the_charts_defaults_are_the_operators() -> None:
    flags = operator_flags()
    differ = []
    for variable, expression in deployment_env().items():
        plain = re.fullmatch(r"\{\{ \.Values\.([\w.]+) \| quote \}\}", expression.strip()) if expression else None
        if plain is None or variable not in flags:
            continue
        chart_default, operator_default = values_at(plain[1]), flags[variable]
        if isinstance(operator_default, float):
            chart_default = float(chart_default)
        if isinstance(operator_default, tuple):
            chart_default = tuple(chart_default)
        if chart_default != operator_default and not (chart_default == "" and operator_default in ("", None)):
            differ.append(f"{plain[1]}={chart_default!r} but {variable} defaults to {operator_default!r}")
    assert differ == [], differ


def test_the_stack_images_are_pinned_alike() -> None:
    images = Images()
    pinned = {image.name: getattr(images, image.name) for image in dataclasses.fields(Images) if image.name != "iotenant"}
    assert VALUES["stackImages"] == pinned, "stackImages in values.yaml against settings.Images"
    schema = SCHEMA["properties"]["stackImages"]
    assert set(schema["properties"]) == set(schema["required"]) == set(pinned), "stackImages in values.schema.json"
    assert images.iotenant == f"{VALUES['image']['repository']}:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"


def test_the_plan_schema_knows_every_claim_and_broker_limit() -> None:
    plan = SCHEMA["definitions"]["plan"]["properties"]
    for section, model in (("features", Features), ("limits", Limits), ("monitoring", Monitoring), ("broker", BrokerLimits)):
        declared = set(plan[section]["properties"])
        assert declared == {f.name for f in dataclasses.fields(model)}, f"plans.*.{section} in values.schema.json: {declared}"


def rules_for(kind: ResourceKind, roles: list[dict[str, Any]]) -> set[str]:
    group = kind.api_version.rpartition("/")[0]
    return {verb for role in roles for rule in role["rules"]
            if group in rule["apiGroups"] and kind.plural in rule["resources"] and not rule.get("resourceNames")
            for verb in rule["verbs"]}


def test_the_cluster_role_covers_every_kind_the_operator_applies_and_caches() -> None:
    roles = [d for d in templated("clusterrole.yaml") if d["kind"] == "ClusterRole"]
    for kind in NAMESPACED_KINDS:
        verbs = rules_for(kind, roles)
        assert {"list", "watch", "create", "patch"} <= verbs, f"{kind.plural}: the ClusterRoles grant {sorted(verbs)}"


def test_the_admission_fence_covers_every_namespaced_kind_the_operator_writes() -> None:
    policy = next(d for d in templated("admissionpolicy.yaml") if d["kind"] == "ValidatingAdmissionPolicy")
    fenced = {(group, resource) for rule in policy["spec"]["matchConstraints"]["resourceRules"]
              for group in rule["apiGroups"] for resource in rule["resources"]}
    missing = [kind.plural for kind in NAMESPACED_KINDS if (kind.api_version.rpartition("/")[0], kind.plural) not in fenced]
    assert missing == [], f"the fence does not cover {missing}"
