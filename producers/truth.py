"""Ground truth: what a correct pipeline makes of a simulated stream.

Computed from the messages as sent, straight from PRODUCT.md's definitions in
plain Python (no pipeline code: no pydantic models, no streams.*), so that tests
and benchmarks can reconcile the pipeline's output exactly:

- every message is a valid event (first delivery), a duplicate (event_id seen
  before), a late event (older than its own key's newest event on the same topic
  minus the allowed lateness: late on any partition), or a dead letter;
- an on-time event is at most 0.4 × lateness older than the newest event sent
  before it; anything between the two is ambiguous (it depends on what else the
  partition carries) and is refused, so the truth never guesses;
- KPIs are counted per (kpi, channel, touchpoint) and overall ("all", "all") in
  hopping windows (size, step) and daily windows, from on-time unique events;
  checkout/cart abandonment from entities whose outcome is decided by the end of
  the stream (the stream's final watermark: its newest event time minus the
  lateness).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from touchstream.producers.simulator import Message
from touchstream.settings import StreamsSettings

DAY_S = 86_400
OVERALL = "all"

# kpi → (numerator: counts added, counts subtracted; denominator; scale), PRODUCT.md
RATIOS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, float]] = {
    "nps": (("promoters",), ("detractors",), "responses", 100.0),
    "csat": (("satisfied",), (), "responses", 1.0),
    "ces": (("score_sum",), (), "responses", 1.0),
    "ces_easy_share": (("easy",), (), "responses", 1.0),
    "isn": (("satisfied",), ("dissatisfied",), "responses", 100.0),
    "comments_positive_share": (("positive",), (), "comments", 1.0),
    "retention": (("retained",), (), "decisions", 1.0),
    "cross_sell": (("multi_category",), (), "orders", 1.0),
    "checkout_abandonment": (("abandoned",), (), "decided", 1.0),
    "cart_abandonment": (("abandoned",), (), "decided", 1.0),
}
# Rates over a stock: numerator count, and the stock whose level at the window
# start is the denominator (customers active; subscriptions active).
STOCK_RATIOS: dict[str, tuple[str, str]] = {
    "churn": ("churned", "active_delta"),
    "churn_detractor": ("churned", "active_delta"),
    "upsell": ("upgrades", "subscriptions"),
}
STOCK_KPI = {"active_delta": "churn", "subscriptions": "upsell"}
CHURN_HORIZON_S = 90 * DAY_S


Counts = dict[str, float]


class AmbiguousLateness(ValueError):
    """A message neither surely on time nor surely late: the stream is not fit for truth."""


@dataclass
class Truth:
    window_size_s: int
    window_step_s: int
    daily: bool
    allowed_lateness_s: float
    abandonment_timeout_s: float
    messages: int = 0
    events: int = 0  # distinct valid events (on time and late): rows of `events`
    late: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    # (kpi, channel, touchpoint, window_start, window_size) → counts
    windows: dict[tuple[str, str, str, int, int], Counts] = field(default_factory=dict)
    # (kpi, channel, touchpoint) → counts over the whole stream
    totals: dict[tuple[str, str, str], Counts] = field(default_factory=dict)
    undecided: dict[str, int] = field(default_factory=dict)
    # stock → [(event time, +1 or -1)]: active customers, active subscriptions
    stocks: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def stock(self, name: str, at: float) -> float:
        """The level of a stock just before ``at``."""
        return sum(delta for t, delta in self.stocks.get(name, []) if t < at)

    def value(
        self, kpi: str, counts: Counts, window_start: float | None = None
    ) -> tuple[float, float, float | None]:
        if kpi in STOCK_RATIOS:
            count, stock = STOCK_RATIOS[kpi]
            numerator = counts.get(count, 0.0)
            level = self.stock(stock, window_start) if window_start is not None else 0.0
            return numerator, level, numerator / level if level else None
        plus, minus, denominator_name, scale = RATIOS[kpi.split(":", 1)[0]]
        numerator = sum(counts.get(n, 0.0) for n in plus) - sum(counts.get(n, 0.0) for n in minus)
        denominator = counts.get(denominator_name, 0.0)
        return numerator, denominator, scale * numerator / denominator if denominator else None

    def total(
        self, kpi: str, channel: str = OVERALL, touchpoint: str = OVERALL
    ) -> tuple[float, float, float | None]:
        """(numerator, denominator, value) of a KPI over the whole stream."""
        return self.value(kpi, self.totals.get((kpi, channel, touchpoint), {}))

    def rows(self) -> list[dict[str, Any]]:
        """One row per KPI window, as ``kpi_touchpoint`` holds them."""
        out = []
        for (kpi, channel, touchpoint, start, size), counts in sorted(self.windows.items()):
            numerator, denominator, value = self.value(kpi, counts, start)
            out.append(
                {
                    "kpi": kpi,
                    "channel": channel,
                    "touchpoint": touchpoint,
                    "window_start": start,
                    "window_size": size,
                    "numerator": numerator,
                    "denominator": denominator,
                    "value": value,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": {
                "window_size_s": self.window_size_s,
                "window_step_s": self.window_step_s,
                "daily": self.daily,
                "allowed_lateness_s": self.allowed_lateness_s,
                "abandonment_timeout_s": self.abandonment_timeout_s,
            },
            "messages": self.messages,
            "events": self.events,
            "late": self.late,
            "duplicates": self.duplicates,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "by_type": dict(sorted(self.by_type.items())),
            "undecided": self.undecided,
            "totals": [
                {
                    "kpi": kpi,
                    "channel": channel,
                    "touchpoint": touchpoint,
                    **dict(
                        zip(("numerator", "denominator", "value"), self.value(kpi, c), strict=True)
                    ),
                }
                for (kpi, channel, touchpoint), c in sorted(self.totals.items())
                if kpi not in STOCK_RATIOS  # a stock has no level over a whole stream
            ],
            "windows": self.rows(),
        }


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ground_truth(
    messages: Iterable[Message],
    *,
    window_size_s: int = 3600,
    window_step_s: int = 300,
    daily: bool = True,
    allowed_lateness_s: float = 600.0,
    abandonment_timeout_s: float = 1800.0,
    churn_horizon_s: float = CHURN_HORIZON_S,
) -> Truth:
    truth = Truth(window_size_s, window_step_s, daily, allowed_lateness_s, abandonment_timeout_s)
    seen: set[str] = set()
    newest = float("-inf")
    newest_of: dict[tuple[str, bytes], float] = {}
    on_time: list[dict[str, Any]] = []
    for message in messages:
        truth.messages += 1
        if message.kind.startswith("malformed:"):
            truth.dead_letters[message.kind.split(":", 1)[1]] += 1
            continue
        event = json.loads(message.value)
        at = _epoch(event["occurred_at"])
        stream = (message.family, message.key)
        if event["event_id"] in seen:
            truth.duplicates += 1
        else:
            seen.add(event["event_id"])
            truth.events += 1
            truth.by_type[event["event_type"]] += 1
            if at < newest_of.get(stream, at) - allowed_lateness_s:
                truth.late += 1
            elif at >= newest - 0.4 * allowed_lateness_s - 1e-6:
                event["_at"] = at
                on_time.append(event)
            else:
                raise AmbiguousLateness(f"event {event['event_id']} at {event['occurred_at']}")
        newest = max(newest, at)
        newest_of[stream] = max(newest_of.get(stream, at), at)
    for event in on_time:
        for kpi, counts in _counts(event).items():
            _add(truth, kpi, event["channel"], event["touchpoint"], event["_at"], counts)
    _abandonment(truth, on_time, newest - allowed_lateness_s)
    _customers(truth, on_time, newest - allowed_lateness_s, churn_horizon_s)
    return truth


def _counts(event: dict[str, Any]) -> dict[str, dict[str, float]]:
    kind, props = event["event_type"], event.get("properties", {})
    score = props.get("score")
    if kind == "nps_response":
        return {
            "nps": {
                "responses": 1,
                "promoters": score in (9, 10),
                "passives": score in (7, 8),
                "detractors": score <= 6,
            }
        }
    if kind == "csat_response":
        return {"csat": {"responses": 1, "satisfied": score in (4, 5)}}
    if kind == "ces_response":
        return {
            "ces": {"responses": 1, "score_sum": score},
            "ces_easy_share": {"responses": 1, "easy": score >= 5},
        }
    if kind == "isn_response":
        return {
            f"isn:{props['attribute']}": {
                "responses": 1,
                "satisfied": score in (4, 5),
                "dissatisfied": score in (1, 2),
            }
        }
    if kind == "comment":
        label = props.get("sentiment")
        positive = label == "positive" if label else (score is not None and score >= 4)
        return {"comments_positive_share": {"comments": 1, "positive": positive}}
    if kind in ("cancellation_retained", "subscription_cancelled"):
        return {"retention": {"decisions": 1, "retained": kind == "cancellation_retained"}}
    if kind == "order_placed":
        categories = {item["category"] for item in props["items"]}
        return {"cross_sell": {"orders": 1, "multi_category": len(categories) >= 2}}
    return {}


def _windows(truth: Truth, at: float) -> list[tuple[int, int]]:
    size, step = truth.window_size_s, truth.window_step_s
    out = []
    start = int(at // step) * step
    while start > at - size:
        out.append((start, size))
        start -= step
    if truth.daily:
        out.append((int(at // DAY_S) * DAY_S, DAY_S))
    return out


def _add(
    truth: Truth,
    kpi: str,
    channel: str,
    touchpoint: str,
    at: float,
    counts: dict[str, Any],
    overall: bool = True,
) -> None:
    groups = [(channel, touchpoint)] + ([(OVERALL, OVERALL)] if overall else [])
    for group in groups:
        total = truth.totals.setdefault((kpi, *group), {})
        for name, count in counts.items():
            total[name] = total.get(name, 0.0) + float(count)
        for start, size in _windows(truth, at):
            window = truth.windows.setdefault((kpi, *group, start, size), {})
            for name, count in counts.items():
                window[name] = window.get(name, 0.0) + float(count)


def _abandonment(truth: Truth, events: list[dict[str, Any]], final_watermark: float) -> None:
    """Checkouts (started by checkout_started, moved by checkout_step, completed by
    order_placed) and carts (started by add_to_cart, moved by remove_from_cart,
    completed by checkout_started) within the timeout, PRODUCT.md."""
    kinds = {"checkout": "checkout_abandonment", "cart": "cart_abandonment"}
    # kind → id → {"start": (at, channel), "touches": [(at, touchpoint)], "done": at}
    entities: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)

    def entity(kind: str, entity_id: str) -> dict[str, Any]:
        return entities[kind].setdefault(entity_id, {"touches": []})

    for e in events:
        kind, props, at = e["event_type"], e.get("properties", {}), e["_at"]
        if kind == "checkout_started":
            _start(entity("checkout", props["checkout_id"]), at, e["channel"], e["touchpoint"])
            _done(entity("cart", props["cart_id"]), at)
        elif kind == "checkout_step":
            entity("checkout", props["checkout_id"])["touches"].append((at, e["touchpoint"]))
        elif kind == "order_placed" and props.get("checkout_id"):
            _done(entity("checkout", props["checkout_id"]), at)
        elif kind == "add_to_cart":
            _start(entity("cart", props["cart_id"]), at, e["channel"], e["touchpoint"])
        elif kind == "remove_from_cart":
            entity("cart", props["cart_id"])["touches"].append((at, e["touchpoint"]))
    timeout = truth.abandonment_timeout_s
    for kind, by_id in entities.items():
        undecided = 0
        for item in by_id.values():
            if "start" not in item:
                continue  # progress without a start: never decided
            started_at, channel = item["start"]
            done: float | None = item.get("done")
            completed = done is not None and done - started_at <= timeout
            outcome_at = done if done is not None and completed else started_at + timeout
            if outcome_at > final_watermark:
                undecided += 1
                continue
            before = [t for t in sorted(item["touches"]) if t[0] <= outcome_at]
            touchpoint = before[-1][1] if before else ""
            counts = {"decided": 1, "abandoned": not completed}
            _add(truth, kinds[kind], channel, touchpoint, started_at, counts)
        truth.undecided[kinds[kind]] = undecided


def _start(item: dict[str, Any], at: float, channel: str, touchpoint: str) -> None:
    if "start" not in item or at < item["start"][0]:
        item["start"] = (at, channel)
    item["touches"].append((at, touchpoint))


def _done(item: dict[str, Any], at: float) -> None:
    done = item.get("done")
    if done is None or at < done:
        item["done"] = at


def truth_for(messages: Iterable[Message], streams: StreamsSettings) -> Truth:
    """The ground truth under a worker's stream settings (windows, lateness, timeouts)."""
    return ground_truth(
        messages,
        window_size_s=streams.window_size_s,
        window_step_s=streams.window_step_s,
        daily=streams.daily_window,
        allowed_lateness_s=streams.allowed_lateness_s,
        abandonment_timeout_s=streams.abandonment_timeout_s,
        churn_horizon_s=streams.churn_horizon_s,
    )


