from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.samples import wire
from touchstream.schemas.pii import PREFIX, REDACTED, Pseudonymiser
from touchstream.streams.ingest import RawMessage, Sequencer, forwarded, ingest

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


def msg(offset: int, value: bytes) -> RawMessage:
    return RawMessage("cx.feedback.v1", 2, offset, b"c-1", value)


def test_every_message_is_an_event_or_a_dead_letter() -> None:
    batch = [
        msg(0, json.dumps(wire("nps_response")).encode()),
        msg(1, b"{not json"),
        msg(2, json.dumps(wire("page_view")).encode()),
        msg(3, b"\xff\xfe\x00"),
    ]
    result = ingest(batch, NOW, 64 * 1024)
    assert [e.event_type for e in result.events] == ["nps_response", "page_view"]
    sent = [json.loads(forwarded(e, NOW, late=False)) for e in result.events]
    assert all(e["received_at"] == NOW.isoformat() and "late" not in e for e in sent)
    assert json.loads(forwarded(result.events[0], NOW, late=True))["late"] is True
    assert [dl.source_offset for _, dl in result.dead_letters] == [1, 3]
    assert result.by_reason == {"not_json": 2}
    binary = result.dead_letters[1][1]
    assert binary.payload_encoding == "base64"
    assert binary.original_bytes() == b"\xff\xfe\x00"
    assert binary.source_topic == "cx.feedback.v1" and binary.source_partition == 2


def test_feedback_contributes_to_kpis() -> None:
    result = ingest([msg(0, json.dumps(wire("nps_response")).encode())], NOW, 64 * 1024)
    assert {c.group for c in result.contributions} == {"nps|web|checkout", "nps|all|all"}


def test_an_empty_message_is_a_dead_letter() -> None:
    result = ingest([RawMessage("t", 0, 0, None, None)], NOW, 1024)
    assert result.by_reason == {"not_json": 1}
    assert result.dead_letters[0][1].original_size == 0


def with_pii(event_type: str = "identify") -> dict[str, object]:
    event = wire(event_type)
    event["anonymous_id"] = "a-1"
    event["properties"] = {"email": "Ana@Example.com", "device": {"client_ip": "10.0.0.9"}}
    return event


def test_pii_left_in_clear_by_an_emitter_is_pseudonymised_here() -> None:
    pii = Pseudonymiser(b"0123456789abcdef")
    result = ingest([msg(0, json.dumps(with_pii()).encode())], NOW, 64 * 1024, pii)
    (event,) = result.events
    props = event.wire()["properties"]
    assert props["email"] == pii.token("email", "ana@example.com")
    assert props["device"]["client_ip"] == pii.token("ip", "10.0.0.9")
    assert b"Ana@Example.com" not in event.model_dump_json().encode()


def test_without_a_key_pii_is_dead_lettered_and_redacted() -> None:
    result = ingest([msg(0, json.dumps(with_pii()).encode())], NOW, 64 * 1024)
    assert result.events == [] and result.by_reason == {"unprotected_pii": 1}
    letter = result.dead_letters[0][1]
    assert {issue.field for issue in letter.errors} == {"properties.email"}
    assert b"Ana@Example.com" not in letter.original_bytes()
    assert json.loads(letter.original_bytes())["properties"]["email"] == REDACTED


def test_dead_letters_never_keep_pii_in_clear() -> None:
    bad = with_pii("nps_response")  # no score: a schema violation, with an email in it
    pii = Pseudonymiser(b"0123456789abcdef")
    result = ingest([msg(0, json.dumps(bad).encode())], NOW, 64 * 1024, pii)
    letter = result.dead_letters[0][1]
    assert letter.reason == "schema_violation"
    assert json.loads(letter.original_bytes())["properties"]["email"].startswith(PREFIX)


def raw(partition: int, offset: int) -> RawMessage:
    return RawMessage("raw", partition, offset, b"k", b"{}")


def offsets(messages: list[RawMessage]) -> list[tuple[int, int]]:
    return [(m.partition, m.offset) for m in messages]


