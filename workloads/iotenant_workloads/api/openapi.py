"""``/openapi.json``: the route table, described (OpenAPI 3.1). Parameters, bodies and answers come from the
same definitions the handlers judge and answer with (``parameters``, each route's schemas), so the document
and the API cannot drift apart."""

from __future__ import annotations

import re
from typing import Any

from iotenant_workloads.api import alert_routes, command_routes, device_routes, export_routes, ota_routes
from iotenant_workloads.api.errors import ERROR_SCHEMA, JSON
from iotenant_workloads.api.route import Route

# Every route of the API, in the order /openapi.json lists them.
ROUTES: list[Route] = [
    *device_routes.ROUTES,
    *command_routes.ROUTES,
    *alert_routes.ROUTES,
    *export_routes.ROUTES,
    *ota_routes.ROUTES,
    *device_routes.TENANT_ROUTES,
]

# What each refusal means; every /api route may answer 401, 429 and 503.
ERRORS = {
    401: "unauthorized: no bearer token, or not this tenant's",
    403: "feature_not_licensed: the verified licence does not sell this feature",
    404: "the device, rule or alert does not exist",
    405: "method_not_allowed: the Allow header lists the methods the path takes",
    409: "a conflict: the command id exists, the licence's bound on alert rules is reached, or an OTA update runs",
    413: "the body is larger than the API takes",
    415: "unsupported_media_type: the body is not sent as application/json",
    422: "invalid_parameter or invalid_body: the message names the field and the rule",
    429: "rate_limited: too many requests from this client (or export_busy)",
    503: "database_unavailable, broker_unavailable or licence_invalid: retry later",
}
ALWAYS = (401, 429, 503)
ERROR_REFERENCE = {"$ref": "#/components/schemas/Error"}


def _errors(route: Route) -> list[int]:
    found = set(ALWAYS) | set(route.errors)
    if route.parameters or route.body is not None:
        found.add(422)
    if route.body is not None:
        found |= {413, 415}
    return sorted(found)


def _referenced(schema: Any, components: dict[str, Any]) -> Any:
    """``schema`` with each named schema (``schemas.named``) moved into ``components`` and referenced from there."""
    if isinstance(schema, list):
        return [_referenced(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    inner = {key: _referenced(value, components) for key, value in schema.items()}
    title = schema.get("title")
    if not isinstance(title, str):
        return inner
    assert components.get(title, inner) == inner, f"two schemas are named {title}"
    components[title] = inner
    return {"$ref": f"#/components/schemas/{title}"}


def _success(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": route.summary}
    if route.response is not None:
        answer["content"] = {kind: {"schema": _referenced(route.response, components)} for kind in route.produces}
    if route.links:
        answer["links"] = {name: {"operationId": target, "parameters": parameters}
                           for name, (target, parameters) in route.links.items()}
    if route.success == "201":
        answer["headers"] = {"Location": {"description": "where the created object is", "schema": {"type": "string"}}}
    return answer


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "security": [{"bearer": []}],
        "responses": {route.success: _success(route, components)} | {
            str(status): {"description": ERRORS[status], "content": {JSON: {"schema": ERROR_REFERENCE}}} for status in _errors(route)},
    }
    if route.parameters:
        operation["parameters"] = [parameter.document() for parameter in route.parameters]
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": _referenced(route.body, components)}}}
    return operation


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for route in ROUTES:
        declared = {p.name for p in route.parameters if p.location == "path"}
        assert declared == set(re.findall(r"{([a-z_]+)}", route.path)), f"{route.path}: path parameters {declared}"
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "iotenant customer API", "version": "v1",
                 "description": "A tenant's devices, telemetry, commands, alerts, exports and OTA updates. Every error is JSON with "
                                "a stable error code. Time ranges include from and exclude to; a range whose from is not before its to "
                                "is empty. Every text, in parameters and bodies, is UTF-8 without NUL characters (what "
                                "PostgreSQL stores): others are refused with 422."},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "the tenant's API token (Secret api-token)"}},
            "schemas": components,
        },
        "paths": paths,
    }
