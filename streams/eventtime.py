"""Event time, pure: per-partition watermarks and the deduplication horizon.

A partition's watermark is the latest event time seen on it minus the allowed
lateness. An event older than the watermark is *late*: it is still stored raw,
counted as late, and changes no KPI window. Because a late event changes
nothing, deduplication only has to remember event ids back to the watermark:
an older duplicate is late anyway. That bounds the dedup state by the event
rate times the allowed lateness, with no separate retention knob.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


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
