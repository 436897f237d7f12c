from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.samples import PROPERTIES, wire
from touchstream.schemas import EVENT_TYPES, Invalid, family, parse_batch, parse_event, parse_object
from touchstream.schemas.events import NpsResponse


def test_every_contract_event_type_has_a_model_and_a_sample() -> None:
    assert set(EVENT_TYPES) == set(PROPERTIES)


@pytest.mark.parametrize("event_type", sorted(PROPERTIES))
def test_each_type_round_trips_through_the_wire(event_type: str) -> None:
    event = parse_event(json.dumps(wire(event_type)).encode())
    assert not isinstance(event, Invalid), event
    assert event.event_type == event_type
    again = parse_event(event.model_dump_json().encode())
    assert again == event


def test_unknown_extra_properties_are_kept() -> None:
    data = wire("nps_response")
    data["properties"]["campaign"] = "winter"
    event = parse_object(data)
    assert not isinstance(event, Invalid)
    assert event.wire()["properties"]["campaign"] == "winter"


def test_occurred_at_is_normalised_to_utc() -> None:
    event = parse_object(wire("page_view", occurred_at="2026-11-02T10:30:00+01:00"))
    assert not isinstance(event, Invalid)
    assert event.occurred_at == datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def test_at_is_the_event_time_in_epoch_seconds_and_follows_a_copy() -> None:
    data = wire("page_view", occurred_at="2026-11-02T10:30:00+01:00")
    event = parse_object(data)
    assert not isinstance(event, Invalid)
    assert event.at == datetime(2026, 11, 2, 9, 30, tzinfo=UTC).timestamp()
    assert "at" not in event.wire() and "at" not in json.loads(event.model_dump_json())
    later = event.model_copy(update={"occurred_at": event.occurred_at + timedelta(hours=1)})
    assert later.at == event.at + 3600  # the copy does not keep the cached value
    assert event.model_copy(update={"session_id": "s-2"}).at == event.at
    assert event == parse_object(data)  # the cached value is not compared


def test_families_route_to_the_three_raw_topics() -> None:
    assert family("page_view") == "clickstream"
    assert family("order_placed") == "orders"
    assert family("subscription_cancelled") == "orders"
    assert family("nps_response") == "feedback"


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"occurred_at": "2026-11-02T09:30:00"}, "schema_violation", "occurred_at"),
        ({"event_id": "not-a-uuid"}, "schema_violation", "event_id"),
        ({"customer_id": None, "anonymous_id": None}, "missing_identity", "customer_id"),
        ({"customer_id": ""}, "schema_violation", "customer_id"),
        ({"channel": "Web Shop"}, "schema_violation", "channel"),
        ({"event_type": "teleport"}, "unknown_event_type", "event_type"),
        ({"surprise": 1}, "schema_violation", "surprise"),
    ],
)
def test_invalid_envelopes_say_what_and_where(change: dict, reason: str, field: str) -> None:
    data = wire("page_view")
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    result = parse_object(data)
    assert isinstance(result, Invalid)
    assert result.reason == reason
    assert any(issue.field == field for issue in result.errors), result.errors


def test_identify_needs_both_ids() -> None:
    data = wire("identify")
    del data["anonymous_id"]
    result = parse_object(data)
    assert isinstance(result, Invalid) and result.reason == "schema_violation"


@pytest.mark.parametrize(
    ("event_type", "low", "high"),
    [
        ("nps_response", 0, 10),
        ("csat_response", 1, 5),
        ("ces_response", 1, 7),
        ("isn_response", 1, 5),
    ],
)
def test_score_bounds(event_type: str, low: int, high: int) -> None:
    for score, ok in ((low - 1, False), (low, True), (high, True), (high + 1, False)):
        data = wire(event_type)
        data["properties"]["score"] = score
        result = parse_object(data)
        assert (not isinstance(result, Invalid)) is ok, (score, result)
        if not ok:
            assert isinstance(result, Invalid)
            assert result.errors[0].field == "properties.score"


def test_currency_must_be_iso_4217() -> None:
    data = wire("checkout_started")
    data["properties"]["currency"] = "EURO"
    result = parse_object(data)
    assert isinstance(result, Invalid)
    assert result.errors[0].field == "properties.currency"
    data["properties"]["currency"] = "usd"
    event = parse_object(data)
    assert not isinstance(event, Invalid) and event.properties.currency == "USD"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[]", "not_object"),
        (b'"x"', "not_object"),
        (b"{}", "unknown_event_type"),
        (b"x" * 70_000, "too_large"),
    ],
)
def test_bytes_that_are_not_events(raw: bytes, reason: str) -> None:
    result = parse_event(raw)
    assert isinstance(result, Invalid)
    assert result.reason == reason


timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by API
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]),
)
ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Zs", "Cc"]),
    min_size=1,
    max_size=40,
)


@given(
    score=st.integers(0, 10), at=timestamps, customer=ids, comment=st.none() | st.text(max_size=200)
)
def test_nps_round_trip_property(
    score: int, at: datetime, customer: str, comment: str | None
) -> None:
    data = wire("nps_response", occurred_at=at.isoformat(), customer_id=customer)
    data["properties"] = {"score": score, **({"comment": comment} if comment is not None else {})}
    event = parse_event(json.dumps(data).encode())
    assert isinstance(event, NpsResponse), event
    assert event.occurred_at == at.astimezone(UTC)
    assert parse_event(event.model_dump_json().encode()) == event


@given(score=st.integers().filter(lambda s: not 0 <= s <= 10))
def test_nps_out_of_range_is_rejected_readably(score: int) -> None:
    data = wire("nps_response")
    data["properties"]["score"] = score
    result = parse_event(json.dumps(data).encode())
    assert isinstance(result, Invalid)
    assert result.reason == "schema_violation"
    assert result.errors[0].field == "properties.score"
    assert "10" in result.errors[0].reason or "0" in result.errors[0].reason


@given(raw=st.binary(max_size=300))
def test_any_bytes_parse_or_are_invalid_never_raise(raw: bytes) -> None:
    result = parse_event(raw)
    assert isinstance(result, Invalid) or result.event_type in EVENT_TYPES


def test_scores_are_integers_not_booleans_or_strings() -> None:
    # JSON true would otherwise read as NPS 1: a detractor and an alert.
    for score in (True, "5", 5.0):
        event = wire("nps_response", properties={"score": score})
        assert isinstance(parse_object(event), Invalid), score
    assert not isinstance(parse_object(wire("nps_response", properties={"score": 5})), Invalid)


def test_a_batch_parses_message_by_message() -> None:
    good = json.dumps(wire("page_view")).encode()
    results = parse_batch([good, b"{", good])
    assert [type(r).__name__ for r in results] == ["PageView", "Invalid", "PageView"]
