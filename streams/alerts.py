"""Closed loop, pure: which feedback raises an alert, and the alert book.

PRODUCT.md: a detractor NPS (0-6), CSAT <= 2, CES <= 2 or a negative comment
raises an alert; case_closed (with the alert_id) closes it; time-to-close is
measured (case_closed's event time minus the feedback's); an alert not closed
within the SLA is surfaced. A comment is negative by its sentiment label, else
by its optional 1-5 score (<= 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from touchstream.schemas.events import (
    AnyEvent,
    CaseClosed,
    CesResponse,
    Comment,
    CsatResponse,
    NpsResponse,
)
from touchstream.schemas.records import Alert, AlertKind, alert_id_for
from touchstream.streams.customers import FEEDBACK
from touchstream.streams.outcomes import MARKS_KEY, clock_of, note_marks
from touchstream.streams.state import BatchState, Schedule


def _trigger(event: AnyEvent) -> tuple[AlertKind, int | None, str | None, str | None] | None:
    if event.event_type not in FEEDBACK:  # by name first: the types a detractor is of
        return None
    if isinstance(event, NpsResponse) and event.properties.score <= 6:
        nps = event.properties
        return "nps_detractor", nps.score, nps.comment, nps.order_id
    if isinstance(event, CsatResponse) and event.properties.score <= 2:
        csat = event.properties
        return "csat_low", csat.score, csat.comment, csat.order_id
    if isinstance(event, CesResponse) and event.properties.score <= 2:
        ces = event.properties
        return "ces_low", ces.score, ces.comment, ces.order_id
    if isinstance(event, Comment):
        c = event.properties
        negative = c.sentiment == "negative" or (
            c.sentiment is None and c.score is not None and c.score <= 2
        )
        if negative:
            return "negative_comment", c.score, c.text, None
    return None


STATUS_VERSION = {"open": 1, "overdue": 2, "closed": 3}


def raise_alert(event: AnyEvent, now: datetime) -> Alert | None:
    """The alert this feedback raises, if any (status open, version 1)."""
    trigger = _trigger(event)
    if trigger is None:
        return None
    kind, score, text, order_id = trigger
    return Alert(
        alert_id=alert_id_for(event.event_id),
        status="open",
        kind=kind,
        event_id=str(event.event_id),
        customer_id=event.customer_id,
        anonymous_id=event.anonymous_id,
        channel=event.channel,
        touchpoint=event.touchpoint,
        order_id=order_id,
        score=score,
        text=text,
        occurred_at=event.occurred_at,
        raised_at=now,
        version=STATUS_VERSION["open"],
    )


@dataclass(frozen=True)
class Closing:
    """A case_closed read before its alert (kept until the alert arrives)."""

    alert_id: str
    closed_at: datetime
    resolution: str

    @classmethod
    def of(cls, event: CaseClosed) -> Closing:
        return cls(event.properties.alert_id, event.occurred_at, event.properties.resolution)


# What is known of one alert id: nothing, an early closing, or the alert (any status).
Slot = Alert | Closing | None


def _close(alert: Alert, closing: Closing) -> Alert:
    return alert.model_copy(
        update={
            "status": "closed",
            "closed_at": closing.closed_at,
            "resolution": closing.resolution,
            "time_to_close_s": (closing.closed_at - alert.occurred_at).total_seconds(),
            "version": STATUS_VERSION["closed"],
        }
    )


def on_raised(slot: Slot, alert: Alert, emitted: bool = False) -> tuple[Slot, Alert | None]:
    """(new slot, alert to emit). A repeated raise (a replay) changes nothing;
    ``emitted``: the open alert is already out (ingest sends it at once)."""
    if slot is None:
        return alert, None if emitted else alert
    if isinstance(slot, Closing):
        closed = _close(alert, slot)
        return closed, closed
    return slot, None


def on_closed(slot: Slot, closing: Closing) -> tuple[Slot, Alert | None]:
    if slot is None or isinstance(slot, Closing):
        return closing, None
    if slot.status == "closed":
        return slot, None
    closed = _close(slot, closing)
    return closed, closed


def on_tick(slot: Slot, now: datetime, sla_s: float) -> tuple[Slot, Alert | None]:
    """Surface an open alert once it is past the SLA (by the clock: the customer
    waits in real time)."""
    if isinstance(slot, Alert) and slot.status == "open":
        if (now - slot.occurred_at).total_seconds() > sla_s:
            overdue = slot.model_copy(
                update={"status": "overdue", "version": STATUS_VERSION["overdue"]}
            )
            return overdue, overdue
    return slot, None


def slot_to_json(slot: Slot) -> dict[str, object] | None:
    """A slot as the JSON a changelogged table stores."""
    if slot is None:
        return None
    if isinstance(slot, Closing):
        return {
            "closing": {
                "alert_id": slot.alert_id,
                "closed_at": slot.closed_at.isoformat(),
                "resolution": slot.resolution,
            }
        }
    return {"alert": slot.model_dump(mode="json")}


def slot_from_json(data: dict[str, object] | None) -> Slot:
    if not data:
        return None
    if "closing" in data:
        closing = data["closing"]
        assert isinstance(closing, dict)  # noqa: S101 - written by slot_to_json
        return Closing(
            str(closing["alert_id"]),
            datetime.fromisoformat(str(closing["closed_at"])),
            str(closing["resolution"]),
        )
    return Alert.model_validate(data["alert"])


@dataclass
class AlertBook:
    """Alert slots by id (a dict here; a changelogged table in the worker)."""

    sla_s: float
    slots: dict[str, Slot] = field(default_factory=dict)

    def add(self, alert: Alert) -> Alert | None:
        self.slots[alert.alert_id], out = on_raised(self.slots.get(alert.alert_id), alert)
        return out

    def close(self, event: CaseClosed) -> Alert | None:
        closing = Closing.of(event)
        self.slots[closing.alert_id], out = on_closed(self.slots.get(closing.alert_id), closing)
        return out

    def overdue(self, now: datetime) -> list[Alert]:
        out = []
        for alert_id, slot in list(self.slots.items()):
            self.slots[alert_id], emitted = on_tick(slot, now, self.sla_s)
            if emitted is not None:
                out.append(emitted)
        return out

    @property
    def open(self) -> dict[str, Alert]:
        return {
            k: v for k, v in self.slots.items() if isinstance(v, Alert) and v.status != "closed"
        }


def finished_at(data: Mapping[str, Any] | None) -> float | None:
    """When a stored slot's case was closed (epoch seconds, its case_closed's event
    time), if it is a closed alert or a closing still waiting for its alert; None
    for an alert still open."""
    if not data:
        return None
    if "closing" in data:
        return datetime.fromisoformat(str(data["closing"]["closed_at"])).timestamp()
    alert = data["alert"]
    if alert.get("status") != "closed" or not alert.get("closed_at"):
        return None
    return datetime.fromisoformat(str(alert["closed_at"])).timestamp()


class AlertPartition(BatchState):
    """One partition of the alert events, as the alerts stage keeps it: the slot of
    each alert id (JSON, :func:`slot_to_json`) and the progress reports of the raw
    sources (``#marks``).

    A slot whose case is closed is kept so that a replayed raise or closing
    changes nothing; it is forgotten once the clock (the slowest raw source that
    is not idle, as for the other stages) is ``retention_s`` past its closing.
    Ingest raises no alert for feedback that much behind its own partition, so
    nothing can raise a forgotten alert again. Open alerts are never forgotten:
    the SLA check surfaces them until they are closed."""

    def __init__(
        self,
        retention_s: float,
        sources: Iterable[str],
        records: Mapping[str, bytes | None] | None = None,
    ) -> None:
        super().__init__(records)
        self.retention_s = retention_s
        self.sources = tuple(sources)
        self._forget = Schedule()  # alert id → when its case was closed
        for alert_id, data in self.slots():
            self._forget.set(alert_id, finished_at(data))

    def slots(self) -> Iterator[tuple[str, Any]]:
        """(alert id, stored slot) for every slot."""
        for key, value in list(self.store.items()):
            if not key.startswith("#"):
                yield key, value

    def slot(self, alert_id: str) -> Slot:
        return slot_from_json(self.store.get(alert_id))

    def put(self, alert_id: str, slot: Slot) -> None:
        data = slot_to_json(slot)
        self.store[alert_id] = data
        self._forget.set(alert_id, finished_at(data))

    def cutoff(self) -> float | None:
        """Cases closed before this are forgotten (None until every source has
        reported)."""
        clock = clock_of(self.store.get(MARKS_KEY) or {}, self.sources)
        return None if clock is None else clock - self.retention_s

    def note_marks(self, marks: Mapping[str, Any]) -> int:
        """Progress reports of some raw sources; forgets the slots the clock has
        passed by the retention (how many)."""
        note_marks(self.store, marks)
        cutoff = self.cutoff()
        if cutoff is None:
            return 0
        gone = self._forget.due(cutoff)
        for alert_id in gone:
            self.store.pop(alert_id, None)
        return len(gone)
