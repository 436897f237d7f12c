"""Ingest, pure: raw messages in, validated events, dead letters and KPI contributions out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from touchstream.schemas import DeadLetter, Invalid, parse_event
from touchstream.schemas.events import AnyEvent
from touchstream.streams.kpis import Contribution, contributions_of


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class IngestResult:
    """What a batch of raw messages became. Every input is in exactly one list."""

    events: list[AnyEvent] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # "topic:partition" of each event
    dead_letters: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    contributions: list[Contribution] = field(default_factory=list)
    by_reason: Counter[str] = field(default_factory=Counter)


def ingest(batch: list[RawMessage], received_at: datetime, max_bytes: int) -> IngestResult:
    result = IngestResult()
    for message in batch:
        raw = message.value or b""
        parsed = parse_event(raw, max_bytes)
        if isinstance(parsed, Invalid):
            payload, encoding = DeadLetter.encode_payload(raw[: max_bytes * 2])
            result.dead_letters.append(
                (
                    message.key,
                    DeadLetter(
                        reason=parsed.reason,
                        event_type=parsed.event_type,
                        event_id=parsed.event_id,
                        errors=list(parsed.errors),
                        source_topic=message.topic,
                        source_partition=message.partition,
                        source_offset=message.offset,
                        payload=payload,
                        payload_encoding=encoding,
                        original_size=len(raw),
                        received_at=received_at,
                    ),
                )
            )
            result.by_reason[parsed.reason] += 1
            continue
        event = parsed.model_copy(update={"received_at": received_at})
        result.events.append(event)
        result.sources.append(f"{message.topic}:{message.partition}")
        result.contributions.extend(contributions_of(event))
    return result
