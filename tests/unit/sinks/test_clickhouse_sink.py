from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.samples import PROPERTIES, wire
from touchstream.schemas import Invalid, parse_object
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks import rows
from touchstream.sinks.base import BackpressureError, SinkWriteError, SourceRecord
from touchstream.sinks.clickhouse import ClickHouseSink, default_routes
from touchstream.sinks.migrate import migrate
from touchstream.streams.ingest import forwarded

TOPICS = {"events": "ev", "kpis": "kp", "dead_letters": "dl", "alerts": "al"}
NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


class FlakyClient:
    """The real client, with the next ``fail`` inserts refused (fault injection);
    ``calls`` names each insert method called."""

    def __init__(self, real: Any, fail: int = 0) -> None:
        self.real = real
        self.fail = fail
        self.calls: list[str] = []

    def _refuse(self, method: str) -> None:
        self.calls.append(method)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("ClickHouse went away")

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse("insert")
        return self.real.insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse("raw_insert")
        return self.real.raw_insert(*args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.query(*args, **kwargs)

    def close(self) -> None:
        return None


@pytest.fixture
def database(ch: Any) -> str:
    name = f"s_{uuid.uuid4().hex[:8]}"
    migrate(ch, name)
    return name


def make_sink(client: Any, database: str, registry: CollectorRegistry, **kw: Any) -> ClickHouseSink:
    sink = ClickHouseSink(
        lambda: client, database, default_routes(TOPICS), sink_metrics.create(registry), **kw
    )
    sink.setup()
    return sink


def event_record(offset: int, event_type: str = "page_view", **envelope: Any) -> SourceRecord:
    event = parse_object(wire(event_type, **envelope))
    assert not isinstance(event, type(None))
    value = event.model_copy(update={"received_at": NOW}).model_dump_json(exclude_none=True)  # type: ignore[union-attr]
    return SourceRecord("ev", 0, offset, b"c-1", value.encode())


def count(ch: Any, sql: str) -> int:
    return int(ch.query(sql).result_rows[0][0])


def test_rows_land_with_typed_columns(ch: Any, database: str) -> None:
    registry = CollectorRegistry()
    sink = make_sink(ch, database, registry)
    sink.add(event_record(0, "order_placed"))
    sink.add(event_record(1, "nps_response"))
    assert sink.buffered == 2
    assert sink.flush() == {("ev", 0): 2}
    rows = ch.query(
        f"SELECT event_type, order_id, score, channel, received_at FROM {database}.events "
        "ORDER BY event_type"
    ).result_rows
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("nps_response", "ord-1", 9, "web"),
        ("order_placed", "ord-1", None, "web"),
    ]
    received = rows[0][4]  # naive from this client: the column is UTC
    assert (received if received.tzinfo else received.replace(tzinfo=UTC)) == NOW
    assert (
        registry.get_sample_value("touchstream_sink_rows_written_total", {"table": "events"}) == 2
    )


def test_a_failed_flush_keeps_the_batch_and_commits_nothing(ch: Any, database: str) -> None:
    registry = CollectorRegistry()
    client = FlakyClient(ch, fail=2)  # the raw insert, then the same rows mapped
    sink = make_sink(client, database, registry)
    for offset in range(3):
        sink.add(event_record(offset))
    with pytest.raises(SinkWriteError, match="went away"):
        sink.flush()
    assert sink.buffered == 3
    assert count(ch, f"SELECT count() FROM {database}.events") == 0
    assert sink.flush() == {("ev", 0): 3}
    assert count(ch, f"SELECT count() FROM {database}.events") == 3
    assert registry.get_sample_value("touchstream_sink_insert_failures_total") == 1
    assert client.calls == ["raw_insert", "insert", "insert"]


def forwarded_records() -> list[SourceRecord]:
    """The worker's forwarded events (streams/ingest.py), one per event type, with
    either identity, extra properties, text outside ASCII and a late one."""
    events = [parse_object(wire(t)) for t in PROPERTIES]
    events += [
        parse_object(wire("page_view", customer_id=None, session_id=None)),
        parse_object(wire("product_view", anonymous_id=None, channel="mobile_app")),
        parse_object(
            wire("comment", properties={"text": "très lent, 配送", "colour": {"a": [1, 2.5]}})
        ),
    ]
    out = []
    for offset, event in enumerate(events):
        assert not isinstance(event, Invalid)
        value = forwarded(event, NOW + timedelta(microseconds=offset), late=offset == 3)
        out.append(SourceRecord("ev", 0, offset, event.identity.encode(), value))
    return out


