"""Bytes in, an event or the reason it is not one out. Never raises on bad input."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from touchstream.schemas.events import EVENT_ADAPTER, EVENT_TYPES, AnyEvent
from touchstream.schemas.records import DeadLetterReason, ValidationIssue


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a message is not an event; becomes a dead letter in the stream."""

    reason: DeadLetterReason
    errors: tuple[ValidationIssue, ...] = ()
    event_type: str | None = None
    event_id: str | None = None

    def describe(self) -> str:
        detail = "; ".join(f"{issue.field}: {issue.reason}" for issue in self.errors)
        return f"{self.reason}" + (f" ({detail})" if detail else "")


def parse_event(raw: bytes, max_bytes: int = 64 * 1024) -> AnyEvent | Invalid:
    """Parse one wire message. Valid → the typed event; anything else → :class:`Invalid`."""
    if len(raw) > max_bytes:
        return Invalid(
            "too_large",
            (ValidationIssue(field="", reason=f"{len(raw)} bytes > {max_bytes}", kind="size"),),
        )
    try:
        return EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        return _classify(raw, exc)
    except (ValueError, RecursionError) as exc:  # pragma: no cover - pydantic wraps these
        return Invalid("not_json", (ValidationIssue(field="", reason=str(exc), kind="json"),))


# Event time the pipeline accepts (check_event_time). Before EARLIEST_EVENT_TIME no
# KPI window can be stored (ClickHouse DateTime starts in 1970) and no storefront
# event is that old; more than MAX_FUTURE_S ahead of the pipeline's clock is a
# broken emitter clock, and would drag its partition's watermark ahead, making
# the next genuine events late. MAX_FUTURE_S is below the default allowed
# lateness (600 s), so an accepted clock skew never turns an on-time event late.
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE_S = 300.0


def check_event_time(
    event: AnyEvent, received_at: datetime, max_future_s: float = MAX_FUTURE_S
) -> AnyEvent | Invalid:
    """The event, or ``timestamp_out_of_range`` when its ``occurred_at`` is before
    EARLIEST_EVENT_TIME or more than ``max_future_s`` after ``received_at``. An old
    but plausible time is valid (the stream decides whether it is late)."""
    at = event.occurred_at
    if at < EARLIEST_EVENT_TIME:
        kind, reason = "ancient", f"before {EARLIEST_EVENT_TIME.date().isoformat()}"
    elif (at - received_at).total_seconds() > max_future_s:
        ahead = (at - received_at).total_seconds()
        kind, reason = "future", f"{ahead:.0f}s after it was received (at most {max_future_s:g}s)"
    else:
        return event
    issue = ValidationIssue(field="occurred_at", reason=reason, kind=kind)
    return Invalid("timestamp_out_of_range", (issue,), event.event_type, str(event.event_id))


def parse_batch(raws: Iterable[bytes], max_bytes: int = 64 * 1024) -> list[AnyEvent | Invalid]:
    """Parse many wire messages; one result per input, in order. Never raises."""
    return [parse_event(raw, max_bytes) for raw in raws]


def parse_object(data: Any) -> AnyEvent | Invalid:
    """Validate an already decoded JSON value (the emitter's path)."""
    try:
        return EVENT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        return _classify_object(data, exc)


def _classify(raw: bytes, exc: ValidationError) -> Invalid:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as json_error:
        return Invalid(
            "not_json", (ValidationIssue(field="", reason=str(json_error)[:300], kind="json"),)
        )
    return _classify_object(data, exc)


def _classify_object(data: Any, exc: ValidationError) -> Invalid:
    if not isinstance(data, dict):
        return Invalid(
            "not_object",
            (ValidationIssue(field="", reason=f"got {type(data).__name__}", kind="type"),),
        )
    event_type = data.get("event_type")
    event_type_str = event_type if isinstance(event_type, str) else None
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if event_type_str not in EVENT_TYPES:
        reason = "missing" if event_type is None else f"{str(event_type)[:64]!r} is not known"
        issue = ValidationIssue(field="event_type", reason=reason, kind="unknown_event_type")
        return Invalid("unknown_event_type", (issue,), event_type_str, event_id)
    if not data.get("customer_id") and not data.get("anonymous_id"):
        issue = ValidationIssue(
            field="customer_id",
            reason="at least one of customer_id or anonymous_id is required",
            kind="missing_identity",
        )
        return Invalid("missing_identity", (issue,), event_type_str, event_id)
    return Invalid("schema_violation", issues(exc, event_type_str), event_type_str, event_id)


def issues(exc: ValidationError, tag: str | None = None) -> tuple[ValidationIssue, ...]:
    """pydantic's errors as (dotted field path, message, kind), without the union tag."""
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = list(error.get("loc", ()))
        if loc and tag is not None and loc[0] == tag:
            loc = loc[1:]
        out.append(
            ValidationIssue(
                field=".".join(str(part) for part in loc),
                reason=str(error.get("msg", "invalid")),
                kind=str(error.get("type", "value_error")),
            )
        )
    return tuple(out)
