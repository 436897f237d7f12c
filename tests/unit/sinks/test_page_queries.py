"""The named queries behind the CX page (kpi_grid, abandonment_paths,
pipeline_health, channels), on simulated data in the embedded engine, against the
ground truth of tests/truth.py worked out from the same events."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import truth
from tests.unit.sinks.test_named_queries import person_of, persons
from tests.unit.sinks.world import Feeder, simulated_events
from touchstream.producers.simulator import SimulationConfig
from touchstream.schemas.events import AnyEvent
from touchstream.schemas.records import DeadLetter
from touchstream.sinks import named
from touchstream.streams.aggregate import KpiAggregator
from touchstream.streams.alerts import raise_alert
from touchstream.streams.kpis import contributions_of
from touchstream.streams.outcomes import OutcomeTracker, apply, decision_contributions, ops_of

START = datetime(2026, 11, 2, 6, tzinfo=UTC)
NOW = START + timedelta(hours=7, minutes=2)  # the page's "now": after all the traffic
SQL_TIME = "%Y-%m-%d %H:%M:%S.%f"


def sql_time(at: datetime) -> str:
    return at.strftime(SQL_TIME)[:-3]


def received(n: int) -> datetime:
    """Landing times spread over the 90 minutes before NOW (a few in its last minute)."""
    return NOW - timedelta(seconds=(n * 37) % 5400)


@pytest.fixture(scope="module")
def world(ch: Any) -> dict[str, Any]:
    """120 simulated customers (every 9th event re-delivered), their KPI windows from
    the stream's pure logic (per-event KPIs and abandonment), alerts (every third
    closed) and dead letters, one hour ago and two hours ago."""
    feeder = Feeder(ch, "p")
    database = feeder.database
    wires, events = simulated_events(
        SimulationConfig(customers=120, seed=11, start=START), received
    )
    sink = feeder.sink
    send = feeder.send

    for event in events + events[::9]:
        send("ev", event.model_dump_json(exclude_none=True).encode())
    aggregator = KpiAggregator({}, 3600, 300)
    tracker = OutcomeTracker(1800)
    for event in events:
        for contribution in contributions_of(event):
            aggregator.add(contribution)
        for op in ops_of(event):
            if op.kind == "checkout":
                apply(tracker, op)
    for decision in tracker.decide(float("inf")):
        for contribution in decision_contributions("checkout", decision):
            aggregator.add(contribution)
    groups = set()
    for group, window in aggregator.all_windows():
        groups.add(group)
        send("kp", aggregator.update(group, window, 1, NOW).model_dump_json().encode())
    alerts = [a for a in (raise_alert(e, NOW) for e in events) if a is not None]
    for n, alert in enumerate(alerts):
        if n % 3 == 0:
            alert = alert.model_copy(
                update={"status": "closed", "closed_at": NOW, "time_to_close_s": 60.0, "version": 3}
            )
        send("al", alert.model_dump_json().encode())
    dead = [("not_json", 10), ("not_json", 50), ("schema_violation", 30), ("not_json", 70)]
    dead += [("unknown_event_type", 150), ("too_large", 61)]
    for n, (reason, minutes_ago) in enumerate(dead):
        record = DeadLetter(
            reason=reason,
            source_topic="raw",
            source_partition=0,
            source_offset=n,
            payload=f"bad {n}",
            payload_encoding="utf-8",
            original_size=5,
            received_at=NOW - timedelta(minutes=minutes_ago),
        )
        send("dl", record.model_dump_json().encode())
    sink.flush()
    return {
        "db": database,
        "wires": wires,
        "events": events,
        "alerts": alerts,
        "dead": dead,
        "groups": groups,
    }


def run(ch: Any, world: dict[str, Any], name: str, **params: str) -> list[dict[str, Any]]:
    result = named.run(ch, named.get(name), world["db"], params)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def grid(rows: list[dict[str, Any]], kpi: str) -> dict[str, tuple[float, float]]:
    return {r["touchpoint"]: (r["numerator"], r["denominator"]) for r in rows if r["kpi"] == kpi}


def expected(
    world: dict[str, Any], until: datetime, span_s: int, channel: str = "all"
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    start, end = truth.tiles(until, span_s)
    since, till = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    return (
        truth.nps(world["wires"], since, till, channel),
        truth.abandonment(world["wires"], since, till, channel),
    )


def test_page_queries_are_registered() -> None:
    queries = named.load_all()
    assert {"kpi_grid", "abandonment_paths", "pipeline_health", "channels"} <= set(queries)
    grid_params = {p.name: p.default for p in queries["kpi_grid"].params}
    assert grid_params["span_s"] == "86400" and grid_params["channel"] == "all"


def test_kpi_grid_last_day_all_channels(ch: Any, world: dict[str, Any]) -> None:
    rows = run(ch, world, "kpi_grid", span_s="86400", until=sql_time(NOW))
    want_nps, want_lost = expected(world, NOW, 86_400)
    # Everything simulated lies inside the day: the grid is the whole traffic.
    assert want_nps["all"][1] == sum(1 for w in world["wires"] if w["event_type"] == "nps_response")
    assert want_lost["all"][1] > 20 and 0 < want_lost["all"][0] < want_lost["all"][1]
    assert grid(rows, "nps") == {k: (float(n), float(d)) for k, (n, d) in want_nps.items()}
    got_lost = grid(rows, "checkout_abandonment")
    assert got_lost == {k: (float(n), float(d)) for k, (n, d) in want_lost.items()}
    assert {"checkout", "payment"} <= set(got_lost)
    by_cell = {(r["kpi"], r["touchpoint"]): r["value"] for r in rows}
    for touchpoint, (n, d) in want_nps.items():
        assert by_cell[("nps", touchpoint)] == pytest.approx(round(100 * n / d, 4))
    for touchpoint, (n, d) in want_lost.items():
        assert by_cell[("checkout_abandonment", touchpoint)] == pytest.approx(round(n / d, 4))
    assert {"csat", "ces"} <= {r["kpi"] for r in rows}
    assert not any(r["kpi"] == "churn" for r in rows)  # no churn rows: the page shows "—"


def test_kpi_grid_last_hour_is_one_window(ch: Any, world: dict[str, Any]) -> None:
    until = START + timedelta(hours=3, minutes=2)
    rows = run(ch, world, "kpi_grid", span_s="3600", until=sql_time(until))
    want_nps, want_lost = expected(world, until, 3600)
    assert want_nps["all"][1] > 3
    assert grid(rows, "nps") == {k: (float(n), float(d)) for k, (n, d) in want_nps.items()}
    got_lost = grid(rows, "checkout_abandonment")
    assert got_lost == {k: (float(n), float(d)) for k, (n, d) in want_lost.items()}
    start, end = truth.tiles(until, 3600)
    cover = [(r["since"], r["until"]) for r in rows if r["touchpoint"] == "all"]
    assert {(s.timestamp(), u.timestamp()) for s, u in cover} == {(start, end)}


def test_kpi_grid_one_channel(ch: Any, world: dict[str, Any]) -> None:
    rows = run(ch, world, "kpi_grid", span_s="86400", channel="web", until=sql_time(NOW))
    want_nps, want_lost = expected(world, NOW, 86_400, channel="web")
    everywhere, _ = expected(world, NOW, 86_400)
    assert 0 < want_nps["all"][1] < everywhere["all"][1]
    assert grid(rows, "nps") == {k: (float(n), float(d)) for k, (n, d) in want_nps.items()}
    got_lost = grid(rows, "checkout_abandonment")
    assert got_lost == {k: (float(n), float(d)) for k, (n, d) in want_lost.items()}


def test_abandonment_paths(ch: Any, world: dict[str, Any]) -> None:
    events = world["events"]
    links = persons(events)
    journeys: dict[str, list[AnyEvent]] = defaultdict(list)
    for e in events:
        journeys[person_of(e, links)].append(e)
    starter = {
        str(e.properties.checkout_id): person_of(e, links)
        for e in events
        if e.event_type == "checkout_started"
    }
    want: Counter[str] = Counter()
    last_four: Counter[str] = Counter()
    longest = 0
    lookback = timedelta(seconds=1800)
    for c in truth.checkouts(world["wires"]):
        if not c.abandoned or c.channel != "web":
            continue
        dropped = max(
            truth.occurred(w)
            for w in world["wires"]
            if w["event_type"] in ("checkout_started", "checkout_step")
            and w["properties"].get("checkout_id") == c.checkout_id
            and truth.occurred(w) <= c.outcome_at
        )
        steps = sorted(
            (e.occurred_at, str(e.event_id), e.touchpoint)
            for e in journeys[starter[c.checkout_id]]
            if c.started_at - lookback <= e.occurred_at <= dropped
        )
        path: list[str] = []
        for _, _, touchpoint in steps:
            if not path or path[-1] != touchpoint:
                path.append(touchpoint)
        want[" > ".join(path)] += 1
        longest = max(longest, len(path))
        last_four[" > ".join(path[-4:])] += 1
    until = sql_time(NOW)
    rows = run(ch, world, "abandonment_paths", channel="web", limit="999", steps="99", until=until)
    assert {r["path"]: r["checkouts"] for r in rows} == dict(want)
    assert sum(want.values()) > 5
    rows = run(
        ch, world, "abandonment_paths", channel="web", limit="1000", steps="4", until=sql_time(NOW)
    )
    assert {r["path"]: r["checkouts"] for r in rows} == dict(last_four)
    assert longest > 4  # the cut mattered
    top = run(ch, world, "abandonment_paths", limit="3", until=sql_time(NOW))
    assert len(top) == 3 and top[0]["checkouts"] >= top[-1]["checkouts"]
    # Checkouts whose deadline is still ahead of `until` are not decided: not counted.
    last_start = max(c.started_at for c in truth.checkouts(world["wires"]) if c.abandoned)
    early = run(ch, world, "abandonment_paths", limit="1000", until=sql_time(last_start))
    late = run(ch, world, "abandonment_paths", limit="1000", until=sql_time(NOW))
    assert sum(r["checkouts"] for r in early) < sum(r["checkouts"] for r in late)


def test_pipeline_health(ch: Any, world: dict[str, Any]) -> None:
    rows = run(ch, world, "pipeline_health", at=sql_time(NOW), sla_s=str(3 * 3600))
    assert len(rows) == 1
    row = rows[0]
    landed = [e.received_at for e in world["events"]]
    assert landed and all(at is not None for at in landed)
    last_minute = sum(1 for at in landed if at and NOW - timedelta(seconds=60) < at <= NOW)
    assert last_minute > 0
    assert row["events_per_s"] == round(last_minute / 60, 2)
    assert row["events_last_hour"] == sum(
        1 for at in landed if at and NOW - timedelta(hours=1) < at <= NOW
    )
    assert row["seconds_since_last_event"] == 0  # one event landed exactly at NOW
    recent = Counter(reason for reason, minutes in world["dead"] if minutes < 60)
    assert row["dead_letters_last_hour"] == sum(recent.values()) == 3
    assert row["dead_letter_reasons"] == ", ".join(f"{r} {n}" for r, n in sorted(recent.items()))
    still_open = [a for n, a in enumerate(world["alerts"]) if n % 3 != 0]
    assert row["alerts_open"] == len(still_open) > 0
    past = [a for a in still_open if (NOW - a.occurred_at).total_seconds() > 3 * 3600]
    assert row["alerts_past_sla"] == len(past)
    assert 0 < len(past) < len(still_open)


def test_channels(ch: Any, world: dict[str, Any]) -> None:
    want = {group.split("|")[1] for group in world["groups"]} - {"all"}
    rows = run(ch, world, "channels")
    assert [r["channel"] for r in rows] == sorted(want)
    assert len(want) >= 4