def test_forwarded_events_land_as_the_row_mapper_maps_them(ch: Any, database: str) -> None:
    """The raw path (JSONEachRow, ClickHouse parses) and the mapper give the same
    rows, identity and properties included."""
    client = FlakyClient(ch)
    raw = make_sink(client, database, CollectorRegistry())
    mapped_db = f"s_{uuid.uuid4().hex[:8]}"
    migrate(ch, mapped_db)
    routes = {
        topic: dataclasses.replace(route, raw=None)
        for topic, route in default_routes(TOPICS).items()
    }
    mapped = ClickHouseSink(lambda: ch, mapped_db, routes, sink_metrics.create(CollectorRegistry()))
    mapped.setup()
    records = forwarded_records()
    for record in records:
        raw.add(record)
        mapped.add(record)
    assert raw.flush() == mapped.flush() == {("ev", 0): len(records)}
    assert client.calls == ["raw_insert"]
    query = "SELECT * EXCEPT inserted_at FROM {}.events ORDER BY event_id"
    landed = ch.query(query.format(database)).result_rows
    assert landed == ch.query(query.format(mapped_db)).result_rows
    assert len(landed) == len(records)
    by_type = {
        row[1]: dict(zip(rows.EVENT_COLUMNS, row, strict=False))
        for row in ch.query(
            f"SELECT {', '.join(rows.EVENT_COLUMNS)} FROM {database}.events"
        ).result_rows
    }
    assert by_type["page_view"]["identity"] == "c-1"
    assert count(ch, f"SELECT count() FROM {database}.events WHERE identity = 'a-1'") == 1
    assert count(ch, f"SELECT sum(late) FROM {database}.events") == 1
    comment = ch.query(
        f"SELECT properties FROM {database}.events WHERE properties LIKE '%colour%'"
    ).result_rows[0][0]
    assert json.loads(comment) == {"text": "très lent, 配送", "colour": {"a": [1, 2.5]}}
    assert json.loads(by_type["order_placed"]["properties"])["items"][0]["price"] == "19.90"


def test_a_raw_batch_clickhouse_refuses_is_mapped_row_by_row(ch: Any, database: str) -> None:
    registry = CollectorRegistry()
    client = FlakyClient(ch)
    sink = make_sink(client, database, registry)
    good = forwarded_records()[:2]
    bad = SourceRecord("ev", 0, 2, None, b'{"event_id":"not-a-uuid","event_type":"page_view"}')
    for record in [*good, bad]:
        sink.add(record)
    assert sink.flush() == {("ev", 0): 3}
    assert client.calls == ["raw_insert", "insert", "insert"]  # events, then the dead letter
    assert count(ch, f"SELECT count() FROM {database}.events") == 2
    assert ch.query(f"SELECT reason, source_offset FROM {database}.dead_letters").result_rows == [
        ("sink_rejected", 2)
    ]
    assert (
        registry.get_sample_value("touchstream_sink_raw_batches_mapped_total", {"table": "events"})
        == 1
    )
    assert registry.get_sample_value("touchstream_sink_rows_rejected_total", {"topic": "ev"}) == 1
    assert sink.buffered == 0


def test_before_the_migration_raw_rows_go_through_the_mapper(ch: Any, database: str) -> None:
    """A sink rolled out before `touchstream migrate` added identity's default still
    stores the identity: it maps the rows itself."""
    ch.command(
        "ALTER TABLE {db:Identifier}.events MODIFY COLUMN identity REMOVE DEFAULT",
        parameters={"db": database},
    )
    ch.command(
        "DELETE FROM {db:Identifier}.schema_migrations WHERE version = 4",
        parameters={"db": database},
    )
    client = FlakyClient(ch)
    sink = make_sink(client, database, CollectorRegistry())
    for record in forwarded_records()[:3]:
        sink.add(record)
    sink.flush()
    assert client.calls == ["insert"]
    assert count(ch, f"SELECT countIf(identity = 'c-1') FROM {database}.events") == 3


def test_a_batch_resent_after_an_unacknowledged_insert_does_not_duplicate(
    ch: Any, database: str
) -> None:
    registry = CollectorRegistry()
    records = [event_record(offset) for offset in range(5)]
    first = make_sink(ch, database, registry)
    for record in records:
        first.add(record)
    first.flush()
    # The same records again (the commit was lost): same offsets → same token.
    again = make_sink(ch, database, CollectorRegistry())
    for record in records:
        again.add(record)
    again.flush()
    assert count(ch, f"SELECT count() FROM {database}.events") == 5


