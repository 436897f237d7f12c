from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.samples import wire
from touchstream.schemas import parse_object
from touchstream.schemas.pii import PREFIX, REDACTED, Pseudonymiser
from touchstream.streams.ingest import RawMessage, forwarded, ingest

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


def order_with_pii() -> dict[str, Any]:
    event = wire("order_placed")
    props = event["properties"]
    assert isinstance(props, dict)
    props["gift_email"] = "Gift@Example.com"
    props["meta"] = {"client_ip": "10.0.0.9", "source": "app", "already": PREFIX + "0" * 32}
    props["items"] = [
        props["items"][0],
        {**props["items"][0], "sku": "sku-2", "buyer_phone": "+44 20 7946 0000"},
    ]
    return event


def test_pii_in_extras_items_and_nested_is_pseudonymised_as_validating_again_would() -> None:
    """Only extra properties are walked and the event is copied: the same event as
    pseudonymising the whole wire form and validating it again."""
    pii = Pseudonymiser(b"0123456789abcdef")
    event = order_with_pii()
    (got,) = ingest([msg(0, json.dumps(event).encode())], NOW, 64 * 1024, pii).events
    data, found = pii.event(json.loads(json.dumps(event)))
    assert sorted(found) == ["gift_email", "items[1].buyer_phone", "meta.client_ip"]
    expected = parse_object(data)
    assert got == expected
    assert forwarded(got, NOW, late=False) == forwarded(expected, NOW, late=False)
    assert b"Example.com" not in got.model_dump_json().encode()
    assert b"7946" not in got.model_dump_json().encode()


def test_without_a_key_pii_in_an_order_item_is_refused_with_its_path() -> None:
    result = ingest([msg(0, json.dumps(order_with_pii()).encode())], NOW, 64 * 1024)
    assert result.events == [] and result.by_reason == {"unprotected_pii": 1}
    (issue,) = result.dead_letters[0][1].errors
    assert issue.field == "properties.items[1].buyer_phone"  # the items before the rest


def test_extras_without_pii_leave_the_event_as_it_is() -> None:
    event = wire("page_view")
    event["properties"] = {"url": "/", "campaign": {"name": "x"}, "contact": PREFIX + "0" * 32}
    pii = Pseudonymiser(b"0123456789abcdef")
    (got,) = ingest([msg(0, json.dumps(event).encode())], NOW, 64 * 1024, pii).events
    assert got.properties.model_extra == {"campaign": {"name": "x"}, "contact": PREFIX + "0" * 32}


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
