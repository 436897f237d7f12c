"""Event time, pure: per-partition watermarks and the deduplication horizon.

A partition's watermark is the latest event time seen on it minus the allowed
lateness. An event older than the watermark is *late*: it is still stored raw,
counted as late, and changes no KPI window. Because a late event changes
nothing, deduplication only has to remember event ids back to the watermark:
an older duplicate is late anyway. That bounds the dedup state by the event
rate times the allowed lateness, with no separate retention knob.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import struct
import uuid
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Watermark:
    """One partition's event-time progress (epoch seconds)."""

    allowed_lateness_s: float
    max_event_time: float = float("-inf")

    @property
    def value(self) -> float:
        return self.max_event_time - self.allowed_lateness_s

    def is_late(self, at: float) -> bool:
        return at < self.value

    def observe(self, at: float) -> None:
        if at > self.max_event_time:
            self.max_event_time = at


@dataclass
class Deduplicator:
    """Event ids seen on one partition, forgotten once older than its watermark."""

    _seen: dict[str, float] = field(default_factory=dict)
    _by_time: list[tuple[float, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, event_id: str, at: float) -> bool:
        """True the first time ``event_id`` is offered; False for a duplicate."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = at
        heapq.heappush(self._by_time, (at, event_id))
        return True

    def forget_before(self, watermark: float) -> int:
        """Drop ids whose event time is before the watermark; returns how many."""
        dropped = 0
        while self._by_time and self._by_time[0][0] < watermark:
            _, event_id = heapq.heappop(self._by_time)
            del self._seen[event_id]
            dropped += 1
        return dropped


def id_hash(event_id: object) -> int:
    """64 bits of an event id (BLAKE2b of its 16 bytes): 8 bytes of state per id.
    Hashed, not truncated: time-based UUIDs share their low bits per host."""
    data = event_id.bytes if isinstance(event_id, uuid.UUID) else str(event_id).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


Verdict = Literal["duplicate", "late", "on_time"]


@dataclass
class SourceState:
    """What ingest remembers of one raw source partition, and how it survives a restart.

    - ``next_offset``: every message before it has been fully handled (its outputs
      flushed) and is skipped when a restart replays it;
    - the watermark (newest event time seen minus the allowed lateness): older
      events are *late*;
    - the ids of on-time events back to the watermark, by 64-bit hash, grouped in
      one record per batch, so a batch checkpoints only its new ids and a record
      is dropped (a tombstone) once all its events are behind the watermark.

    Checkpoints are ``(key, value or None)`` pairs for a compacted topic; the
    state is rebuilt from the latest value of every key (:meth:`restore`).
    Outputs are flushed before the checkpoint that covers them is written, so a
    crash in between replays the batch, which produces the same outputs again:
    downstream is idempotent for them (event ids, KPI offsets, alert ids).
    """

    source: str
    allowed_lateness_s: float
    next_offset: int = 0
    max_event_time: float = float("-inf")
    _seen: set[int] = field(default_factory=set)
    _records: dict[str, tuple[float, list[int]]] = field(default_factory=dict)
    _pending: list[int] = field(default_factory=list)
    _pending_max: float = float("-inf")
    _pending_first: int | None = None

    @property
    def watermark(self) -> float:
        return self.max_event_time - self.allowed_lateness_s

    def __len__(self) -> int:
        return len(self._seen)

    def applied(self, offset: int) -> bool:
        """True for a message a checkpoint already covers (a replay after a restart)."""
        return offset < self.next_offset

    def observe(self, offset: int, event_id: object, at: float) -> Verdict:
        """Classify the event at ``offset`` and remember it. Call in offset order."""
        if self._pending_first is None:
            self._pending_first = offset
        self.next_offset = max(self.next_offset, offset + 1)
        digest = id_hash(event_id)
        if digest in self._seen:
            return "duplicate"
        if at < self.watermark:
            return "late"
        self._seen.add(digest)
        self._pending.append(digest)
        self._pending_max = max(self._pending_max, at)
        self.max_event_time = max(self.max_event_time, at)
        return "on_time"

    def skip(self, offset: int) -> None:
        """A message that is not an event (a dead letter) still moves the offset."""
        if self._pending_first is None:
            self._pending_first = offset
        self.next_offset = max(self.next_offset, offset + 1)

    def checkpoint(self) -> list[tuple[str, bytes | None]]:
        """Records for the batch observed since the last checkpoint, and tombstones
        for id records now entirely behind the watermark."""
        out: list[tuple[str, bytes | None]] = []
        if self._pending:
            key = f"{self.source}|ids|{self._pending_first:020d}"
            self._records[key] = (self._pending_max, self._pending)
            blob = struct.pack(f"<{len(self._pending)}Q", *self._pending)
            value = {"max": self._pending_max, "ids": base64.b64encode(blob).decode()}
            out.append((key, json.dumps(value).encode()))
        for key, (newest, ids) in list(self._records.items()):
            if newest < self.watermark:
                del self._records[key]
                self._seen.difference_update(ids)
                out.append((key, None))
        head = {"next": self.next_offset, "max": self.max_event_time}
        if self.next_offset > 0:
            out.append((f"{self.source}|head", json.dumps(head).encode()))
        self._pending, self._pending_max, self._pending_first = [], float("-inf"), None
        return out

    @classmethod
    def restore(
        cls, source: str, allowed_lateness_s: float, records: dict[str, bytes | None]
    ) -> SourceState:
        """The state from the latest value of each of its keys (None = deleted)."""
        state = cls(source, allowed_lateness_s)
        head = records.get(f"{source}|head")
        if head is not None:
            data = json.loads(head)
            state.next_offset = int(data["next"])
            state.max_event_time = float(data["max"])
        prefix = f"{source}|ids|"
        for key, value in records.items():
            if not key.startswith(prefix) or value is None:
                continue
            data = json.loads(value)
            blob = base64.b64decode(data["ids"])
            ids = list(struct.unpack(f"<{len(blob) // 8}Q", blob))
            state._records[key] = (float(data["max"]), ids)
            state._seen.update(ids)
        return state