def test_a_duplicate_event_collapses_by_event_id(ch: Any, database: str) -> None:
    sink = make_sink(ch, database, CollectorRegistry())
    record = event_record(0)
    sink.add(record)
    sink.flush()
    sink.add(SourceRecord("ev", 0, 7, record.key, record.value))  # re-delivered elsewhere
    sink.flush()
    assert count(ch, f"SELECT count() FROM {database}.events FINAL") == 1


def test_unmappable_records_become_dead_letters_not_losses(ch: Any, database: str) -> None:
    registry = CollectorRegistry()
    sink = make_sink(ch, database, registry)
    sink.add(SourceRecord("ev", 1, 4, None, b'{"event_type": "page_view"}'))
    assert sink.flush() == {("ev", 1): 5}
    row = ch.query(
        f"SELECT reason, source_topic, source_offset, payload FROM {database}.dead_letters"
    ).result_rows[0]
    assert row == ("sink_rejected", "ev", 4, '{"event_type": "page_view"}')
    assert registry.get_sample_value("touchstream_sink_rows_rejected_total", {"topic": "ev"}) == 1


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"kpi": "nps", "version": 1', b'{"kpi": "\xff"}', b"[1, 2]", b""],
)
def test_mapped_records_that_do_not_decode_become_dead_letters(
    ch: Any, database: str, value: bytes
) -> None:
    """The mappers decode with orjson: what it refuses (not JSON, cut short, invalid
    UTF-8, not an object, empty) is the sink's dead letter, and the rest of the
    batch lands."""
    registry = CollectorRegistry()
    sink = make_sink(ch, database, registry)
    sink.add(SourceRecord("kp", 0, 3, None, value))
    sink.add(event_record(0))
    assert sink.flush() == {("kp", 0): 4, ("ev", 0): 1}
    assert ch.query(f"SELECT reason, source_topic FROM {database}.dead_letters").result_rows == [
        ("sink_rejected", "kp")
    ]
    assert count(ch, f"SELECT count() FROM {database}.events") == 1
    assert registry.get_sample_value("touchstream_sink_rows_rejected_total", {"topic": "kp"}) == 1


def test_kpi_updates_keep_the_latest_version(ch: Any, database: str) -> None:
    sink = make_sink(ch, database, CollectorRegistry())
    base = {
        "kpi": "nps",
        "channel": "web",
        "touchpoint": "delivery",
        "window_start": "2026-11-02T09:00:00Z",
        "window_end": "2026-11-02T10:00:00Z",
        "window_size_s": 3600,
        "counts": {"responses": 2},
        "updated_at": "2026-11-02T09:10:00Z",
    }
    for offset, (version, numerator, value) in enumerate([(2, 1, 50.0), (1, 0, 0.0)]):
        update = {
            **base,
            "version": version,
            "numerator": numerator,
            "denominator": 2,
            "value": value,
        }
        sink.add(SourceRecord("kp", 0, offset, None, json.dumps(update).encode()))
    sink.flush()
    rows = ch.query(
        f"SELECT numerator, value, version FROM {database}.kpi_touchpoint FINAL"
    ).result_rows
    assert rows == [(1.0, 50.0, 2)]


def test_backpressure_is_a_typed_error(ch: Any, database: str) -> None:
    registry = CollectorRegistry()
    sink = make_sink(ch, database, registry, max_buffered=3)
    sink.add(event_record(0))
    with pytest.raises(BackpressureError):
        sink.add_many(event_record(offset) for offset in (1, 2, 3))
    # What came before the limit is buffered, its offsets committed by the next flush.
    assert sink.buffered == 3
    assert registry.get_sample_value("touchstream_sink_buffered_rows") == 3
    assert sink.flush() == {("ev", 0): 3}
    assert registry.get_sample_value("touchstream_sink_buffered_rows") == 0


def test_alert_updates_keep_the_latest_status(ch: Any, database: str) -> None:
    from touchstream.streams.alerts import AlertBook, raise_alert

    feedback = parse_object(wire("nps_response", properties={"score": 2, "comment": "late"}))
    assert not isinstance(feedback, type(None))
    raised = raise_alert(feedback, NOW)  # type: ignore[arg-type]
    assert raised is not None
    book = AlertBook(sla_s=3600)
    book.add(raised)
    [overdue] = book.overdue(NOW + timedelta(days=2))
    sink = make_sink(ch, database, CollectorRegistry())
    for offset, alert in enumerate([raised, overdue]):
        sink.add(SourceRecord("al", 0, offset, None, alert.model_dump_json().encode()))
    sink.flush()
    rows = ch.query(
        f"SELECT status, kind, score, text, version FROM {database}.alerts FINAL"
    ).result_rows
    assert rows == [("overdue", "nps_detractor", 2, "late", 2)]
