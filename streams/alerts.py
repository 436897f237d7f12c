"""Closed loop, pure: which feedback raises an alert, and the alert book.

PRODUCT.md: a detractor NPS (0-6), CSAT <= 2, CES <= 2 or a negative comment
raises an alert; case_closed (with the alert_id) closes it; time-to-close is
measured (case_closed's event time minus the feedback's); an alert not closed
within the SLA is surfaced. A comment is negative by its sentiment label, else
by its optional 1-5 score (<= 2).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from touchstream.schemas.events import (
    AnyEvent,
    CaseClosed,
    CesResponse,
    Comment,
    CsatResponse,
    NpsResponse,
)
from touchstream.schemas.records import Alert, AlertKind

ALERT_NAMESPACE = uuid.UUID("5f0c2a57-9a51-4d2c-9d37-0b8d3c1c7a11")


def alert_id_for(event_id: uuid.UUID | str) -> str:
    """Deterministic: a replayed feedback raises the same alert."""
    return str(uuid.uuid5(ALERT_NAMESPACE, str(event_id)))


def _trigger(event: AnyEvent) -> tuple[AlertKind, int | None, str | None, str | None] | None:
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


def raise_alert(event: AnyEvent, now: datetime, version: int) -> Alert | None:
    """The alert this feedback raises, if any."""
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
        version=version,
    )


@dataclass
class AlertBook:
    """Alerts not closed yet, and closings that arrived before their alert."""

    sla_s: float
    open: dict[str, Alert] = field(default_factory=dict)
    early_closings: dict[str, CaseClosed] = field(default_factory=dict)

    def add(self, alert: Alert, version: int) -> Alert | None:
        """Track a raised alert; returns it closed if its case_closed came first."""
        closing = self.early_closings.pop(alert.alert_id, None)
        if closing is not None:
            return self._closed(alert, closing, version)
        self.open[alert.alert_id] = alert
        return None

    def close(self, event: CaseClosed, version: int) -> Alert | None:
        """Apply a case_closed; returns the closed alert (None if its alert is unknown yet)."""
        alert = self.open.pop(event.properties.alert_id, None)
        if alert is None:
            self.early_closings[event.properties.alert_id] = event
            return None
        return self._closed(alert, event, version)

    @staticmethod
    def _closed(alert: Alert, event: CaseClosed, version: int) -> Alert:
        return alert.model_copy(
            update={
                "status": "closed",
                "closed_at": event.occurred_at,
                "resolution": event.properties.resolution,
                "time_to_close_s": (event.occurred_at - alert.occurred_at).total_seconds(),
                "version": version,
            }
        )

    def overdue(self, now: datetime, version: int) -> list[Alert]:
        """Open alerts past the SLA (by the clock: a customer waits in real time),
        each returned once with status overdue."""
        out = []
        for alert_id, alert in self.open.items():
            if alert.status == "open" and (now - alert.occurred_at).total_seconds() > self.sla_s:
                overdue = alert.model_copy(update={"status": "overdue", "version": version})
                self.open[alert_id] = overdue
                out.append(overdue)
        return out
