"""``/openapi.json``: the route table, described."""

from __future__ import annotations

import re
from typing import Any

from iotenant_workloads.api import alert_routes, command_routes, device_routes, export_routes, ota_routes
from iotenant_workloads.api.requests import Route

# Every route of the API, in the order /openapi.json lists them.
ROUTES: list[Route] = [
    *device_routes.ROUTES,
    *command_routes.ROUTES,
    *alert_routes.ROUTES,
    *export_routes.ROUTES,
    *ota_routes.ROUTES,
    *device_routes.TENANT_ROUTES,
]

ERROR_RESPONSES = (("401", "unauthorized"), ("403", "feature_not_licensed"), ("404", "not found"), ("409", "conflict"),
                   ("422", "invalid_parameter or invalid_body"), ("429", "rate_limited"), ("503", "unavailable"))


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"{([a-z_]+)}", route.path)]
        parameters += [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in route.query]
        operation: dict[str, Any] = {
            "summary": route.summary, "parameters": parameters, "security": [{"bearer": []}],
            "responses": {route.success: {"description": "OK", "content": {kind: {} for kind in route.produces}}}
            | {code: {"description": text} for code, text in ERROR_RESPONSES},
        }
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "iotenant customer API", "version": "v1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
