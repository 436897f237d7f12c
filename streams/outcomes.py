"""Abandonment, pure: an entity (a checkout, a cart) starts, moves through
touchpoints, and is either completed within a timeout or abandoned.

PRODUCT.md, checkout abandonment: a checkout started with no order_placed for it
within the timeout (event time) is abandoned; each *decided* checkout counts
once, in the windows containing its start, under the channel of its start and
the touchpoint of its last start/step event before the outcome.

Decisions wait for the watermark, so out-of-order input within the allowed
lateness cannot change them afterwards:
- completed when the completion (at t, t - start <= timeout) is known and the
  watermark has reached t;
- abandoned when the watermark has reached start + timeout without such a
  completion (a completion after the timeout does not save it).
The outcome touchpoint is the last touchpoint at or before the outcome time
(t, or start + timeout).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Decision:
    entity_id: str
    channel: str
    touchpoint: str
    started_at: float
    abandoned: bool


@dataclass(slots=True)
class _Entity:
    started_at: float | None = None
    channel: str = ""
    completed_at: float | None = None
    # (event time, touchpoint) of the start and progress events, sorted by time.
    touches: list[tuple[float, str]] = field(default_factory=list)
    first_seen: float = 0.0


@dataclass
class OutcomeTracker:
    timeout_s: float
    _open: dict[str, _Entity] = field(default_factory=dict)
    _decided: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._open)

    def _entity(self, entity_id: str, at: float) -> _Entity | None:
        if entity_id in self._decided:
            return None  # stragglers of a decided entity change nothing
        entity = self._open.get(entity_id)
        if entity is None:
            entity = self._open[entity_id] = _Entity(first_seen=at)
        return entity

    def start(self, entity_id: str, channel: str, touchpoint: str, at: float) -> None:
        entity = self._entity(entity_id, at)
        if entity is None:
            return
        if entity.started_at is None or at < entity.started_at:
            entity.started_at = at
            entity.channel = channel
        bisect.insort(entity.touches, (at, touchpoint))

    def touch(self, entity_id: str, touchpoint: str, at: float) -> None:
        entity = self._entity(entity_id, at)
        if entity is not None:
            bisect.insort(entity.touches, (at, touchpoint))

    def complete(self, entity_id: str, at: float) -> None:
        entity = self._entity(entity_id, at)
        if entity is not None and (entity.completed_at is None or at < entity.completed_at):
            entity.completed_at = at

    def decide(self, watermark: float) -> list[Decision]:
        """Entities whose outcome the watermark settles now (each returned once)."""
        decided = []
        for entity_id, entity in list(self._open.items()):
            start = entity.started_at
            if start is None:
                # Progress without a start (its start was late or lost): it can never
                # be decided; forget it once a start could no longer be on time.
                if watermark >= entity.first_seen + self.timeout_s:
                    del self._open[entity_id]
                continue
            deadline = start + self.timeout_s
            done = entity.completed_at
            if done is not None and done <= deadline and watermark >= done:
                decided.append(self._decision(entity_id, entity, done, abandoned=False))
            elif watermark >= deadline:
                decided.append(self._decision(entity_id, entity, deadline, abandoned=True))
        return decided

    def _decision(self, entity_id: str, entity: _Entity, at: float, abandoned: bool) -> Decision:
        assert entity.started_at is not None  # noqa: S101 - checked by decide()
        index = bisect.bisect_right(entity.touches, (at, "\uffff")) - 1
        touchpoint = entity.touches[index][1] if index >= 0 else ""
        del self._open[entity_id]
        self._decided[entity_id] = at
        return Decision(entity_id, entity.channel, touchpoint, entity.started_at, abandoned)

    def forget_decided_before(self, watermark: float) -> None:
        """Decided ids are kept to ignore stragglers; drop those past all lateness."""
        for entity_id in [e for e, at in self._decided.items() if at < watermark]:
            del self._decided[entity_id]
