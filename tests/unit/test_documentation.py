"""The docs can be trusted: shell blocks are run or say why not, links land, generated pages are current,
every alert's runbook and every condition reason is in the troubleshooting guide."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from doc_blocks import REPO, documents, shell_blocks
from iotenant.customer_instance import licence_decision
from iotenant.customer_instance.status import CONDITIONS
from iotenant.kube.conditions import FALSE
from iotenant.licensing import licence
from iotenant.render.tenant_alerts import rule_groups
from iotenant.settings import RUNBOOK_BASE_URL
from iotenant_testbed import reference_docs

OPERATE = REPO / "docs" / "operate.md"
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"^#{1,6} ", line)}


def test_every_shell_block_is_run_by_a_test_or_says_why_not() -> None:
    runners = "\n".join(text for text in (path.read_text() for path in (REPO / "tests").glob("test_*.py")) if "run_block" in text)
    names: list[str] = []
    for path in documents():
        for block in shell_blocks(path):
            assert block.name or block.not_run_reason, (
                f"{block.where()}: mark the shell block on the line before it with <!-- runs: <name> (...) --> "
                "and run it from a test with run_block, or with <!-- not run: <why> -->")
            if block.name:
                names.append(block.name)
                assert f'"{block.name}"' in runners, f"{block.where()}: no test runs block {block.name!r} (with run_block)"
    assert len(names) == len(set(names)), f"block names repeat: {sorted(names)}"
    assert len(names) >= 5, "the docs' examples run in the suite"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_to_a_page_or_heading_of_the_repository_lands(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans hold patterns, not links
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.relative_to(REPO)}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(linked), f"{path.relative_to(REPO)}: link to {target}: no such heading"


def test_the_generated_reference_is_current() -> None:
    stale = [str(page.relative_to(REPO)) for page, text in reference_docs.generate().items()
             if not page.exists() or page.read_text() != text]
    assert stale == [], f"stale: {stale}; run `iotenant dev docs` and commit what it writes"


def test_every_alert_points_to_its_runbook_in_the_troubleshooting_guide() -> None:
    headings = anchors(OPERATE)
    tenant = [rule for group in rule_groups("customer-x", RUNBOOK_BASE_URL) for rule in group["rules"]]
    for rule in tenant:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE_URL + "#") and url.split("#")[1] in headings, url
    chart_rules = (REPO / "charts" / "iotenant" / "templates" / "prometheusrule.yaml").read_text()
    chart_alerts = re.findall(r"- alert: (\w+)", chart_rules)
    assert chart_alerts
    for name in chart_alerts:
        assert f"runbook_url: {{{{ include \"iotenant.runbookBaseUrl\" . }}}}#{name.lower()}" in chart_rules, name
        assert name.lower() in headings, f"docs/operate.md has no heading for alert {name}"
    assert RUNBOOK_BASE_URL.endswith("/docs/operate.md")


def test_every_licence_and_fleet_reason_is_in_the_troubleshooting_table() -> None:
    table = OPERATE.read_text()
    licence_reasons = {value for name, value in vars(licence).items() if name.isupper() and isinstance(value, str)
                       and re.fullmatch(r"[A-Z][a-z]+[A-Za-z]*", value) and name not in ("AUDIENCE",)}
    reasons = licence_reasons | set(licence_decision.UNFIXABLE_LICENCE_REASONS) | {
        "DeviceLimitExceeded", "DuplicateDeviceIds", "CredentialsTooLarge", "NotInCustomerNamespace", "BrokerUnavailable",
        "Admitting", "NamespaceConflict", "MonitoringCRDMissing", "VolumeExpansionRefused", "UnknownPlan"}
    missing = sorted(reason for reason in reasons if f"`{reason}`" not in table)
    assert missing == [], f"docs/operate.md's troubleshooting table lacks {missing}"


# Conditions whose True is the trouble: their False reasons say all is well.
TRUE_IS_TROUBLE = tuple(kind.type for kind in CONDITIONS if kind.healthy == FALSE)


def failure_reasons(source: str) -> set[str]:
    """The reasons written as text in ``Condition(type, status, reason, ...)`` calls that can say False or
    Unknown: a literal reason with such a status, or the else branch of ``"Ok" if ok else "NotOk"``."""
    reasons = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Condition" and len(node.args) >= 3):
            continue
        kind, status, reason = node.args[:3]
        if isinstance(kind, ast.Constant) and kind.value in TRUE_IS_TROUBLE:
            continue
        if isinstance(reason, ast.IfExp):
            reason = reason.orelse
        elif isinstance(status, ast.Name) and status.id == "TRUE":
            continue
        if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
            reasons.add(reason.value)
    return reasons


def test_every_failure_reason_of_a_condition_is_in_the_troubleshooting_table() -> None:
    table = OPERATE.read_text()
    reasons = set().union(*(failure_reasons(path.read_text()) for path in (REPO / "operator" / "iotenant").rglob("*.py")))
    assert {"PrometheusNotReady", "Provisioning", "SecretMissing"} <= reasons, "the reasons are read from the Condition calls"
    missing = sorted(reason for reason in reasons if f"`{reason}`" not in table)
    assert missing == [], f"docs/operate.md's troubleshooting table lacks {missing}"
    assert failure_reasons('Condition("DatabaseReady", TRUE if ok else FALSE, "Available" if ok else "Unavailable", "m")') == {"Unavailable"}


def test_the_flux_example_and_the_changelog_keep_their_promises() -> None:
    documents_ = list(yaml.safe_load_all((REPO / "examples" / "flux" / "kustomizations.yaml").read_text()))
    customers = next(d for d in documents_ if d["metadata"]["name"] == "iotenant-customers")
    assert customers["spec"]["wait"] is True
    changelog = (REPO / "CHANGELOG.md").read_text()
    sections = re.findall(r"^### (.+)$", changelog.split("\n## ", 2)[1], flags=re.MULTILINE)
    assert len(sections) == len(set(sections)), f"one block per kind of change under a release: {sections}"
    assert set(sections) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, sections
