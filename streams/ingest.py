"""Ingest, pure: raw messages in, validated events, dead letters and KPI contributions out."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from touchstream.schemas import (
    DeadLetter,
    Invalid,
    check_event_time,
    parse_event,
)
from touchstream.schemas.events import AnyEvent, OrderPlaced
from touchstream.schemas.pii import PiiKeyMissing, Pseudonymiser
from touchstream.schemas.records import KafkaRecord, ValidationIssue
from touchstream.streams.eventtime import SourceState
from touchstream.streams.kpis import Contribution, contributions_of


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1.5 µs more
class RawMessage:
    """A Kafka record built by hand (tests, tests/perf/stages.py); the worker reads
    aiokafka's records as fetched (schemas.records.KafkaRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class IngestResult:
    """What a batch of raw messages became. Every input is an event, a dead letter,
    a duplicate or a replay (counted)."""

    events: list[AnyEvent] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # "topic:partition" of each event
    on_time: list[bool] = field(default_factory=list)  # False: late, stored raw only
    dead_letters: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    contributions: list[Contribution] = field(default_factory=list)
    by_reason: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)  # per topic
    late: Counter[str] = field(default_factory=Counter)  # per topic
    replayed: int = 0  # already covered by a checkpoint: skipped


def ingest(
    batch: Sequence[KafkaRecord],
    received_at: datetime,
    max_bytes: int,
    pii: Pseudonymiser | None = None,
    states: Mapping[str, SourceState] | None = None,
) -> IngestResult:
    """Validate a batch, in offset order per source partition.

    With ``states`` (one per "topic:partition"), messages a checkpoint already
    covers are skipped, a repeated event_id is dropped as a duplicate, and an
    event behind its partition's watermark is late: forwarded (stored raw) but
    contributing to no KPI window. PII that an emitter left in clear is
    pseudonymised here (schemas/pii.py); with no key it is refused
    (``unprotected_pii``), and dead letters never keep it in clear."""
    pii = pii or Pseudonymiser(None)
    states = states or {}
    result = IngestResult()
    todo: list[tuple[KafkaRecord, str, SourceState | None]] = []
    for message in batch:
        source = f"{message.topic}:{message.partition}"
        state = states.get(source)
        if state is not None and state.applied(message.offset):
            result.replayed += 1
            continue
        todo.append((message, source, state))
    # Every message parsed first, then the rest: validation in one run keeps
    # pydantic's code in the CPU's caches (validate_json ~28 -> ~20 µs per event in
    # situ with the GC tuning of touchstream.runtime, 11-14 µs alone; 2026-11-26).
    parsed_all = [parse_event(m.value or b"", max_bytes) for m, _, _ in todo]
    for (message, source, state), parsed in zip(todo, parsed_all, strict=True):
        raw = message.value or b""
        if not isinstance(parsed, Invalid):  # future or ancient: timestamp_out_of_range
            parsed = check_event_time(parsed, received_at)
        if not isinstance(parsed, Invalid) and _may_hold_pii(parsed):
            parsed = _pseudonymised(parsed, pii)
        if isinstance(parsed, Invalid):
            payload, encoding = DeadLetter.encode_payload(_scrubbed(raw[: max_bytes * 2], pii))
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
            if state is not None:
                state.skip(message.offset)
            continue
        verdict = "on_time"
        if state is not None:
            verdict = state.observe(message.offset, parsed.event_id, parsed.at)
        if verdict == "duplicate":
            result.duplicates[message.topic] += 1
            continue
        event = parsed  # received_at goes into the forwarded bytes (forwarded())
        result.events.append(event)
        result.sources.append(source)
        result.on_time.append(verdict == "on_time")
        if verdict == "late":
            result.late[message.topic] += 1
            continue
        result.contributions.extend(contributions_of(event, source, message.offset))
    return result


def _may_hold_pii(event: AnyEvent) -> bool:
    """PII can only hide in unknown extra properties (no typed property is PII)."""
    if event.properties.model_extra:
        return True
    if event.event_type != "order_placed" or not isinstance(event, OrderPlaced):
        return False  # by name first (schemas.events.event_types)
    return any(i.model_extra for i in event.properties.items)


def _pseudonymised(event: AnyEvent, pii: Pseudonymiser) -> AnyEvent | Invalid:
    """The event with the PII in its extra properties pseudonymised. Only those can
    hold PII (no typed property is named as PII is), so only they are walked, and
    the event is copied with them replaced: the typed fields are unchanged and
    nothing needs validating again (dumping and validating the whole event cost
    ~50 µs)."""
    props = event.properties
    update: dict[str, Any] = {}
    found: list[str] = []
    try:
        if event.event_type == "order_placed" and isinstance(event, OrderPlaced):
            items = list(event.properties.items)
            for index, item in enumerate(items):
                cleaned = _cleaned_extra(item, f"items[{index}]", pii, found)
                if cleaned:
                    items[index] = item.model_copy(update=cleaned)
            if found:
                update["items"] = items
        update.update(_cleaned_extra(props, "", pii, found))
    except PiiKeyMissing as exc:
        issues = tuple(
            ValidationIssue(field=f"properties.{path}", reason=str(exc), kind="unprotected_pii")
            for path in exc.fields
        )
        return Invalid("unprotected_pii", issues, event.event_type, str(event.event_id))
    if not found:
        return event
    return event.model_copy(update={"properties": props.model_copy(update=update)})


def _cleaned_extra(
    model: BaseModel, path: str, pii: Pseudonymiser, found: list[str]
) -> dict[str, Any]:
    """The extra properties of ``model`` whose values held PII, pseudonymised (the
    paths replaced are added to ``found``)."""
    extra = model.model_extra
    if not extra:
        return {}
    cleaned, replaced = pii.properties(extra, path=path)
    found.extend(replaced)
    return {name: value for name, value in cleaned.items() if value is not extra[name]}


def _scrubbed(raw: bytes, pii: Pseudonymiser) -> bytes:
    """The dead letter's bytes, with PII values of a JSON event pseudonymised (or
    redacted without a key). Bytes that are not a JSON object are kept as sent."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if not isinstance(data, dict):
        return raw
    cleaned, found = pii.event(data, redact=True)
    return json.dumps(cleaned, ensure_ascii=False).encode() if found else raw


def forwarded(event: AnyEvent, received_at: datetime, late: bool) -> bytes:
    """The bytes for the sink: the event with ``received_at`` set by the pipeline,
    and ``late`` when it is beyond the allowed lateness. Spliced into the JSON
    rather than copying the model (a copy per event costs ~10 µs)."""
    if event.received_at is not None:  # the pipeline's time wins over an emitter's
        event = event.model_copy(update={"received_at": None})
    body = event.model_dump_json(exclude_none=True).encode()
    return body[:-1] + _received_suffix(received_at, late)


@functools.lru_cache(maxsize=8)
def _received_suffix(received_at: datetime, late: bool) -> bytes:
    """What :func:`forwarded` splices in: the same for a whole batch (isoformat
    costs ~3 µs a call)."""
    extra = b',"received_at":"' + received_at.isoformat().encode() + b'"'
    return extra + (b',"late":true}' if late else b"}")
