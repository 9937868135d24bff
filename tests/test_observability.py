"""Dashboards and alert rules: every expression passes promtool, and every metric they name is one the
operator, ingest or api really export (read from their /metrics)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import yaml

from conftest import CHART, RunningOperator, render_chart
from dataplane import ApiProcess, IngestProcess, LicenceFiles
from iotenant_testbed.binaries import Binaries
from iotenant_testbed.mosquitto import MosquittoBroker
from iotenant.render.tenant_alerts import rule_groups
from iotenant.settings import RUNBOOK_BASE_URL

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
METRIC = re.compile(r"\biotenant_[a-z_]+\b")


def dashboard_expressions() -> dict[str, str]:
    found = {}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found[f"{path.stem}: {panel['title']} {target['refId']}"] = target["expr"].replace("$namespace", "customer-x")
    return found


def chart_rules(binaries: Binaries) -> list[dict]:
    (rule,) = [o for o in render_chart(binaries, "--set", "metrics.prometheusRule.enabled=true") if o["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def promtool_check(binaries: Binaries, groups: list[dict]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as handle:
        yaml.safe_dump({"groups": groups}, handle)
        handle.flush()
        result = subprocess.run([str(binaries.path("promtool")), "check", "rules", handle.name], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_and_alert_expression_passes_promtool(binaries: Binaries) -> None:
    assert [path.stem for path in DASHBOARDS] == ["operator", "tenant"]
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    as_rules = [{"record": f"iotenant:dashboard:{n}", "expr": expr} for n, expr in enumerate(expressions.values())]
    promtool_check(binaries, [{"name": "dashboards", "rules": as_rules}])
    promtool_check(binaries, rule_groups("customer-x", RUNBOOK_BASE_URL))
    promtool_check(binaries, chart_rules(binaries))
    rendered = render_chart(binaries)
    shipped = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]}
    assert set(shipped) == {"iotenant-operator-dashboard-operator", "iotenant-operator-dashboard-tenant"}
    assert all(o["metadata"]["labels"]["grafana_dashboard"] == "1" for o in shipped.values())
    assert not [o for o in render_chart(binaries, "--set", "grafana.dashboards.enabled=false") if "grafana_dashboard" in o["metadata"]["labels"]]


def exported(port: int) -> set[str]:
    """Sample names a /metrics endpoint exports, read from its TYPE lines (labelled metrics included before their first sample)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            family = name.removesuffix("_total")
            names |= {name, family}
            names |= {"counter": {f"{family}_total"}, "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"}}.get(kind, set())
    return names


def test_every_metric_named_is_exported_by_the_operator_or_a_workload(
    binaries: Binaries, operator: RunningOperator, database: str, broker: MosquittoBroker, enterprise_licence: LicenceFiles,
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    ingest = IngestProcess(database_url=database, broker_port=broker.port, licence=enterprise_licence, log=tmp_path / "ingest.log",
                           share_group=broker.share_group)
    api = ApiProcess(database_url=database, broker_port=broker.port, licence=enterprise_licence, token_file=token, log=tmp_path / "api.log")
    ingest.start()
    api.start()
    try:
        available = exported(operator.metrics_port) | exported(ingest.metrics_port) | exported(api.metrics_port)
    finally:
        api.stop()
        ingest.stop()
    texts = [*dashboard_expressions().values(), json.dumps(rule_groups("customer-x", RUNBOOK_BASE_URL)), json.dumps(chart_rules(binaries))]
    named = {name for text in texts for name in METRIC.findall(text)}
    assert named - available == set(), f"named by dashboards or rules but exported by nothing: {sorted(named - available)}"
