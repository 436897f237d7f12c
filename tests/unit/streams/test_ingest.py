from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.samples import wire
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
