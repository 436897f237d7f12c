"""The ClickHouse sink: one buffer per table, columnar batches, idempotent retries.

Each flush inserts every table's rows with an ``insert_deduplication_token`` made
from the topic-partition offset ranges in it (as ClickHouse's Kafka Connect sink
does), so a retried batch that had in fact landed is dropped by ClickHouse; and
the tables are ReplacingMergeTree, so a record delivered twice collapses too.

A route with a :class:`RawFormat` (the forwarded events: ~96 % of the rows) sends
its records' JSON as it came, ``JSONEachRow``, for ClickHouse to parse: mapping
each row in Python cost the sink ~30 µs of its ~80 µs per event here. A raw batch
ClickHouse refuses goes through the route's mapper, row by row, so a record it
cannot take becomes a dead letter as on the row path, never a loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.compression import get_compressor

from touchstream.schemas import DeadLetter
from touchstream.sinks import rows
from touchstream.sinks.base import (
    BackpressureError,
    Record,
    Sink,
    SinkWriteError,
    TopicPartition,
)
from touchstream.sinks.metrics import SinkMetrics
from touchstream.sinks.migrate import applied, quote_identifier
from touchstream.sinks.rows import Row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawFormat:
    """Records a table takes as they are: each value one JSON object whose fields
    are ``columns`` (missing ones get the column's default), inserted
    ``JSONEachRow`` with ``settings``. A value that does not begin with ``begins``
    is not what the route expects: it goes through the mapper instead."""

    columns: tuple[str, ...]
    begins: bytes
    settings: dict[str, Any] = field(default_factory=dict)
    migration: int = 0  # the schema migration the raw rows need (0: none)


@dataclass(frozen=True)
class Route:
    table: str
    columns: tuple[str, ...]
    mapper: rows.Mapper
    raw: RawFormat | None = None


@dataclass
class _Buffer:
    """One table's pending rows, kept column by column (inserted column-oriented);
    with ``raw``, the records themselves (inserted as they came). ``fixed_token``:
    rows mapped from a raw batch ClickHouse refused keep that batch's token."""

    table: str
    columns: tuple[str, ...]
    raw: RawFormat | None = None
    fixed_token: str | None = None
    data: list[list[Any]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    size: int = 0
    ranges: dict[TopicPartition, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = [[] for _ in self.columns]

    def add(self, row: Row | None, record: Record) -> None:
        if row is None:
            self.records.append(record)
        else:
            for column, value in zip(self.data, row, strict=True):
                column.append(value)
        self.size += 1
        span = self.ranges.setdefault((record.topic, record.partition), [record.offset] * 2)
        span[1] = record.offset

    def token(self) -> str:
        if self.fixed_token is not None:
            return self.fixed_token
        spans = ";".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.ranges.items()))
        return hashlib.sha256(f"{self.table}|{spans}".encode()).hexdigest()


ROLES = ("events", "kpis", "dead_letters", "alerts")


# The worker's forwarded events (streams/ingest.py ``forwarded``): the envelope's
# fields, ``properties`` as an object (read into its String column as JSON text),
# ``received_at`` and ``late`` (absent: 0); ``identity`` is the column's default
# (migration 0004). ISO 8601 times with zone: best_effort parses them.
EVENTS_RAW = RawFormat(
    columns=tuple(c for c in rows.EVENT_COLUMNS if c != "identity"),
    begins=b'{"event_id":"',
    settings={
        "input_format_json_read_objects_as_strings": 1,
        "date_time_input_format": "best_effort",
        "input_format_skip_unknown_fields": 1,  # as the mapper: extra fields ignored
    },
    migration=4,
)


def default_routes(topics: dict[str, str]) -> dict[str, Route]:
    """Topic name by role (see ROLES) → the table it fills."""
    return {
        topics["events"]: Route("events", rows.EVENT_COLUMNS, rows.event_row, EVENTS_RAW),
        topics["kpis"]: Route("kpi_touchpoint", rows.KPI_COLUMNS, rows.kpi_row),
        topics["dead_letters"]: Route(
            "dead_letters", rows.DEAD_LETTER_COLUMNS, rows.dead_letter_row
        ),
        topics["alerts"]: Route("alerts", rows.ALERT_COLUMNS, rows.alert_row),
    }


class ClickHouseSink(Sink):
    def __init__(
        self,
        client_factory: Callable[[], Any],
        database: str,
        routes: dict[str, Route],
        metrics: SinkMetrics,
        max_buffered: int = 200_000,
    ) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self.database = database
        self.routes = dict(routes)
        self.metrics = metrics
        self.max_buffered = max_buffered
        self._buffers: dict[str, _Buffer] = {}
        self._offsets: dict[TopicPartition, int] = {}
        self._count = 0

    def setup(self) -> None:
        self._client = self._client_factory()
        if any(r.raw is not None and r.raw.migration for r in self.routes.values()):
            try:
                done = applied(self._client, self.database)
            except Exception:  # noqa: BLE001 - no schema_migrations yet: nothing applied
                done = set()
            for topic, route in list(self.routes.items()):
                if route.raw is not None and route.raw.migration not in done | {0}:
                    # A sink rolled out before `touchstream migrate`: rows still land
                    # right, through the mapper, until the schema has what raw needs.
                    log.warning(
                        "migration %04d is not applied to %s: %s rows are mapped in Python "
                        "(run `touchstream migrate`)",
                        route.raw.migration,
                        self.database,
                        route.table,
                    )
                    self.routes[topic] = replace(route, raw=None)

    @property
    def buffered(self) -> int:
        return self._count

    def add(self, record: Record) -> None:
        self.add_many((record,))

    def add_many(self, records: Iterable[Record]) -> None:
        try:
            for record in records:
                if self._count >= self.max_buffered:
                    raise BackpressureError(f"{self._count} rows buffered; flush first")
                route = self.routes[record.topic]
                raw = route.raw
                if raw is not None and (record.value or b"").startswith(raw.begins):
                    name = f"{route.table} raw"
                    buffer = self._buffers.get(name)
                    if buffer is None:
                        buffer = self._buffers[name] = _Buffer(route.table, raw.columns, raw)
                    buffer.add(None, record)
                else:
                    self._add_row(route, record, self._buffers)
                self._offsets[(record.topic, record.partition)] = record.offset + 1
                self._count += 1
        finally:  # once per call: a gauge's set costs about as much as the rest
            self.metrics.buffered_rows.set(self._count)

    def _add_row(
        self,
        route: Route,
        record: Record,
        buffers: dict[str, _Buffer],
        token: str | None = None,
    ) -> None:
        """The record mapped to its table's row, or to a dead letter of the sink."""
        try:
            row = route.mapper(record.value or b"")
            table, columns = route.table, route.columns
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Not silently dropped: kept, inspectable, as a dead letter of the sink.
            self.metrics.rows_rejected.labels(record.topic).inc()
            row = self._rejected(record, exc)
            table, columns = "dead_letters", rows.DEAD_LETTER_COLUMNS
            token = None  # its own batch: a token names one table's rows
        if table not in buffers:
            buffers[table] = _Buffer(table, columns, fixed_token=token)
        buffers[table].add(row, record)

    @staticmethod
    def _rejected(record: Record, exc: Exception) -> Row:
        payload, encoding = DeadLetter.encode_payload(record.value or b"")
        issue = [{"field": "", "reason": f"{type(exc).__name__}: {exc}"[:500], "kind": "sink"}]
        return (
            "sink_rejected",
            "",
            "",
            json.dumps(issue),
            record.topic,
            record.partition,
            record.offset,
            payload,
            encoding,
            len(record.value or b""),
            datetime.now(UTC),
        )

    def flush(self) -> dict[TopicPartition, int]:
        if self._client is None:
            raise RuntimeError("setup() first")
        started = time.perf_counter()
        names = list(self._buffers)
        for name in names:  # grows when a refused raw batch is mapped row by row
            buffer = self._buffers[name]
            try:
                self._insert(buffer)
            except Exception as exc:  # the client's error types differ by backend
                if buffer.raw is not None:
                    names += self._mapped(name, buffer, exc)
                    continue
                self.metrics.insert_failures.inc()
                raise SinkWriteError(
                    f"insert into {self.database}.{buffer.table} failed: {exc}"
                ) from exc
            self.metrics.rows_written.labels(buffer.table).inc(buffer.size)
            del self._buffers[name]  # landed: a retry must not send it again
        offsets, self._offsets = self._offsets, {}
        if self._count:
            self.metrics.batch_rows.observe(self._count)
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
        self._count = 0
        self.metrics.buffered_rows.set(0)
        return offsets

    def _insert(self, buffer: _Buffer) -> None:
        settings: dict[str, Any] = {"insert_deduplication_token": buffer.token()}
        if buffer.raw is None:
            self._client.insert(
                buffer.table,
                buffer.data,
                column_names=list(buffer.columns),
                database=self.database,
                column_oriented=True,
                settings=settings,
            )
            return
        block = b"\n".join(record.value or b"" for record in buffer.records)
        # Compressed as the client compresses its own inserts (none for chDB).
        compression = getattr(self._client, "write_compression", None)
        if compression in ("lz4", "zstd"):
            block = bytes(get_compressor(compression).compress_block(block))
        else:
            compression = None
        self._client.raw_insert(
            f"{quote_identifier(self.database)}.{quote_identifier(buffer.table)}",
            list(buffer.columns),
            insert_block=block,
            settings={**buffer.raw.settings, **settings},
            fmt="JSONEachRow",
            compression=compression,
        )

    def _mapped(self, name: str, buffer: _Buffer, exc: Exception) -> list[str]:
        """A raw batch ClickHouse refused, mapped row by row in its place (same
        token: had it landed after all, the mapped rows are dropped as a repeat);
        the names of the buffers to insert now."""
        self.metrics.raw_batches_mapped.labels(buffer.table).inc()
        log.warning(
            "ClickHouse refused a raw batch of %d rows for %s (%s); mapping it row by row",
            buffer.size,
            buffer.table,
            str(exc)[:300],
        )
        mapped: dict[str, _Buffer] = {}
        token = buffer.token()
        for record in buffer.records:
            self._add_row(self.routes[record.topic], record, mapped, token=token)
        del self._buffers[name]
        names = []
        for table, rows_buffer in mapped.items():
            names.append(f"{name} mapped to {table}")
            self._buffers[names[-1]] = rows_buffer
        return names

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
