"""Simulated data fed through the real sink into a fresh database, for the query tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry

from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.schemas import Invalid, parse_object
from touchstream.schemas.events import AnyEvent
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks.base import SourceRecord
from touchstream.sinks.clickhouse import ClickHouseSink, default_routes
from touchstream.sinks.migrate import migrate

TOPICS = {"events": "ev", "kpis": "kp", "dead_letters": "dl", "alerts": "al"}


def simulated_events(
    config: SimulationConfig, received_at: Callable[[int], datetime]
) -> tuple[list[dict[str, Any]], list[AnyEvent]]:
    """The simulator's wire events, and the same validated, the n-th one received
    at received_at(n)."""
    wires = list(Simulator(config).events())
    events: list[AnyEvent] = []
    for n, wire in enumerate(wires):
        parsed = parse_object(wire)
        assert not isinstance(parsed, Invalid), parsed
        events.append(parsed.model_copy(update={"received_at": received_at(n)}))
    return wires, events


class Feeder:
    """A migrated database (name prefixed by ``prefix``) and the sink that fills it."""

    def __init__(self, ch: Any, prefix: str) -> None:
        self.database = f"{prefix}_{uuid.uuid4().hex[:8]}"
        migrate(ch, self.database)
        self.sink = ClickHouseSink(
            lambda: ch,
            self.database,
            default_routes(TOPICS),
            sink_metrics.create(CollectorRegistry()),
        )
        self.sink.setup()
        self._offset = 0

    def send(self, topic: str, value: bytes) -> None:
        self.sink.add(SourceRecord(topic, 0, self._offset, None, value))
        self._offset += 1