def _detractor(event: dict[str, Any]) -> bool:
    kind, props = event["event_type"], event.get("properties", {})
    score = props.get("score")
    if kind == "nps_response":
        return bool(score <= 6)
    if kind in ("csat_response", "ces_response"):
        return bool(score <= 2)
    if kind == "comment":
        label = props.get("sentiment")
        return label == "negative" if label else (score is not None and score <= 2)
    return False


SUBSCRIPTION_KINDS = ("subscription_started", "subscription_cancelled", "plan_upgraded")


def _customers(
    truth: Truth, events: list[dict[str, Any]], final_watermark: float, horizon_s: float
) -> None:
    """Churn (two attributions) and upsell, PRODUCT.md with the README's choices:
    active from the first order or subscription; churned on subscription_cancelled
    or when the horizon passes after the last order with no subscription running;
    attributed to the last interaction (and the last detractor feedback) before
    the churning moment, anonymous events included once their id is linked to
    the customer; rates over the stock active at the window start. A customer
    with nothing running, quiet for the horizon since their last interaction or
    churn, is forgotten: a later interaction starts afresh."""
    timelines: dict[str, list[tuple[float, str, str, str, bool, str]]] = defaultdict(list)
    # Identity stitching: an anonymous id belongs to the customer of its latest
    # link in event time (identify, or any event carrying both ids); its events
    # are that customer's interactions (orders and subscriptions count only with
    # a customer_id).
    links: dict[str, tuple[float, str]] = {}
    for e in events:
        if e.get("customer_id") and e.get("anonymous_id"):
            link = (e["_at"], e["customer_id"])
            links[e["anonymous_id"]] = max(links.get(e["anonymous_id"], link), link)
    for e in events:
        customer = e.get("customer_id")
        kind = e["event_type"]
        if not customer:
            linked = links.get(e.get("anonymous_id") or "")
            if linked is None:
                continue
            customer, kind = linked[1], "touch"
        if kind == "order_placed":
            kind = "order"
        elif kind not in SUBSCRIPTION_KINDS:
            kind = "touch"
        subscription = e["properties"]["subscription_id"] if kind in SUBSCRIPTION_KINDS else ""
        timelines[customer].append(
            (e["_at"], kind, e["channel"], e["touchpoint"], _detractor(e), subscription)
        )
    stocks: dict[str, list[tuple[float, float]]] = {"active_delta": [], "subscriptions": []}

    def stock(name: str, at: float, delta: float) -> None:
        stocks[name].append((at, delta))
        _add(truth, STOCK_KPI[name], OVERALL, OVERALL, at, {name: delta}, overall=False)

    for timeline in timelines.values():
        timeline.sort()
        active = False
        last_order: float | None = None
        last_touch: tuple[str, str] | None = None
        last_detractor: tuple[str, str] | None = None
        running: dict[str, bool] = {}
        last_seen: float | None = None  # the last interaction or churn, in event time

        def churn(at: float, touch: tuple[str, str] | None, bad: tuple[str, str] | None) -> bool:
            nonlocal last_seen
            last_seen = at if last_seen is None else max(last_seen, at)
            stock("active_delta", at, -1.0)
            if touch is not None:
                _add(truth, "churn", *touch, at, {"churned": 1}, overall=False)
            _add(truth, "churn", OVERALL, OVERALL, at, {"churned": 1}, overall=False)
            if bad is not None:
                _add(truth, "churn_detractor", *bad, at, {"churned": 1})
            return False  # no longer active

        for at, kind, channel, touchpoint, detractor, subscription in timeline:
            if at > final_watermark:
                break
            if active and last_order is not None and not any(running.values()):
                if last_order + horizon_s < at and last_order + horizon_s <= final_watermark:
                    active = churn(last_order + horizon_s, last_touch, last_detractor)
            if (
                not active
                and not any(running.values())
                and last_seen is not None
                and last_seen + horizon_s < at
            ):
                # Quiet for the horizon with nothing running: forgotten, so what
                # follows starts afresh (no detractor feedback from before).
                last_order = last_touch = last_detractor = last_seen = None
                running = {}
            if kind in ("order", "subscription_started") and not active:
                active = True
                stock("active_delta", at, 1.0)
            if kind == "order":
                last_order = at
            elif kind == "subscription_started" and not running.get(subscription):
                running[subscription] = True
                stock("subscriptions", at, 1.0)
            elif kind == "subscription_cancelled":
                if running.get(subscription):
                    stock("subscriptions", at, -1.0)
                running[subscription] = False
                if active:
                    active = churn(at, last_touch, last_detractor)
            elif kind == "plan_upgraded":
                _add(truth, "upsell", channel, touchpoint, at, {"upgrades": 1})
            last_touch = (channel, touchpoint)
            last_seen = at
            if detractor:
                last_detractor = (channel, touchpoint)
        if active and last_order is not None and not any(running.values()):
            if last_order + horizon_s <= final_watermark:
                churn(last_order + horizon_s, last_touch, last_detractor)
    truth.stocks = stocks
