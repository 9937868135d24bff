"""Alerts about one tenant's data plane: the same rules for the shared Prometheus (a PrometheusRule in
the customer namespace) and for a dedicated one (a rule file beside its configuration)."""

from __future__ import annotations

from typing import Any

from iotenant.vocabulary.meta import Component, Owner

PROMETHEUS_RULE_CRD = "prometheusrules.monitoring.coreos.com"
RULES_FILE = "tenant-rules.yml"


def runbook_url(base: str, alert: str) -> str:
    """Where the troubleshooting guide says what to do about ``alert``: its heading's anchor."""
    return f"{base}#{alert.lower()}"


def rule_groups(namespace: str, runbook_base: str) -> list[dict[str, Any]]:
    """Ingest lag, refusal rate, broker down and database down, for the pods of ``namespace``."""
    scope = f'namespace="{namespace}"'

    def alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict[str, Any]:
        return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity, "namespace": namespace},
                "annotations": {"summary": summary, "description": description, "runbook_url": runbook_url(runbook_base, name)}}

    return [{
        "name": f"iotenant-tenant-{namespace}",
        "rules": [
            alert("IotenantIngestLagging",
                  f"histogram_quantile(0.99, sum by (le) (rate(iotenant_ingest_lag_seconds_bucket{{{scope}}}[5m]))) > 30",
                  "10m", "warning", f"{namespace}: telemetry reaches the database more than 30 s late (p99).",
                  "Ingest cannot keep up: look at iotenant_ingest_commit_seconds and the database, or add ingest replicas."),
            alert("IotenantIngestRefusing",
                  f"sum(rate(iotenant_ingest_rejected_total{{{scope}}}[10m])) "
                  f"/ clamp_min(sum(rate(iotenant_ingest_received_total{{{scope}}}[10m])), 1e-9) > 0.2",
                  "15m", "warning", f"{namespace}: more than a fifth of device messages are refused.",
                  "See iotenant_ingest_rejected_total by reason, and GET /api/v1/stats for the devices behind them."),
            alert("IotenantBrokerUnreachable", f"max(iotenant_ingest_broker_up{{{scope}}}) == 0", "5m", "critical",
                  f"{namespace}: ingest cannot reach the tenant's broker.", "Devices' messages wait in the broker; check the broker pod."),
            alert("IotenantDatabaseUnreachable",
                  f"max(iotenant_ingest_database_up{{{scope}}}) == 0 or max(iotenant_api_database_up{{{scope}}}) == 0",
                  "5m", "critical", f"{namespace}: ingest or api cannot reach the tenant's database.",
                  "Nothing is stored or served; check the database pod and its volume."),
        ],
    }]


def prometheus_rule(owner: Owner, runbook_base: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": owner.metadata("iotenant", Component.MONITORING),
        "spec": {"groups": rule_groups(owner.namespace, runbook_base)},
    }
