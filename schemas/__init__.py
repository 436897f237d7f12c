"""What an event is. Imports nothing else of Touchstream's."""

from touchstream.schemas.events import (
    EVENT_ADAPTER,
    EVENT_MODELS,
    EVENT_TYPES,
    AnyEvent,
    Event,
    family,
)
from touchstream.schemas.parse import (
    Invalid,
    check_event_time,
    parse_batch,
    parse_event,
    parse_object,
)
from touchstream.schemas.records import DeadLetter, KpiUpdate, ValidationIssue

__all__ = [
    "EVENT_ADAPTER",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "AnyEvent",
    "DeadLetter",
    "Event",
    "Invalid",
    "KpiUpdate",
    "ValidationIssue",
    "check_event_time",
    "family",
    "parse_event",
    "parse_batch",
    "parse_object",
]
