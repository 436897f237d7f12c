"""The sink contract (after quix-streams' sinks/base/sink.py).

connect in ``setup()``, never in ``__init__``; buffer in ``add()``; write in
``flush()``, which returns the offsets that are now safe to commit. A failed
flush raises and keeps the buffer, so the retry writes the identical batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from touchstream.schemas.records import KafkaRecord as Record

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class BackpressureError(RuntimeError):
    """The sink holds as much as it may; stop adding until a flush succeeds."""


class SinkWriteError(RuntimeError):
    """The destination refused or did not answer; the batch is kept for a retry."""


class Sink(ABC):
    @abstractmethod
    def setup(self) -> None: ...

    @abstractmethod
    def add(self, record: Record) -> None: ...

    def add_many(self, records: Iterable[Record]) -> None:
        """Records in order, as :meth:`add` each (a sink may do it in one go)."""
        for record in records:
            self.add(record)

    @abstractmethod
    def flush(self) -> dict[TopicPartition, int]:
        """Write everything buffered; returns {topic-partition: next offset to commit}."""

    @property
    @abstractmethod
    def buffered(self) -> int: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection (after a final flush by the caller)."""
