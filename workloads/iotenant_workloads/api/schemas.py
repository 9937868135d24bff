"""Building blocks of the JSON Schemas that ``/openapi.json`` states for the API's answers (JSON Schema 2020-12,
as OpenAPI 3.1 takes it). Each route module describes its own answers with them, beside the code that makes
those answers."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

TIME: Schema = {"type": "string", "format": "date-time"}
TEXT: Schema = {"type": "string"}
NUMBER: Schema = {"type": "number"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
ANY_OBJECT: Schema = {"type": "object"}


def nullable(schema: Schema) -> Schema:
    """``schema``, or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def record(**properties: Schema) -> Schema:
    """An object with exactly these properties, each always present (a null is written out, not left out)."""
    return {"type": "object", "required": list(properties), "additionalProperties": False, "properties": properties}


def named(title: str, schema: Schema) -> Schema:
    """``schema`` under a name: /openapi.json states it once among its components, and generated clients
    name their types after it."""
    return {"title": title, **schema}


def list_of(item: Schema) -> Schema:
    return {"type": "array", "items": item}
