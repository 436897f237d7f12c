"""Churn (two attributions) and upsell, worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

from touchstream.streams.aggregate import KpiAggregator
from touchstream.streams.customers import CustomerBook, Touch
from touchstream.streams.kpis import Contribution
from touchstream.streams.windows import Window

DAY = 86_400.0
H = 90 * DAY
NOW = datetime(2026, 11, 2, tzinfo=UTC)


def touch(
    at: float, kind: str = "touch", tp: str = "home", bad: bool = False, sub: str = ""
) -> Touch:
    return [at, kind, "web", tp, bad, sub]


def summary(out: list[Contribution]) -> list[tuple[str, str, float, tuple[tuple[str, float], ...]]]:
    return [(c.kpi, c.touchpoint, c.at, c.counts) for c in out]


def test_cancellation_churns_attributed_to_the_last_touch_before_it_and_the_last_detractor() -> (
    None
):
    book = CustomerBook({}, H)
    # Arrival order differs from event time: the touch at 150 comes last.
    book.add("c1", [touch(100, "order", "checkout"), touch(120, tp="delivery", bad=True)])
    book.add("c1", [touch(200, "subscription_cancelled", "account", sub="s1")])
    book.add("c1", [touch(150, tp="support_chat")])
    # Up to 199 only the order is applied: it activates the customer.
    assert summary(book.decide(199)) == [("churn", "all", 100, (("active_delta", 1.0),))]
    out = book.decide(250)
    assert summary(out) == [
        ("churn", "all", 200, (("active_delta", -1.0),)),
        ("churn", "support_chat", 200, (("churned", 1.0),)),
        ("churn", "all", 200, (("churned", 1.0),)),
        ("churn_detractor", "delivery", 200, (("churned", 1.0),)),
        ("churn_detractor", "all", 200, (("churned", 1.0),)),
    ]


def test_activation_horizon_exactly_and_reactivation() -> None:
    book = CustomerBook({}, H)
    book.add("c2", [touch(0, "order")])
    assert summary(book.decide(10)) == [("churn", "all", 0, (("active_delta", 1.0),))]
    assert book.decide(H - 1) == []  # one second before the horizon: still active
    churned = summary(book.decide(H))  # the horizon reached exactly
    assert churned[0] == ("churn", "all", H, (("active_delta", -1.0),))
    assert ("churn", "home", H, (("churned", 1.0),)) in churned
    assert not any(k == "churn_detractor" for k, *_ in churned)  # no detractor feedback
    book.add("c2", [touch(H + 5, "order")])
    assert summary(book.decide(H + 10)) == [("churn", "all", H + 5, (("active_delta", 1.0),))]


def test_a_running_subscription_holds_off_the_horizon_and_upgrades_count() -> None:
    book = CustomerBook({}, H)
    book.add("c3", [touch(0, "order"), touch(5, "subscription_started", "account", sub="s")])
    book.add("c3", [touch(50, "plan_upgraded", "account", sub="s")])
    out = summary(book.decide(2 * H))
    assert ("upsell", "all", 5, (("subscriptions", 1.0),)) in out
    assert ("upsell", "account", 50, (("upgrades", 1.0),)) in out
    assert not any(k == "churn" and c == (("churned", 1.0),) for k, _, _, c in out)


def test_a_replayed_batch_changes_nothing() -> None:
    store: dict[str, object] = {}
    book = CustomerBook(store, H)
    batch = [touch(10, "order"), touch(20, "subscription_cancelled", sub="s")]
    book.add("c4", batch)
    book.add("c4", batch)  # still pending: not added twice
    first = book.decide(30)
    book.add("c4", batch)  # behind the watermark it was decided to: a replay
    assert book.decide(40) == []
    assert sum(1 for c in first if c.counts == (("churned", 1.0),)) == 2  # touchpoint + overall
    rebuilt = CustomerBook(store, H)
    rebuilt.rebuild()
    assert rebuilt.decide(50) == []


def test_the_denominator_is_the_stock_at_the_window_start() -> None:
    aggregator = KpiAggregator({}, 3600, 300)
    for at, delta in ((100.0, 1.0), (200.0, 1.0), (4000.0, 1.0), (5000.0, -1.0)):
        aggregator.add(Contribution("churn", "all", "all", at, (("active_delta", delta),)))
    dirty = aggregator.add(Contribution("churn", "web", "home", 5000.0, (("churned", 1.0),)))
    window = Window(3900, 3600)  # starts after the first two activations
    assert ("churn|web|home", window) in dirty
    update = aggregator.update("churn|web|home", window, 1, NOW)
    assert (update.numerator, update.denominator, update.value) == (1.0, 2.0, 0.5)
    # A later activation before that window's start re-emits it with a new stock.
    again = aggregator.add(Contribution("churn", "all", "all", 3000.0, (("active_delta", 1.0),)))
    assert ("churn|web|home", window) in again
    assert aggregator.update("churn|web|home", window, 2, NOW).denominator == 3.0
