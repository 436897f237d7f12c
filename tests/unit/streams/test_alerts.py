from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.samples import wire
from touchstream.schemas import Invalid, parse_object
from touchstream.schemas.events import AnyEvent, CaseClosed
from touchstream.streams.alerts import (
    AlertBook,
    AlertPartition,
    Closing,
    alert_id_for,
    on_closed,
    on_raised,
    raise_alert,
)

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


def event(event_type: str, **properties: object) -> AnyEvent:
    data = wire(event_type)
    data["properties"].update(properties)
    parsed = parse_object(data)
    assert not isinstance(parsed, Invalid), parsed
    return parsed


@pytest.mark.parametrize(
    ("event_type", "properties", "kind"),
    [
        ("nps_response", {"score": 6}, "nps_detractor"),
        ("nps_response", {"score": 0}, "nps_detractor"),
        ("nps_response", {"score": 7}, None),
        ("csat_response", {"score": 2}, "csat_low"),
        ("csat_response", {"score": 3}, None),
        ("ces_response", {"score": 2}, "ces_low"),
        ("ces_response", {"score": 3}, None),
        ("comment", {"text": "awful", "sentiment": "negative"}, "negative_comment"),
        ("comment", {"text": "fine", "sentiment": "neutral", "score": 1}, None),
        ("comment", {"text": "meh", "sentiment": None, "score": 2}, "negative_comment"),
        ("comment", {"text": "ok", "sentiment": None, "score": 3}, None),
        ("page_view", {}, None),
    ],
)
def test_what_raises_an_alert(event_type: str, properties: dict, kind: str | None) -> None:
    alert = raise_alert(event(event_type, **properties), NOW)
    assert (alert.kind if alert else None) == kind


def test_an_alert_carries_customer_touchpoint_order_score_and_text() -> None:
    feedback = event("nps_response", score=3, comment="late again", order_id="ord-9")
    alert = raise_alert(feedback, NOW)
    assert alert is not None
    assert alert.alert_id == alert_id_for(feedback.event_id)  # replay → same alert
    assert (alert.customer_id, alert.touchpoint, alert.order_id) == ("c-1", "checkout", "ord-9")
    assert (alert.score, alert.text, alert.status) == (3, "late again", "open")


def closing(alert_id: str, at: datetime) -> CaseClosed:
    closed = event("case_closed", alert_id=alert_id, resolution="called back")
    assert isinstance(closed, CaseClosed)
    return closed.model_copy(update={"occurred_at": at})


def test_case_closed_closes_and_measures_time_to_close() -> None:
    book = AlertBook(sla_s=86_400)
    alert = raise_alert(event("csat_response", score=1), NOW)
    assert alert is not None and book.add(alert) == alert  # emitted as open
    closed = book.close(closing(alert.alert_id, alert.occurred_at + timedelta(hours=3)))
    assert closed is not None and closed.status == "closed" and closed.version == 3
    assert closed.time_to_close_s == 3 * 3600 and closed.resolution == "called back"
    assert book.open == {}


def test_replays_change_nothing() -> None:
    book = AlertBook(sla_s=86_400)
    alert = raise_alert(event("nps_response", score=0), NOW)
    assert alert is not None
    book.add(alert)
    assert book.add(alert) is None  # raised again (a replay): nothing new
    done = closing(alert.alert_id, alert.occurred_at + timedelta(minutes=1))
    assert book.close(done) is not None
    assert book.close(done) is None
    assert book.add(alert) is None  # a replayed raise never reopens a closed alert


def test_a_closing_read_before_its_alert_still_closes_it() -> None:
    book = AlertBook(sla_s=86_400)
    alert = raise_alert(event("ces_response", score=1), NOW)
    assert alert is not None
    assert book.close(closing(alert.alert_id, alert.occurred_at + timedelta(minutes=5))) is None
    closed = book.add(alert)
    assert closed is not None and closed.status == "closed" and closed.time_to_close_s == 300


def test_open_past_the_sla_is_surfaced_once() -> None:
    book = AlertBook(sla_s=86_400)
    alert = raise_alert(event("nps_response", score=2), NOW)
    assert alert is not None
    book.add(alert)
    assert book.overdue(alert.occurred_at + timedelta(hours=24)) == []
    [late] = book.overdue(alert.occurred_at + timedelta(hours=24, seconds=1))
    assert late.status == "overdue" and late.version == 2
    assert book.overdue(alert.occurred_at + timedelta(hours=30)) == []
    closed = book.close(closing(alert.alert_id, alert.occurred_at + timedelta(hours=30)))
    assert closed is not None and closed.status == "closed" and closed.version == 3


