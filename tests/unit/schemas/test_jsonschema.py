"""The published JSON Schemas: committed, in sync with the models, and usable by a
validator the project did not write (the `jsonschema` package)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.schemas import Invalid, parse_object
from touchstream.schemas.events import EVENT_TYPES
from touchstream.schemas.jsonschema import drift, export, json_schemas

COMMITTED = Path(__file__).resolve().parents[3] / "schemas" / "json"


@functools.cache
def validator(event_type: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((COMMITTED / f"{event_type}.v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_committed_schemas_match_the_models() -> None:
    assert drift(COMMITTED) == [], "run: touchstream schemas export schemas/json"
    assert {p.name for p in COMMITTED.glob("*.schema.json")} == set(json_schemas())
    assert len(json_schemas()) == len(EVENT_TYPES) + 1


def test_drift_is_detected(tmp_path: Path) -> None:
    export(tmp_path)
    assert drift(tmp_path) == []
    (tmp_path / "nps_response.v1.schema.json").write_text("{}\n")
    (tmp_path / "teleport.v1.schema.json").write_text("{}\n")
    (tmp_path / "comment.v1.schema.json").unlink()
    assert sorted(drift(tmp_path)) == [
        "comment.v1.schema.json: missing",
        "nps_response.v1.schema.json: differs from the models",
        "teleport.v1.schema.json: no model has it",
    ]


def test_simulated_events_of_every_type_validate_in_jsonschema() -> None:
    config = SimulationConfig(customers=200, duration_s=3 * 86_400, seed=11)
    events = list(Simulator(config).events())
    seen = set()
    for event in events:
        validator(event["event_type"]).validate(event)
        seen.add(event["event_type"])
    assert seen == set(EVENT_TYPES)


def base(event_type: str, **properties: Any) -> dict[str, Any]:
    return {
        "event_id": "0b7e7c1e-3f0a-4d2b-9a57-6c0de0f1a001",
        "event_type": event_type,
        "occurred_at": "2026-11-02T09:00:00+01:00",
        "customer_id": "c-1",
        "channel": "web",
        "touchpoint": "delivery",
        "properties": properties,
    }


INVALID = [
    ("score above the scale", base("nps_response", score=11)),
    ("score below the scale", base("csat_response", score=0)),
    ("no identity", {**base("page_view"), "customer_id": None}),
    ("naive timestamp", {**base("page_view"), "occurred_at": "2026-11-02T09:00:00"}),
    (
        "unknown currency",
        base("checkout_started", checkout_id="k", cart_id="c", value=1, currency="XXY"),
    ),
    ("blank id", base("checkout_step", checkout_id="  ", step="payment")),
    ("unknown envelope field", {**base("page_view"), "colour": "red"}),
    ("identify without anonymous_id", base("identify")),
    ("missing required property", base("order_placed", order_id="o", total=1, currency="EUR")),
    ("bad sentiment", base("comment", text="hi", sentiment="angry")),
]


@pytest.mark.parametrize(("why", "event"), INVALID, ids=[why for why, _ in INVALID])
def test_invalid_events_are_refused_by_both_validators(why: str, event: dict[str, Any]) -> None:
    errors = list(validator(event["event_type"]).iter_errors(event))
    assert errors, f"jsonschema accepted: {why}"
    assert isinstance(parse_object(event), Invalid), f"the model accepted: {why}"


def test_unknown_properties_are_kept_by_both() -> None:
    event = base("nps_response", score=9, survey="q4", nested={"a": [1, 2]})
    validator("nps_response").validate(event)
    parsed = parse_object(event)
    assert not isinstance(parsed, Invalid)
    assert parsed.wire()["properties"]["nested"] == {"a": [1, 2]}
