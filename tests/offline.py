"""The worker's app without a broker: its outputs captured (:class:`Captured`,
in place of streams/outputs.py ``Outputs``) and its stages' intakes fed by hand
(:class:`Offline`, every partition owned). For tests/perf/stages.py, which runs
the stages on simulated traffic, and for unit tests of the worker's own glue
(emission, progress reports, rebalances)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

import touchstream.streams.app as worker_app
from touchstream.settings import Settings
from touchstream.streams.ingest import RawMessage
from touchstream.streams.intake import Batch, Intake, source_of
from touchstream.streams.outputs import Record, partition_of


class Captured:
    """Stands in for streams/outputs.py ``Outputs``: records what is sent, per topic
    and partition, with offsets as a broker would give them."""

    def __init__(self, settings: Settings) -> None:
        self.partitions = settings.kafka.partitions
        self.logs: dict[tuple[str, int], list[RawMessage]] = defaultdict(list)
        self.read: dict[tuple[str, int], int] = defaultdict(int)  # next unread offset
        self.bytes: Counter[str] = Counter()
        self.records: Counter[str] = Counter()
        self.sent: list[RawMessage] | None = None  # every record, in send order, if a list

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        if partition is None:
            partition = partition_of(key or b"", self.partitions)
        log = self.logs[(topic, partition)]
        log.append(RawMessage(topic, partition, len(log), key, value))
        if self.sent is not None:
            self.sent.append(log[-1])
        self.bytes[topic] += len(value or b"") + len(key or b"")
        self.records[topic] += 1

    async def send_many(self, topic: str, records: Iterable[Record]) -> None:
        for key, value, partition in records:
            await self.send(topic, value, key=key, partition=partition)

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def take(self, topic: str, max_records: int) -> list[RawMessage]:
        """Unread records of ``topic``, up to ``max_records``, an even share from each
        partition that has some (as a consumer's fetches interleave them: taking one
        partition to its end first ran its event time hours ahead of the others)."""
        out: list[RawMessage] = []
        while len(out) < max_records:
            pending = [
                p
                for p in range(self.partitions)
                if self.read[(topic, p)] < len(self.logs.get((topic, p), ()))
            ]
            if not pending:
                break
            share = max(1, -(-(max_records - len(out)) // len(pending)))
            for partition in pending:
                log = self.logs[(topic, partition)]
                start = self.read[(topic, partition)]
                chunk = log[start : start + min(share, max_records - len(out))]
                self.read[(topic, partition)] = start + len(chunk)
                out.extend(chunk)
        return out

    def end(self, tp: TopicPartition) -> int:
        return len(self.logs.get((tp.topic, tp.partition), ()))


class Offline(Intake[Any]):
    """An intake with no consumer: every partition of its topics owned, restored
    empty; highwater from the captured log (the progress reports need it)."""

    created: list[Offline] = []
    captured: Captured

    def __init__(self, settings: Settings, purpose: str, topics: Any, *args: Any, **kw: Any):
        super().__init__(settings, purpose, topics, *args, **kw)
        self.purpose = purpose
        self.topics = sorted(topics)
        self.owned = {
            TopicPartition(t, p) for t in self.topics for p in range(settings.kafka.partitions)
        }
        for tp in self.owned:
            self.states[source_of(tp)] = self._restore_state(tp, {})
        Offline.created.append(self)

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.captured.end(tp)

    async def handle(self, messages: list[RawMessage]) -> None:
        await self._handler(Batch(messages, [time.time()] * len(messages)))


def timer(app: Any, name: str) -> Callable[[], Awaitable[None]]:
    """One tick of a worker timer (not the loop around it)."""
    tick: Callable[[], Awaitable[None]] = app.ticks[f"touchstream.{name}"]
    return tick


Patch = Callable[[Any, str, Any], None]  # setattr, or pytest's monkeypatch.setattr


def offline_app(
    settings: Settings,
    on_crash: Callable[[int], None],
    registry: CollectorRegistry | None = None,
    patch: Patch = setattr,
) -> tuple[Any, Captured, dict[str, Offline]]:
    """The worker app with its outputs captured and its stages' intakes offline:
    (app, captured outputs, each stage's intake by purpose). ``patch`` swaps the
    app module's Outputs and Intake (a test passes monkeypatch.setattr, which puts
    them back)."""
    captured = Captured(settings)
    patch(Offline, "captured", captured)
    patch(Offline, "created", [])
    patch(worker_app, "Outputs", lambda _settings: captured)
    patch(worker_app, "Intake", Offline)
    app = worker_app.create_app(settings, registry=registry, on_crash=on_crash)
    return app, captured, {intake.purpose: intake for intake in Offline.created}
