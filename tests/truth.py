"""Ground truth for the CX page's tests: KPIs worked out from the wire events a test
sent, by PRODUCT.md's definitions, in plain Python (no stream or SQL code), so the
pipeline and the page are checked against something they do not share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

Wire = dict[str, Any]
ALL = "all"


def occurred(event: Wire) -> datetime:
    return datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00"))


def unique(events: Iterable[Wire]) -> list[Wire]:
    """One event per event_id (a re-sent event counts once), in event-time order."""
    seen: dict[str, Wire] = {}
    for event in events:
        seen.setdefault(str(event["event_id"]), event)
    return sorted(seen.values(), key=lambda e: (occurred(e), str(e["event_id"])))


def nps(
    events: Iterable[Wire], since: datetime, until: datetime, channel: str = ALL
) -> dict[str, tuple[int, int]]:
    """touchpoint → (promoters − detractors, responses) of nps_response events in
    [since, until), one channel or all; ``'all'`` sums the touchpoints."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in unique(events):
        if e["event_type"] != "nps_response" or not since <= occurred(e) < until:
            continue
        if channel != ALL and e["channel"] != channel:
            continue
        score = int(e["properties"]["score"])
        for key in (e["touchpoint"], ALL):
            out[key][0] += (score >= 9) - (score <= 6)
            out[key][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


@dataclass(frozen=True)
class Checkout:
    checkout_id: str
    channel: str  # of its checkout_started
    touchpoint: str  # of its last checkout_started/step at or before the outcome
    started_at: datetime
    outcome_at: datetime  # the order, or the deadline
    abandoned: bool


def checkouts(events: Iterable[Wire], timeout_s: float = 1800) -> list[Checkout]:
    """Every started checkout, decided as if event time had passed all deadlines:
    abandoned when no order_placed for it came within the timeout of its start."""
    by_id: dict[str, list[Wire]] = defaultdict(list)
    for e in unique(events):
        checkout_id = e.get("properties", {}).get("checkout_id")
        if checkout_id and e["event_type"] in ("checkout_started", "checkout_step", "order_placed"):
            by_id[checkout_id].append(e)
    out = []
    for checkout_id, items in by_id.items():
        starts = [e for e in items if e["event_type"] == "checkout_started"]
        if not starts:
            continue
        start = starts[0]
        deadline = occurred(start) + timedelta(seconds=timeout_s)
        orders = [occurred(e) for e in items if e["event_type"] == "order_placed"]
        on_time = [at for at in orders if at <= deadline]
        outcome_at = min(on_time) if on_time else deadline
        touches = [
            e
            for e in items
            if e["event_type"] in ("checkout_started", "checkout_step")
            and occurred(e) <= outcome_at
        ]
        out.append(
            Checkout(
                checkout_id,
                start["channel"],
                touches[-1]["touchpoint"],
                occurred(start),
                outcome_at,
                abandoned=not on_time,
            )
        )
    return out


def abandonment(
    events: Iterable[Wire],
    since: datetime,
    until: datetime,
    channel: str = ALL,
    timeout_s: float = 1800,
) -> dict[str, tuple[int, int]]:
    """touchpoint → (abandoned, decided) of the checkouts started in [since, until)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in checkouts(events, timeout_s):
        if not since <= c.started_at < until or (channel != ALL and c.channel != channel):
            continue
        for key in (c.touchpoint, ALL):
            out[key][0] += c.abandoned
            out[key][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def tiles(until: datetime, span_s: int, size_s: int = 3600, step_s: int = 300) -> tuple[int, int]:
    """[start, end) in epoch seconds that the page's window covers: the rolling window
    ending at the first step boundary after ``until``, and whole windows before it."""
    end = int(until.timestamp()) // step_s * step_s + step_s
    count = -(-span_s // size_s)
    return end - count * size_s, end