def test_sequencer_sends_a_partition_back_to_its_checkpoint_after_a_gap() -> None:
    sequencer = Sequencer(retry_s=5)
    checkpoint = {"raw:0": 5, "raw:1": 3}
    # A killed predecessor handled up to 4 on partition 0, but Faust committed 7.
    admitted, seeks = sequencer.admit([raw(0, 7), raw(0, 8), raw(1, 3), raw(1, 4)], checkpoint, 0)
    assert offsets(admitted) == [(1, 3), (1, 4)]
    assert seeks == [("raw", 0, 5)]
    # Prefetched messages after the gap are held too, without a second seek.
    admitted, seeks = sequencer.admit([raw(0, 9)], checkpoint, 1)
    assert (admitted, seeks) == ([], [])
    # Still nothing re-read after 5 s (a seek during a rebalance can fail): ask again.
    assert sequencer.admit([raw(0, 10)], checkpoint, 6) == ([], [("raw", 0, 5)])
    # The re-read arrives: in sequence again.
    admitted, seeks = sequencer.admit([raw(0, 5), raw(0, 6), raw(0, 7)], checkpoint, 7)
    assert offsets(admitted) == [(0, 5), (0, 6), (0, 7)] and seeks == []


def test_sequencer_accepts_a_hole_the_re_read_shows() -> None:
    sequencer = Sequencer(retry_s=5)
    checkpoint = {"raw:0": 5}
    assert sequencer.admit([raw(0, 9)], checkpoint, 0)[1] == [("raw", 0, 5)]
    assert sequencer.admit([raw(0, 12)], checkpoint, 1)[0] == []  # prefetched: held
    # The re-read starts at 8 (5-7 are gone), below the 9 that showed the gap.
    admitted, seeks = sequencer.admit([raw(0, 8), raw(0, 9), raw(0, 10)], checkpoint, 2)
    assert offsets(admitted) == [(0, 8), (0, 9), (0, 10)] and seeks == []


def test_sequencer_lets_a_fresh_partition_start_anywhere_and_replays_through() -> None:
    sequencer = Sequencer()
    admitted, seeks = sequencer.admit([raw(0, 40), raw(0, 41)], {}, 0)  # no checkpoint
    assert offsets(admitted) == [(0, 40), (0, 41)] and seeks == []
    # Offsets a checkpoint covers pass here; ingest skips them as replays.
    admitted, _ = sequencer.admit([raw(0, 2), raw(0, 3)], {"raw:0": 4}, 0)
    assert offsets(admitted) == [(0, 2), (0, 3)]


def test_with_states_duplicates_late_and_replays_are_told_apart() -> None:
    from touchstream.streams.eventtime import SourceState

    states = {"cx.feedback.v1:2": SourceState("cx.feedback.v1:2", allowed_lateness_s=600)}
    first = wire("nps_response", occurred_at="2026-11-02T12:00:00+00:00")
    later = wire("csat_response", occurred_at="2026-11-02T12:30:00+00:00")
    late = wire("nps_response", occurred_at="2026-11-02T12:19:59+00:00")
    batch = [
        msg(0, json.dumps(first).encode()),
        msg(1, json.dumps(later).encode()),
        msg(2, json.dumps(first).encode()),  # a re-sent duplicate
        msg(3, json.dumps(late).encode()),  # 10 min 1 s behind the newest
        msg(4, b"{oops"),
    ]
    received = NOW + timedelta(hours=1)  # after every event: none is in the future
    result = ingest(batch, received, 64 * 1024, None, states)
    assert [e.event_type for e in result.events] == [
        "nps_response",
        "csat_response",
        "nps_response",
    ]
    assert result.on_time == [True, True, False]
    assert result.duplicates == {"cx.feedback.v1": 1} and result.late == {"cx.feedback.v1": 1}
    assert {c.offset for c in result.contributions} == {0, 1}  # the late one counts nowhere
    assert all(c.source == "cx.feedback.v1:2" for c in result.contributions)
    states["cx.feedback.v1:2"].checkpoint()
    again = ingest(batch, received, 64 * 1024, None, states)  # a restart replays it
    assert again.replayed == 5 and again.events == [] and again.dead_letters == []


def test_a_held_source_is_asked_again_by_the_clock_alone() -> None:
    sequencer = Sequencer(retry_s=5)
    sequencer.admit([raw(0, 9)], {"raw:0": 5}, 0)
    assert sequencer.held("raw:0")
    assert sequencer.due(4) == []
    assert sequencer.due(5) == [("raw", 0, 5)]  # no message needed to ask again
    assert sequencer.due(6) == []
