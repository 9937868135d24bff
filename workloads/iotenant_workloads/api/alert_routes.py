"""The API's alert routes (``features.alerts``): rules a tenant keeps, and the alerts ingest raises.

Rules are bounded by the licence's ``limits.maxAlertRules``; a deleted rule stops at once and its
firing alerts resolve, while its alerts stay listed (history keeps the rule's name).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from psycopg import AsyncCursor

from iotenant_workloads.alert_rules import (
    COMPARISONS, FIRING, KINDS, MAX_FOR_SECONDS, MAX_NAME, MAX_SILENCE_SECONDS, MIN_SILENCE_SECONDS, RESOLVED, SILENCE, THRESHOLD,
    AlertRule, InvalidRule, judge_rule,
)
from iotenant_workloads.api import route as api_route
from iotenant_workloads.api.customer_api import CustomerApi
from iotenant_workloads.api.errors import ApiError
from iotenant_workloads.api.parameters import ALERT_ID, DEVICE, DEVICE_ID_SCHEMA, LIMIT, RULE_ID, STATE, STORABLE_TEXT
from iotenant_workloads.api.route import Route
from iotenant_workloads.api.schemas import INTEGER, NUMBER, TEXT, TIME, list_of, named, nullable, record
from iotenant_workloads.datagram import MAX_TEXT

FEATURE = "alerts"
RULES_LOCK = 4242101  # serialises rule creation: the licence's bound holds under concurrent requests

RULE_COLUMNS = "id, name, kind, device_id, type, operator, threshold, for_seconds, silence_seconds, created_at"
ALERT_COLUMNS = """a.id, a.rule_id, r.name AS rule_name, a.device_id, a.state, a.value, a.fired_at, a.resolved_at,
a.resolved_value, a.acknowledged_at"""
ALERT_SELECT = f"SELECT {ALERT_COLUMNS} FROM alerts a JOIN alert_rules r ON r.id = a.rule_id"
# The first acknowledgement's time stays: acknowledging again (a retry) changes nothing.
ACKNOWLEDGE = f"""
WITH a AS (UPDATE alerts SET acknowledged_at = COALESCE(acknowledged_at, now()) WHERE id = %s RETURNING *)
SELECT {ALERT_COLUMNS} FROM a JOIN alert_rules r ON r.id = a.rule_id
"""


def _rule(row: dict[str, Any]) -> dict[str, Any]:
    rule = AlertRule(row["id"], row["name"], row["kind"], row["device_id"], row["type"], row["operator"], row["threshold"],
                     row["for_seconds"], row["silence_seconds"])
    return rule.to_json() | {"createdAt": api_route.iso(row["created_at"])}


def _alert(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "ruleId": row["rule_id"], "ruleName": row["rule_name"], "deviceId": row["device_id"],
            "state": row["state"], "value": row["value"], "firedAt": api_route.iso(row["fired_at"]),
            "resolvedAt": api_route.iso(row["resolved_at"]), "resolvedValue": row["resolved_value"],
            "acknowledgedAt": api_route.iso(row["acknowledged_at"])}


async def list_rules(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature(FEATURE)
    rows = await api.query(f"SELECT {RULE_COLUMNS} FROM alert_rules WHERE deleted_at IS NULL ORDER BY id")
    return {"rules": [_rule(row) for row in rows], "count": len(rows), "limit": api.claims().limits.maxAlertRules}


async def create_rule(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature(FEATURE)
    body = await api_route.json_object(request)
    try:
        rule = judge_rule(body)
    except InvalidRule as error:
        raise ApiError(422, "invalid_body", str(error)) from None
    most = api.claims().limits.maxAlertRules

    async def insert(cursor: AsyncCursor[dict[str, Any]]) -> dict[str, Any]:
        await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (RULES_LOCK,))
        await cursor.execute("SELECT count(*) AS n FROM alert_rules WHERE deleted_at IS NULL")
        row = await cursor.fetchone()
        if row is not None and row["n"] >= most:
            raise ApiError(409, "alert_rule_limit", f"the licence allows {most} alert rules; delete one first")
        await cursor.execute(
            "INSERT INTO alert_rules (name, kind, device_id, type, operator, threshold, for_seconds, silence_seconds) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {RULE_COLUMNS}",
            (rule.name, rule.kind, rule.device_id, rule.type, rule.operator, rule.threshold, rule.for_seconds, rule.silence_seconds),
        )
        created = await cursor.fetchone()
        assert created is not None
        return created

    created = _rule(await api.transaction(insert))
    return web.json_response(created, status=201, headers={"Location": f"/api/v1/alert-rules/{created['id']}"})


async def delete_rule(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature(FEATURE)
    rule_id = RULE_ID.read(request)

    async def delete(cursor: AsyncCursor[dict[str, Any]]) -> bool:
        await cursor.execute("UPDATE alert_rules SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL RETURNING id", (rule_id,))
        if await cursor.fetchone() is None:
            return False
        await cursor.execute("UPDATE alerts SET state = 'resolved', resolved_at = now() WHERE rule_id = %s AND state = 'firing'", (rule_id,))
        return True

    if not await api.transaction(delete):
        raise ApiError(404, "alert_rule_not_found", f"no alert rule {rule_id}")
    return web.Response(status=204)


async def list_alerts(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature(FEATURE)
    state, device_id = STATE.read(request), DEVICE.read(request)
    clauses, parameters = api_route.where(("a.state = %s", state), ("a.device_id = %s", device_id))
    rows = await api.query(f"{ALERT_SELECT} WHERE {clauses} ORDER BY a.fired_at DESC, a.id DESC LIMIT %s",
                           (*parameters, LIMIT.read(request)))
    return {"alerts": [_alert(row) for row in rows], "count": len(rows)}


async def acknowledge(api: CustomerApi, request: web.Request) -> Any:
    api.require_feature(FEATURE)
    alert_id = ALERT_ID.read(request)
    rows = await api.query(ACKNOWLEDGE, (alert_id,))
    if not rows:
        raise ApiError(404, "alert_not_found", f"no alert {alert_id}")
    return _alert(rows[0])


_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": STORABLE_TEXT}
_SCOPE = {"deviceId": {"anyOf": [DEVICE_ID_SCHEMA, {"type": "null"}], "description": "one device; absent or null: every device"}}
THRESHOLD_RULE_BODY: dict[str, Any] = {
    "title": "NewThresholdRule", "type": "object", "additionalProperties": False,
    "required": ["name", "type", "operator", "threshold"],
    "properties": {
        "name": _NAME, "kind": {"const": THRESHOLD}, **_SCOPE,
        "type": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": STORABLE_TEXT,
                 "description": "the measurement type"},
        "operator": {"enum": list(COMPARISONS)},
        "threshold": {"type": "number"},
        "forSeconds": {"type": "integer", "minimum": 0, "maximum": MAX_FOR_SECONDS, "default": 0,
                       "description": "how long the condition must hold before the alert fires"},
    },
}
SILENCE_RULE_BODY: dict[str, Any] = {
    "title": "NewSilenceRule", "type": "object", "required": ["name", "kind", "silenceSeconds"], "additionalProperties": False,
    "properties": {
        "name": _NAME, "kind": {"const": SILENCE}, **_SCOPE,
        "silenceSeconds": {"type": "integer", "minimum": MIN_SILENCE_SECONDS, "maximum": MAX_SILENCE_SECONDS,
                           "description": "seconds without telemetry before the alert fires"},
    },
}
# kind defaults to threshold, so a body without kind is a threshold rule; the two never overlap (silenceSeconds
# belongs to one, operator and threshold to the other).
RULE_BODY: dict[str, Any] = {"oneOf": [THRESHOLD_RULE_BODY, SILENCE_RULE_BODY]}
RULE = {"title": "AlertRule", "type": "object", "required": ["id", "name", "kind", "deviceId", "createdAt"], "properties": {
    "id": INTEGER, "name": TEXT, "kind": {"enum": list(KINDS)}, "deviceId": nullable(TEXT), "createdAt": TIME,
    "type": TEXT, "operator": {"enum": list(COMPARISONS)}, "threshold": NUMBER, "forSeconds": INTEGER, "silenceSeconds": INTEGER}}
ALERT = named("Alert", record(id=INTEGER, ruleId=INTEGER, ruleName=TEXT, deviceId=TEXT, state={"enum": [FIRING, RESOLVED]},
                             value=nullable(NUMBER),
               firedAt=TIME, resolvedAt=nullable(TIME), resolvedValue=nullable(NUMBER), acknowledgedAt=nullable(TIME)))

ROUTES = [
    Route("GET", "/api/v1/alert-rules", list_rules, "Alert rules and the licence's bound on them (needs features.alerts).",
          "listAlertRules", response=named("AlertRuleList", record(rules=list_of(RULE), count=INTEGER, limit=INTEGER)), errors=(403,)),
    Route("POST", "/api/v1/alert-rules", create_rule, "Create a threshold or silence rule (needs features.alerts).",
          "createAlertRule", body=RULE_BODY, success="201", response=RULE, errors=(403, 409, 413, 415, 422),
          links={"DeleteThisRule": ("deleteAlertRule", {"rule_id": "$response.body#/id"})}),
    Route("DELETE", "/api/v1/alert-rules/{rule_id}", delete_rule, "Delete a rule; its firing alerts resolve (needs features.alerts).",
          "deleteAlertRule", (RULE_ID,), success="204", errors=(403, 404, 422)),
    Route("GET", "/api/v1/alerts", list_alerts, "Alerts, newest first (needs features.alerts).", "listAlerts", (STATE, DEVICE, LIMIT),
          response=named("AlertList", record(alerts=list_of(ALERT), count=INTEGER)), errors=(403, 422)),
    Route("POST", "/api/v1/alerts/{alert_id}/acknowledge", acknowledge, "Acknowledge an alert (needs features.alerts).",
          "acknowledgeAlert", (ALERT_ID,), response=ALERT, errors=(403, 404, 422)),
]
