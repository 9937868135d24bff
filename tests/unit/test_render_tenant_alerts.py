"""The tenant's alert rules: scoped to its namespace, each with a runbook anchor in the troubleshooting guide."""

from __future__ import annotations

from iotenant.render.tenant_alerts import prometheus_rule, rule_groups, runbook_url
from iotenant.vocabulary.meta import Owner


def test_every_rule_watches_only_its_tenant_and_links_its_runbook() -> None:
    (group,) = rule_groups("customer-acme", "https://docs.example/operate.md")
    for rule in group["rules"]:
        assert 'namespace="customer-acme"' in rule["expr"] and rule["labels"]["namespace"] == "customer-acme", rule["alert"]
        assert rule["annotations"]["runbook_url"] == runbook_url("https://docs.example/operate.md", rule["alert"])
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())
    shared = prometheus_rule(Owner("acme", "uid-acme"), "https://docs.example/operate.md")
    assert shared["metadata"]["namespace"] == "customer-acme" and shared["spec"]["groups"] == [group]
