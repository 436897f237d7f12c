"""The ClickHouse sink: one buffer per table, columnar batches, idempotent retries.

Each flush inserts every table's rows with an ``insert_deduplication_token`` made
from the topic-partition offset ranges in it (as ClickHouse's Kafka Connect sink
does), so a retried batch that had in fact landed is dropped by ClickHouse; and
the tables are ReplacingMergeTree, so a record delivered twice collapses too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from touchstream.schemas import DeadLetter
from touchstream.sinks import rows
from touchstream.sinks.base import (
    BackpressureError,
    Sink,
    SinkWriteError,
    SourceRecord,
    TopicPartition,
)
from touchstream.sinks.metrics import SinkMetrics
from touchstream.sinks.rows import Row


@dataclass(frozen=True)
class Route:
    table: str
    columns: tuple[str, ...]
    mapper: rows.Mapper


@dataclass
class _Buffer:
    """One table's pending rows, kept column by column (inserted column-oriented)."""

    columns: tuple[str, ...]
    data: list[list[Any]] = field(default_factory=list)
    size: int = 0
    ranges: dict[TopicPartition, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = [[] for _ in self.columns]

    def add(self, row: Row, record: SourceRecord) -> None:
        for column, value in zip(self.data, row, strict=True):
            column.append(value)
        self.size += 1
        span = self.ranges.setdefault((record.topic, record.partition), [record.offset] * 2)
        span[1] = record.offset

    def token(self, table: str) -> str:
        spans = ";".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.ranges.items()))
        return hashlib.sha256(f"{table}|{spans}".encode()).hexdigest()


ROLES = ("events", "kpis", "dead_letters", "alerts")


def default_routes(topics: dict[str, str]) -> dict[str, Route]:
    """Topic name by role (see ROLES) → the table it fills."""
    return {
        topics["events"]: Route("events", rows.EVENT_COLUMNS, rows.event_row),
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
        self.routes = routes
        self.metrics = metrics
        self.max_buffered = max_buffered
        self._buffers: dict[str, _Buffer] = {}
        self._offsets: dict[TopicPartition, int] = {}
        self._count = 0

    def setup(self) -> None:
        self._client = self._client_factory()

    @property
    def buffered(self) -> int:
        return self._count

    def add(self, record: SourceRecord) -> None:
        if self._count >= self.max_buffered:
            raise BackpressureError(f"{self._count} rows buffered; flush first")
        route = self.routes[record.topic]
        try:
            row = route.mapper(record.value or b"")
            table, columns = route.table, route.columns
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Not silently dropped: kept, inspectable, as a dead letter of the sink.
            self.metrics.rows_rejected.labels(record.topic).inc()
            row = self._rejected(record, exc)
            table, columns = "dead_letters", rows.DEAD_LETTER_COLUMNS
        self._buffers.setdefault(table, _Buffer(columns)).add(row, record)
        self._offsets[(record.topic, record.partition)] = record.offset + 1
        self._count += 1
        self.metrics.buffered_rows.set(self._count)

    @staticmethod
    def _rejected(record: SourceRecord, exc: Exception) -> Row:
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
        for table, buffer in list(self._buffers.items()):
            if not buffer.size:
                continue
            try:
                self._client.insert(
                    table,
                    buffer.data,
                    column_names=list(buffer.columns),
                    database=self.database,
                    column_oriented=True,
                    settings={"insert_deduplication_token": buffer.token(table)},
                )
            except Exception as exc:  # the client's error types differ by backend
                self.metrics.insert_failures.inc()
                raise SinkWriteError(f"insert into {self.database}.{table} failed: {exc}") from exc
            self.metrics.rows_written.labels(table).inc(buffer.size)
            del self._buffers[table]  # landed: a retry must not send it again
        offsets, self._offsets = self._offsets, {}
        if self._count:
            self.metrics.batch_rows.observe(self._count)
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
        self._count = 0
        self.metrics.buffered_rows.set(0)
        return offsets

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
