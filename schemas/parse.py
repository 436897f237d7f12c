"""Bytes in, an event or the reason it is not one out. Never raises on bad input."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
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
