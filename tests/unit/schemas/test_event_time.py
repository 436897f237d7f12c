"""Event time the pipeline accepts: not before 2000, not more than MAX_FUTURE_S
ahead of the time it was received (schemas/parse.py ``check_event_time``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.samples import wire
from touchstream.schemas import AnyEvent, Invalid, check_event_time, parse_event
from touchstream.schemas.parse import EARLIEST_EVENT_TIME, MAX_FUTURE_S
from touchstream.streams.ingest import RawMessage, ingest

RECEIVED = datetime(2026, 11, 2, 12, tzinfo=UTC)


def event_at(at: str) -> AnyEvent:
    parsed = parse_event(json.dumps(wire("nps_response", occurred_at=at)).encode())
    assert not isinstance(parsed, Invalid), parsed
    return parsed


@pytest.mark.parametrize(
    "at",
    [
        "2000-01-01T00:00:00Z",  # the earliest accepted
        "2024-02-29T10:00:00+01:00",  # years old: valid (late or not is the stream's call)
        "2026-11-02T12:00:00Z",
        (RECEIVED + timedelta(seconds=MAX_FUTURE_S)).isoformat(),  # clock skew tolerated
    ],
)
def test_plausible_times_are_kept(at: str) -> None:
    event = event_at(at)
    assert check_event_time(event, RECEIVED) is event


@pytest.mark.parametrize(
    ("at", "kind"),
    [
        ("1999-12-31T23:59:59.999Z", "ancient"),
        ("1969-07-20T20:17:40Z", "ancient"),
        ("0001-01-01T00:00:00Z", "ancient"),
        ((RECEIVED + timedelta(seconds=MAX_FUTURE_S + 1)).isoformat(), "future"),
        ("2026-11-03T12:00:00Z", "future"),
        ("9999-12-31T23:59:59Z", "future"),
    ],
)
def test_future_and_ancient_times_are_refused_with_a_reason(at: str, kind: str) -> None:
    event = event_at(at)
    result = check_event_time(event, RECEIVED)
    assert isinstance(result, Invalid)
    assert result.reason == "timestamp_out_of_range"
    assert [(i.field, i.kind) for i in result.errors] == [("occurred_at", kind)]
    assert result.event_id == str(event.event_id) and result.event_type == "nps_response"


def test_the_tolerance_is_a_parameter() -> None:
    event = event_at((RECEIVED + timedelta(hours=2)).isoformat())
    assert check_event_time(event, RECEIVED, max_future_s=3 * 3600) is event
    assert isinstance(check_event_time(event, RECEIVED, max_future_s=3600), Invalid)
    assert EARLIEST_EVENT_TIME == datetime(2000, 1, 1, tzinfo=UTC)


def test_ingest_dead_letters_them_and_counts_nothing() -> None:
    future = wire("nps_response", occurred_at="2026-11-02T13:00:00Z")
    ancient = wire("nps_response", occurred_at="1970-01-01T00:00:00Z")
    fine = wire("nps_response", occurred_at="2026-11-02T11:59:00Z")
    batch = [
        RawMessage("cx.feedback.v1", 0, n, b"c-1", json.dumps(e).encode())
        for n, e in enumerate([future, ancient, fine])
    ]
    result = ingest(batch, RECEIVED, 64 * 1024)
    assert [str(e.event_id) for e in result.events] == [fine["event_id"]]
    assert {c.offset for c in result.contributions} == {2}
    letters = [letter for _, letter in result.dead_letters]
    assert [(d.reason, d.event_id, d.source_offset) for d in letters] == [
        ("timestamp_out_of_range", future["event_id"], 0),
        ("timestamp_out_of_range", ancient["event_id"], 1),
    ]
    assert result.by_reason == {"timestamp_out_of_range": 2}