def test_an_alert_already_emitted_by_ingest_is_kept_not_sent_again() -> None:
    alert = raise_alert(event("nps_response", score=1), NOW)
    assert alert is not None
    slot, out = on_raised(None, alert, emitted=True)
    assert slot == alert and out is None  # ingest sent it: the slot only remembers it
    # A case closed before the raise is read: the closed alert is the agent's to send.
    early = Closing.of(closing(alert.alert_id, alert.occurred_at + timedelta(minutes=2)))
    slot, out = on_raised(early, alert, emitted=True)
    assert out is not None and out.status == "closed" and slot == out


# -- the alerts stage's partition: closed cases forgotten after the retention

SOURCES = ("cx.feedback.v1:0", "storefront.orders.v1:0")
DAY = 86_400.0


def progress(at: datetime, **flags: bool) -> dict[str, dict[str, object]]:
    mark: dict[str, object] = {"at": at.timestamp(), "idle": False, "expired": False, **flags}
    return {source: mark for source in SOURCES}


def test_a_closed_case_is_forgotten_once_the_clock_is_the_retention_past_it() -> None:
    part = AlertPartition(7 * DAY, SOURCES)
    opened = raise_alert(event("nps_response", score=1), NOW)
    closed = raise_alert(event("csat_response", score=1), NOW)
    assert opened is not None and closed is not None
    part.put(opened.alert_id, on_raised(None, opened)[0])
    shut = Closing.of(closing(closed.alert_id, closed.occurred_at + timedelta(hours=1)))
    part.put(closed.alert_id, on_closed(on_raised(None, closed)[0], shut)[0])
    early = Closing.of(closing("a-never-raised", NOW + timedelta(hours=2)))
    part.put(early.alert_id, early)
    # No clock until every source has reported.
    assert part.note_marks({SOURCES[0]: progress(NOW + timedelta(days=30))[SOURCES[0]]}) == 0
    part.note_marks(progress(shut.closed_at + timedelta(days=7)))  # exactly the retention
    assert {k for k, _ in part.slots()} == {opened.alert_id, early.alert_id}
    part.note_marks(progress(NOW + timedelta(days=30)))
    # An open alert is never forgotten (the SLA check surfaces it until closed).
    assert [k for k, _ in part.slots()] == [opened.alert_id]
    assert "#marks" in part.store and part.store[opened.alert_id]["alert"]["status"] == "open"


def test_an_idle_source_holds_the_clock_until_it_has_been_idle_long_enough() -> None:
    part = AlertPartition(DAY, SOURCES)
    alert = raise_alert(event("ces_response", score=1), NOW)
    assert alert is not None
    shut = Closing.of(closing(alert.alert_id, NOW))
    part.put(alert.alert_id, on_closed(on_raised(None, alert)[0], shut)[0])
    ahead = progress(NOW + timedelta(days=3))
    part.note_marks({SOURCES[0]: ahead[SOURCES[0]]})
    part.note_marks({SOURCES[1]: progress(NOW, idle=True)[SOURCES[1]]})
    assert [k for k, _ in part.slots()] == [alert.alert_id]  # held back by the idle one
    part.note_marks({SOURCES[1]: progress(NOW, idle=True, expired=True)[SOURCES[1]]})
    assert list(part.slots()) == []


def test_a_restored_partition_forgets_the_same_slots() -> None:
    part = AlertPartition(DAY, SOURCES)
    for hours in (1, 30):
        alert = raise_alert(event("nps_response", score=hours % 7), NOW)
        assert alert is not None
        shut = Closing.of(closing(alert.alert_id, NOW + timedelta(hours=hours)))
        part.put(alert.alert_id, on_closed(on_raised(None, alert)[0], shut)[0])
    part.next_offset = 5
    restored = AlertPartition(DAY, SOURCES, dict(part.checkpoint()))
    assert sorted(restored.slots()) == sorted(part.slots())
    for p in (part, restored):
        assert p.note_marks(progress(NOW + timedelta(hours=26))) == 1
    assert sorted(restored.slots()) == sorted(part.slots()) and len(list(part.slots())) == 1
