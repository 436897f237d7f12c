"""Fuzzing the worker's parse/validate path as the stream drives it: ``ingest``
over whole batches, with per-partition state (dedup, watermarks, checkpoints)
and a restart that replays the batch. tests/unit/schemas/test_properties.py
fuzzes ``parse_event`` alone; this adds what only batches and state can break.

For any batch of messages (valid events of every type with any event time,
re-sent ids, arbitrary bytes and JSON, empty and missing values, oversized
ones), on any partitions, in offset order:
- no exception escapes;
- every message is accounted for exactly once: an event (on time or late), a
  dead letter, a duplicate, or a replay a checkpoint covers;
- an event is valid (its wire form parses back to itself) and its time is in
  range; a dead letter carries the reason ``parse_event`` or the time check
  gives for its bytes, and its source offset;
- an event_id is an on-time event at most once per partition (a re-sent late
  one is forwarded again, late), and late events add no KPI contribution;
- replaying the batch after the checkpoint yields nothing new.
"""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.samples import PROPERTIES, wire
from touchstream.schemas import Invalid, check_event_time, parse_event, parse_object
from touchstream.schemas.records import DeadLetterReason
from touchstream.streams.eventtime import SourceState
from touchstream.streams.ingest import RawMessage, ingest

RECEIVED = datetime(2026, 11, 2, 12, tzinfo=UTC)
MAX_BYTES = 2048
REASONS = set(typing.get_args(DeadLetterReason))
IDS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(6)]  # few: ids repeat

recent = st.datetimes(
    min_value=datetime(2026, 11, 2, 9),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2026, 11, 2, 12, 10),  # noqa: DTZ001
    timezones=st.just(UTC),
)
event_times = st.one_of(recent, recent, recent, st.datetimes(timezones=st.just(UTC)))  # 1..9999
events = st.builds(
    lambda event_type, event_id, at, key, text: wire(
        event_type,
        event_id=event_id,
        occurred_at=at.isoformat(),
        customer_id=key,
        properties={**PROPERTIES[event_type], **({"note": text} if text else {})},
    ),
    st.sampled_from(sorted(PROPERTIES)),
    st.sampled_from(IDS) | st.uuids().map(str),
    event_times,
    st.sampled_from(["c-1", "c-2", "c-3"]),
    st.none() | st.none() | st.text(max_size=40) | st.just("x" * MAX_BYTES),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
KINDS = ["event"] * 6 + ["truncated", "json", "bytes", "empty", "none"]


@st.composite
def payloads(draw: st.DrawFn) -> bytes | None:
    """Mostly events (so duplicates and lateness happen), else every kind of junk."""
    kind = draw(st.sampled_from(KINDS))
    if kind in ("event", "truncated"):
        raw = json.dumps(draw(events)).encode()
        return raw if kind == "event" else raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return b"" if kind == "empty" else None


@st.composite
def batches(draw: st.DrawFn) -> list[RawMessage]:
    values = draw(st.lists(payloads(), min_size=1, max_size=25))
    partitions = draw(st.lists(st.integers(0, 2), min_size=len(values), max_size=len(values)))
    offsets = {p: draw(st.integers(0, 1000)) for p in set(partitions)}
    batch = []
    for value, partition in zip(values, partitions, strict=True):
        batch.append(RawMessage("cx.feedback.v1", partition, offsets[partition], b"k", value))
        offsets[partition] += draw(st.integers(1, 3))  # gaps: compacted or skipped offsets
    if draw(st.booleans()) and len(batch) > 1:  # a re-delivery of earlier bytes
        again = draw(st.sampled_from(batch))
        batch.append(
            RawMessage(
                "cx.feedback.v1", again.partition, offsets[again.partition], b"k", again.value
            )
        )
    return batch


def expected_verdict(raw: bytes) -> Any:
    parsed = parse_event(raw, MAX_BYTES)
    return parsed if isinstance(parsed, Invalid) else check_event_time(parsed, RECEIVED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), lateness=st.sampled_from([0.0, 600.0, 86_400.0]), stateful=st.booleans())
def test_every_message_is_an_event_a_dead_letter_a_duplicate_or_a_replay(
    batch: list[RawMessage], lateness: float, stateful: bool
) -> None:
    sources = {f"{m.topic}:{m.partition}" for m in batch}
    states = {s: SourceState(s, lateness) for s in sources} if stateful else None

    result = ingest(batch, RECEIVED, MAX_BYTES, None, states)

    duplicates = sum(result.duplicates.values())
    assert result.replayed == 0
    assert len(result.events) + len(result.dead_letters) + duplicates == len(batch)
    assert len(result.sources) == len(result.on_time) == len(result.events)
    assert duplicates == 0 or stateful
    by_offset = {(m.partition, m.offset): m for m in batch}
    for _, letter in result.dead_letters:
        assert letter.reason in REASONS
        message = by_offset[(letter.source_partition, letter.source_offset)]
        verdict = expected_verdict(message.value or b"")
        assert isinstance(verdict, Invalid) and verdict.reason == letter.reason
        assert letter.original_size == len(message.value or b"")
    for event in result.events:
        assert parse_object(event.wire()) == event
        assert check_event_time(event, RECEIVED) is event
    seen = set()
    for event, source, kept in zip(result.events, result.sources, result.on_time, strict=True):
        # On time at most once per partition. A re-sent late event is forwarded
        # again, late (ids are only remembered back to the watermark: it changes
        # no window, and `events` collapses it by event_id).
        if kept:
            assert (source, event.event_id) not in seen or not stateful
            seen.add((source, event.event_id))
    on_time = {
        (source, str(event.event_id))
        for event, source, kept in zip(result.events, result.sources, result.on_time, strict=True)
        if kept
    }
    for contribution in result.contributions:  # only on-time events feed KPI windows
        partition = int(contribution.source.rsplit(":", 1)[1])
        message = by_offset[(partition, contribution.offset)]
        event_id = json.loads(message.value or b"")["event_id"]
        assert (contribution.source, event_id) in on_time
    assert all(result.on_time) or stateful

    if states is not None:  # a restart after the checkpoint replays the batch: nothing new
        for state in states.values():
            state.checkpoint()
        again = ingest(batch, RECEIVED, MAX_BYTES, None, states)
        assert again.replayed == len(batch)
        assert again.events == [] and again.dead_letters == [] and again.contributions == []


@settings(max_examples=100, deadline=None)
@given(at=event_times, stateful=st.booleans())
def test_a_single_event_is_kept_exactly_when_its_time_is_in_range(
    at: datetime, stateful: bool
) -> None:
    raw = json.dumps(wire("nps_response", occurred_at=at.isoformat())).encode()
    states = {"t:0": SourceState("t:0", 600.0)} if stateful else None
    result = ingest([RawMessage("t", 0, 0, None, raw)], RECEIVED, MAX_BYTES, None, states)
    in_range = datetime(2000, 1, 1, tzinfo=UTC) <= at <= RECEIVED + timedelta(seconds=300)
    assert len(result.events) == int(in_range)
    assert [d.reason for _, d in result.dead_letters] == (
        [] if in_range else ["timestamp_out_of_range"]
    )
