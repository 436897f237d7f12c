"""Records the pipeline itself writes to Kafka (dead letters, KPI updates) and what
it reads of any Kafka record."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DeadLetterReason = Literal[
    "too_large",
    "not_json",
    "not_object",
    "unknown_event_type",
    "missing_identity",
    "schema_violation",
    "unprotected_pii",
    "timestamp_out_of_range",
]


class KafkaRecord(Protocol):
    """What the pipeline reads of a Kafka record: aiokafka's ConsumerRecord as it is
    fetched (a copy per record cost the sink and the worker ~1 µs each), or a
    stand-in of the same fields (sinks.base.SourceRecord, streams.ingest.RawMessage)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class ValidationIssue(BaseModel):
    """One thing wrong with an event: where (dotted field path), what, and its class."""

    model_config = ConfigDict(frozen=True)

    field: str
    reason: str
    kind: str


class DeadLetter(BaseModel):
    """A message that did not become an event: the original bytes and why (topic dlq)."""

    model_config = ConfigDict(frozen=True)

    reason: DeadLetterReason
    event_type: str | None = None
    event_id: str | None = None
    errors: list[ValidationIssue] = Field(default_factory=list)
    source_topic: str
    source_partition: int
    source_offset: int
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    original_size: int = Field(ge=0, description="bytes of the message; payload may be cut")
    received_at: AwareDatetime

    @staticmethod
    def encode_payload(raw: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"

    def original_bytes(self) -> bytes:
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")


class KpiUpdate(BaseModel):
    """The latest value of one KPI window (topic kpis). A higher version replaces a lower."""

    model_config = ConfigDict(frozen=True)

    kpi: str
    channel: str
    touchpoint: str
    window_start: AwareDatetime
    window_end: AwareDatetime
    window_size_s: int
    numerator: float
    denominator: float
    value: float | None
    counts: dict[str, float] = Field(default_factory=dict)
    version: int
    updated_at: AwareDatetime

    @property
    def key(self) -> str:
        return f"{self.kpi}|{self.channel}|{self.touchpoint}|{self.window_size_s}"


def iso(value: datetime) -> str:
    return value.isoformat()


AlertKind = Literal["nps_detractor", "csat_low", "ces_low", "negative_comment"]
AlertStatus = Literal["open", "overdue", "closed"]


class Alert(BaseModel):
    """A closed-loop alert (topic alerts): a bad experience someone must follow up.

    ``alert_id`` is derived from the feedback's event_id, so a replayed feedback
    raises the same alert. Each change of status is a new record with a higher
    ``version``; the latest describes the alert.
    """

    model_config = ConfigDict(frozen=True)

    alert_id: str
    status: AlertStatus
    kind: AlertKind
    event_id: str
    customer_id: str | None = None
    anonymous_id: str | None = None
    channel: str
    touchpoint: str
    order_id: str | None = None
    score: int | None = None
    text: str | None = None
    occurred_at: AwareDatetime
    raised_at: AwareDatetime
    closed_at: AwareDatetime | None = None
    resolution: str | None = None
    time_to_close_s: float | None = None
    version: int


ALERT_NAMESPACE = uuid.UUID("5f0c2a57-9a51-4d2c-9d37-0b8d3c1c7a11")


def alert_id_for(event_id: uuid.UUID | str) -> str:
    """The id of the alert a feedback event raises (contract: case_closed names it).
    Deterministic: a replayed feedback raises the same alert."""
    return str(uuid.uuid5(ALERT_NAMESPACE, str(event_id)))
