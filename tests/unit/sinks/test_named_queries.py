"""Every named journey query, on simulated data in the embedded engine, against a
plain-Python computation from the same events."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.sinks.world import Feeder, simulated_events
from touchstream.producers.simulator import SimulationConfig
from touchstream.schemas import parse_object
from touchstream.schemas.events import AnyEvent, CaseClosed
from touchstream.sinks import named
from touchstream.streams.aggregate import KpiAggregator
from touchstream.streams.alerts import AlertBook, raise_alert
from touchstream.streams.kpis import contributions
from touchstream.streams.windows import hopping

START = datetime(2026, 11, 2, 6, tzinfo=UTC)
NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)
STEPS = ("shipping", "payment", "review")


@pytest.fixture(scope="module")
def world(ch: Any) -> dict[str, Any]:
    """A database holding 80 simulated customers (with re-delivered duplicates),
    their KPI windows and closed-loop alerts, half of them closed."""
    feeder = Feeder(ch, "q")
    database = feeder.database
    _, events = simulated_events(
        SimulationConfig(customers=80, seed=21, start=START), lambda _: NOW
    )
    sink = feeder.sink
    send = feeder.send

    for event in events + events[::7]:  # every 7th event delivered twice
        send("ev", event.model_dump_json(exclude_none=True).encode())
    aggregator = KpiAggregator({}, 3600, 300)
    dirty = set()
    for event in events:
        score = getattr(event.properties, "score", None)
        if score is not None and event.event_type in (
            "nps_response",
            "csat_response",
            "ces_response",
        ):
            for c in contributions(
                event.event_type,
                event.channel,
                event.touchpoint,
                event.occurred_at.timestamp(),
                score,
            ):
                dirty.update(aggregator.add(c))
    for group, window in aggregator.windows_of(dirty):
        send("kp", aggregator.update(group, window, 1, NOW).model_dump_json().encode())
    book = AlertBook(sla_s=86_400)
    alerts = []
    for event in events:
        alert = raise_alert(event, NOW)
        if alert is not None:
            alerts.append(alert)
            send("al", alert.model_dump_json().encode())
            book.add(alert)
    closed = []
    for n, alert in enumerate(alerts[::2]):
        closing = parse_object(
            {
                "event_id": str(uuid.uuid4()),
                "event_type": "case_closed",
                "occurred_at": (alert.occurred_at + timedelta(hours=n + 1)).isoformat(),
                "customer_id": alert.customer_id or "x",
                "channel": "call_center",
                "touchpoint": "support_chat",
                "properties": {"alert_id": alert.alert_id, "resolution": "called back"},
            }
        )
        assert isinstance(closing, CaseClosed)
        done = book.close(closing)
        assert done is not None
        closed.append(done)
        send("al", done.model_dump_json().encode())
    sink.flush()
    return {"db": database, "events": events, "alerts": alerts, "closed": closed}


def run(ch: Any, world: dict[str, Any], name: str, **params: str) -> list[dict[str, Any]]:
    result = named.run(ch, named.get(name), world["db"], params)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def persons(events: list[AnyEvent]) -> dict[str, str]:
    """anonymous_id → customer_id, from events that carry both (identity stitching)."""
    links: dict[str, tuple[datetime, str]] = {}
    for e in events:
        if e.anonymous_id and e.customer_id:
            if e.anonymous_id not in links or links[e.anonymous_id][0] < e.occurred_at:
                links[e.anonymous_id] = (e.occurred_at, e.customer_id)
    return {anon: cid for anon, (_, cid) in links.items()}


def person_of(e: AnyEvent, links: dict[str, str]) -> str:
    return e.customer_id or links.get(e.anonymous_id or "", "") or e.anonymous_id or ""


def test_every_query_file_has_a_description_and_typed_params() -> None:
    queries = named.load_all()
    assert set(queries) >= {
        "checkout_funnel",
        "top_paths",
        "kpi_by_touchpoint",
        "cohorts_by_first_channel",
        "open_detractor_alerts",
        "time_to_close",
    }
    for query in queries.values():
        assert query.description and "{db:Identifier}" in query.sql
        for param in query.params:
            assert f"{{{param.name}:" in query.sql, (query.name, param.name)


def test_parameters_are_checked() -> None:
    query = named.get("top_paths")
    with pytest.raises(named.QueryError, match="unknown parameter"):
        query.bind({"limt": "3"}, "db")
    with pytest.raises(named.QueryError, match="no named query"):
        named.get("nope")
    assert query.bind({"limit": "3"}, "db")["limit"] == "3"


def test_checkout_funnel(ch: Any, world: dict[str, Any]) -> None:
    checkouts: dict[str, list[AnyEvent]] = defaultdict(list)
    for e in world["events"]:
        checkout_id = getattr(e.properties, "checkout_id", None)
        if checkout_id:
            checkouts[checkout_id].append(e)
    want: dict[str, Counter[int]] = defaultdict(Counter)
    for items in checkouts.values():
        items.sort(key=lambda e: e.occurred_at)
        started = [e for e in items if e.event_type == "checkout_started"]
        if not started:
            continue
        level = 0
        for e in items:
            if stage_of(e) == level:
                level += 1
        for reached in range(1, level + 1):
            want[started[0].channel][reached] += 1
    got = {row["channel"]: row for row in run(ch, world, "checkout_funnel")}
    assert sum(counts[1] for counts in want.values()) > 20
    assert set(got) == set(want)
    for channel, counts in want.items():
        row = got[channel]
        assert [row["started"], row["shipping"], row["payment"], row["review"], row["ordered"]] == [
            counts[n] for n in range(1, 6)
        ], channel


def stage_of(e: AnyEvent) -> int | None:
    """Funnel stage: 0 started, 1-3 the steps in order, 4 ordered."""
    if e.event_type == "checkout_started":
        return 0
    if e.event_type == "checkout_step":
        step = getattr(e.properties, "step", "")
        return STEPS.index(step) + 1 if step in STEPS else None
    return 4 if e.event_type == "order_placed" else None


def test_top_paths_before_purchase(ch: Any, world: dict[str, Any]) -> None:
    links = persons(world["events"])
    journeys: dict[str, list[AnyEvent]] = defaultdict(list)
    for e in world["events"]:
        journeys[person_of(e, links)].append(e)
    want: Counter[str] = Counter()
    for items in journeys.values():
        items.sort(key=lambda e: (e.occurred_at, str(e.event_id)))
        index = next((i for i, e in enumerate(items) if e.event_type == "order_placed"), None)
        if index is None:
            continue
        channels: list[str] = []
        for e in items[: index + 1]:
            if not channels or channels[-1] != e.channel:
                channels.append(e.channel)
        want[" > ".join(channels)] += 1
    got = {row["path"]: row["customers"] for row in run(ch, world, "top_paths", limit="1000")}
    assert got == dict(want)
    assert sum(got.values()) > 10


def test_kpi_by_touchpoint_matches_nps_computed_from_events(ch: Any, world: dict[str, Any]) -> None:
    want: dict[tuple[datetime, str], list[int]] = defaultdict(lambda: [0, 0])
    for e in world["events"]:
        if e.event_type != "nps_response":
            continue
        score = e.properties.score
        for window in hopping(e.occurred_at.timestamp(), 3600, 300):
            cell = want[(window.start_dt(), e.touchpoint)]
            cell[0] += (score >= 9) - (score <= 6)
            cell[1] += 1
    assert len(want) > 20
    rows = run(ch, world, "kpi_by_touchpoint", kpi="nps")
    got = {
        (row["window_start"].replace(tzinfo=UTC), row["touchpoint"]): [
            row["numerator"],
            row["denominator"],
        ]
        for row in rows
    }
    assert got == {k: [float(v[0]), float(v[1])] for k, v in want.items()}
    sample = rows[len(rows) // 2]
    assert sample["value"] == pytest.approx(
        100 * sample["numerator"] / sample["denominator"], abs=1e-3
    )


def test_cohorts_by_first_channel(ch: Any, world: dict[str, Any]) -> None:
    links = persons(world["events"])
    first: dict[str, AnyEvent] = {}
    orders: Counter[str] = Counter()
    cancelled: set[str] = set()
    for e in sorted(world["events"], key=lambda e: e.occurred_at):
        who = person_of(e, links)
        first.setdefault(who, e)
        orders[who] += e.event_type == "order_placed"
        if e.event_type == "subscription_cancelled":
            cancelled.add(who)
    want: dict[str, Counter[str]] = defaultdict(Counter)
    for who, e in first.items():
        want[e.channel]["customers"] += 1
        want[e.channel]["buyers"] += orders[who] > 0
        want[e.channel]["repeat_buyers"] += orders[who] > 1
        want[e.channel]["churned"] += who in cancelled
    got = {row["first_channel"]: row for row in run(ch, world, "cohorts_by_first_channel")}
    assert len(want) >= 3
    assert set(got) == set(want)
    for channel, counts in want.items():
        row = got[channel]
        assert (row["customers"], row["buyers"], row["repeat_buyers"]) == (
            counts["customers"],
            counts["buyers"],
            counts["repeat_buyers"],
        )
        # One simulated week: nobody ordered in a later week; churn = cancelled.
        assert row["retention"] == 0
        assert row["churn"] == round(counts["churned"] / counts["customers"], 4)


def test_open_detractor_alerts_oldest_first(ch: Any, world: dict[str, Any]) -> None:
    closed = {a.alert_id for a in world["closed"]}
    want = [a for a in world["alerts"] if a.alert_id not in closed]
    want.sort(key=lambda a: (a.occurred_at, a.alert_id))
    rows = run(ch, world, "open_detractor_alerts")
    assert [row["alert_id"] for row in rows] == [a.alert_id for a in want]
    assert all(row["past_sla"] for row in rows)  # simulated in 2026-11: older than 24 h now
    assert len(rows) > 0


def test_time_to_close(ch: Any, world: dict[str, Any]) -> None:
    by_kind: dict[str, list[float]] = defaultdict(list)
    for alert in world["closed"]:
        by_kind[alert.kind].append(alert.time_to_close_s)
    assert sum(len(v) for v in by_kind.values()) >= 5
    rows = {row["kind"]: row for row in run(ch, world, "time_to_close", sla_s="86400")}
    assert set(rows) == set(by_kind)
    for kind, values in by_kind.items():
        row = rows[kind]
        assert row["closed"] == len(values)
        assert row["max_s"] == max(values)
        assert row["within_sla"] == pytest.approx(
            sum(v <= 86_400 for v in values) / len(values), abs=1e-4
        )
