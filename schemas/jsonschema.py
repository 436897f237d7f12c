"""Published JSON Schemas: one per event type and version, plus the envelope.

Generated from the pydantic models, so the models stay the one source of truth;
the files are committed under ``schemas/json/`` (``touchstream schemas export``)
and a test fails when they drift. Services in other languages validate against
them before they send.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from touchstream.schemas.currencies import ISO_4217
from touchstream.schemas.events import EVENT_TYPES, Event

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://touchstream.dev/schemas/"


def _file_name(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}.schema.json"


def _finish(schema: dict[str, Any], name: str, title: str) -> dict[str, Any]:
    return {"$schema": DIALECT, "$id": BASE_ID + name, **schema, "title": title}


# What the models check in validators, which pydantic cannot put in a schema by
# itself. The schemas are as strict as the models or stricter (currencies must
# be sent upper-case), never looser: what validates here is accepted downstream.
AWARE = r"(Z|z|[+-][0-9]{2}:[0-9]{2})$"
IDENTITY = {
    "anyOf": [
        {"required": [name], "properties": {name: {"type": "string"}}}
        for name in ("customer_id", "anonymous_id")
    ]
}


def _ids_not_blank(node: Any) -> None:
    """Ids are stripped and must stay non-empty: the schema says "not only spaces"."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("minLength") == 1 and "pattern" not in node:
            node["pattern"] = r"\S"
        for value in node.values():
            _ids_not_blank(value)
    elif isinstance(node, list):
        for value in node:
            _ids_not_blank(value)


def _tighten(schema: dict[str, Any], event_type: str | None) -> dict[str, Any]:
    _ids_not_blank(schema)
    for name in ("occurred_at", "received_at"):
        field = schema["properties"][name]
        for option in field.get("anyOf", [field]):
            if option.get("format") == "date-time":
                option["pattern"] = AWARE
    for definition in schema.get("$defs", {}).values():
        currency = definition.get("properties", {}).get("currency")
        if currency is not None:
            currency["enum"] = sorted(ISO_4217)
    if event_type == "identify":
        schema["required"] = sorted({*schema["required"], "customer_id", "anonymous_id"})
        for name in ("customer_id", "anonymous_id"):
            schema["properties"][name] = schema["properties"][name]["anyOf"][0]
    else:
        schema.update(IDENTITY)
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name → schema, for the envelope and every event type."""
    envelope = _tighten(Event.model_json_schema(mode="validation"), None)
    out = {
        "envelope.schema.json": _finish(
            envelope, "envelope.schema.json", "Touchstream event envelope"
        )
    }
    for event_type, model in sorted(EVENT_TYPES.items()):
        version = model.model_fields["schema_version"].default
        name = _file_name(event_type, version)
        schema = _tighten(model.model_json_schema(mode="validation"), event_type)
        schema["properties"]["schema_version"] = {"const": version, "default": version}
        out[name] = _finish(schema, name, f"Touchstream {event_type} v{version}")
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path) -> list[Path]:
    """Write every schema into ``directory`` (created); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """What differs between ``directory`` and the models: missing, stale or extra files."""
    expected = json_schemas()
    problems = []
    for name, schema in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text() != render(schema):
            problems.append(f"{name}: differs from the models")
    for path in sorted(directory.glob("*.schema.json")):
        if path.name not in expected:
            problems.append(f"{path.name}: no model has it")
    return problems
