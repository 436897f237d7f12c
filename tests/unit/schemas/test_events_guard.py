"""schemas.events.event_types: the names the hot path checks before isinstance."""

from __future__ import annotations

from tests.samples import PROPERTIES, wire
from touchstream.schemas import parse_object
from touchstream.schemas.events import EVENT_TYPES, NpsResponse, OrderPlaced, event_types
from touchstream.streams.alerts import FEEDBACK, _trigger
from touchstream.streams.customers import is_detractor, touch_of
from touchstream.streams.kpis import COUNTED, event_counts
from touchstream.streams.outcomes import STEPS, ops_of


def test_each_model_has_its_own_name() -> None:
    assert event_types(NpsResponse, OrderPlaced) == {"nps_response", "order_placed"}
    for name, model in EVENT_TYPES.items():
        assert event_types(model) == {name}


def test_an_event_outside_a_guard_gets_nothing_from_its_function() -> None:
    """What the name checks skip is what the isinstance chains gave nothing for:
    every event type of the contract, with scores that would count or alert."""
    for event_type in PROPERTIES:
        event = parse_object(wire(event_type))
        assert not isinstance(event, type(None))
        if event_type not in COUNTED:
            assert event_counts(event) == {}  # type: ignore[arg-type]
        if event_type not in FEEDBACK:
            assert _trigger(event) is None  # type: ignore[arg-type]
            assert not is_detractor(event)  # type: ignore[arg-type]
        if event_type not in STEPS:
            assert ops_of(event) == []  # type: ignore[arg-type]
        touched = touch_of(event)  # type: ignore[arg-type]
        assert touched is not None and touched[1][1] == (
            "order"
            if event_type == "order_placed"
            else event_type
            if event_type in ("subscription_started", "subscription_cancelled", "plan_upgraded")
            else "touch"
        )
    # And inside them the functions still answer (a low score, a step, a response).
    assert _trigger(parse_object(wire("nps_response", properties={"score": 3}))) is not None  # type: ignore[arg-type]
    assert ops_of(parse_object(wire("checkout_step")))  # type: ignore[arg-type]
    assert event_counts(parse_object(wire("isn_response")))  # type: ignore[arg-type]
