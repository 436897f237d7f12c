from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.samples import wire
from touchstream.schemas.pii import PREFIX, REDACTED, Pseudonymiser
from touchstream.streams.ingest import RawMessage, ingest

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
    assert all(e.received_at == NOW for e in result.events)
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
