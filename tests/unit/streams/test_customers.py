"""Churn (two attributions) and upsell, worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from touchstream.schemas import parse_object
from touchstream.streams.aggregate import KpiAggregator
from touchstream.streams.customers import (
    AnonymousBook,
    CustomerBook,
    Touch,
    anonymous_touch_of,
    link_of,
    touch_of,
)
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
    assert ("churn|web|home", window) in aggregator.windows_of(dirty)
    update = aggregator.update("churn|web|home", window, 1, NOW)
    assert (update.numerator, update.denominator, update.value) == (1.0, 2.0, 0.5)
    # A later activation before that window's start re-emits it with a new stock.
    again = aggregator.add(Contribution("churn", "all", "all", 3000.0, (("active_delta", 1.0),)))
    assert ("churn|web|home", window) in aggregator.windows_of(again)
    assert aggregator.update("churn|web|home", window, 2, NOW).denominator == 3.0


# Identity stitching: anonymous ids' interactions count for their customer.


def test_a_link_hands_the_anonymous_history_to_the_customer_and_later_touches_follow() -> None:
    anonymous = AnonymousBook({}, H)
    before = [touch(10, tp="home"), touch(20, tp="support_chat", bad=True), touch(30, tp="search")]
    assert anonymous.add("a1", before) == []  # nobody to give them to yet
    # The link hands over the latest interaction and the latest detractor feedback.
    assert anonymous.link("a1", "c1", 40) == [("c1", [touch(30, tp="search"), before[1]])]
    assert anonymous.link("a1", "c1", 50) == []  # the same customer again: nothing new
    after = [touch(60, tp="catalog")]
    assert anonymous.add("a1", after) == [("c1", after)]  # once linked, one by one
    # A later link to another customer wins (as ClickHouse's identities view says),
    # with the summary as last refreshed: a linked id's state is written once per
    # step of the horizon (a day at 90 days), not at every batch.
    assert anonymous.link("a1", "c2", 70) == [("c2", [touch(30, tp="search"), before[1]])]
    assert anonymous.link("a1", "c1", 65) == []  # an older link changes nothing
    day = anonymous.step_s
    assert anonymous.add("a1", [touch(70 + 2 * day, tp="home")]) == [
        ("c2", [touch(70 + 2 * day, tp="home")])
    ]
    assert anonymous.store["a1"]["touch"] == touch(70 + 2 * day, tp="home")  # refreshed


def test_a_linked_id_repeating_its_link_costs_no_write_within_a_step() -> None:
    writes: list[str] = []

    class Store(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    anonymous = AnonymousBook(Store(), H)
    anonymous.link("a2", "c2", 100)
    for at in range(110, 200, 10):  # every identified event links again
        anonymous.link("a2", "c2", at)
        anonymous.add("a2", [touch(at + 1)])
    assert writes == ["a2"]
    anonymous.link("a2", "c2", 100 + anonymous.step_s + 1)  # a step later: refreshed
    assert writes == ["a2", "a2"]


def test_anonymous_ids_quiet_for_the_horizon_are_forgotten_even_after_a_restart() -> None:
    store: dict[str, object] = {}
    anonymous = AnonymousBook(store, H)
    anonymous.add("old", [touch(0)])
    anonymous.add("new", [touch(100)])
    assert anonymous.expire(H - 1) == 0
    rebuilt = AnonymousBook(store, H)
    rebuilt.rebuild()
    assert rebuilt.expire(H) == 1 and set(store) == {"new"}


def test_a_stitched_touch_behind_the_watermark_becomes_the_attribution_of_the_churn() -> None:
    book = CustomerBook({}, H)
    book.add("c5", [touch(100, "order", "checkout"), touch(110, tp="delivery")])
    book.add("c5", [touch(500, "subscription_cancelled", "account", sub="s")])
    first = summary(book.decide(600))
    assert ("churn", "delivery", 500, (("churned", 1.0),)) in first
    assert not any(k == "churn_detractor" for k, *_ in first)  # no detractor feedback yet
    # An anonymous support chat at 300 (a detractor) arrives after the link, once
    # the churn at 500 is decided: the churn moves to it, in both attributions.
    late = book.add("c5", [touch(300, tp="support_chat", bad=True)])
    assert summary(late) == [
        ("churn", "delivery", 500, (("churned", -1.0),)),
        ("churn", "support_chat", 500, (("churned", 1.0),)),
        ("churn_detractor", "all", 500, (("churned", 1.0),)),
        ("churn_detractor", "support_chat", 500, (("churned", 1.0),)),
    ]
    # Replayed, or older than what the churn used, or after it: nothing changes.
    assert book.add("c5", [touch(300, tp="support_chat", bad=True)]) == []
    assert book.add("c5", [touch(105, tp="home")]) == []
    assert book.add("c5", [touch(550, tp="home")]) == []
    # A second churn later is attributed to the newest interaction before it.
    book.add("c5", [touch(700, "order", "checkout")])
    second = summary(book.decide(700 + H))
    assert ("churn", "checkout", 700 + H, (("churned", 1.0),)) in second
    assert ("churn_detractor", "support_chat", 700 + H, (("churned", 1.0),)) in second


def test_orders_and_subscriptions_without_a_customer_id_are_plain_interactions() -> None:
    book = CustomerBook({}, H)
    anonymous = AnonymousBook({}, H)
    # anonymous_touch_of makes every anonymous event a "touch": it never activates.
    for customer_id, touches in anonymous.link("a9", "c9", 5) + anonymous.add(
        "a9", [touch(10, tp="order_confirmation")]
    ):
        book.add(customer_id, touches)
    assert book.decide(2 * H) == []  # never active: no stock, no churn


def test_which_events_link_ids_and_which_are_anonymous_interactions() -> None:
    def event(**who: str) -> Any:
        return parse_object(
            {
                "event_id": "00000000-0000-4000-8000-000000000001",
                "event_type": "csat_response",
                "schema_version": 1,
                "occurred_at": "2026-11-02T10:00:00+00:00",
                "channel": "whatsapp",
                "touchpoint": "support_chat",
                "properties": {"score": 2},
                **who,
            }
        )

    at = datetime(2026, 11, 2, 10, tzinfo=UTC).timestamp()
    both = event(anonymous_id="a-1", customer_id="c-1")
    assert link_of(both) == ("a-1", "c-1", at) and anonymous_touch_of(both) is None
    alone = event(anonymous_id="a-1")
    assert link_of(alone) is None and touch_of(alone) is None
    assert anonymous_touch_of(alone) == ("a-1", [at, "touch", "whatsapp", "support_chat", True, ""])
    assert link_of(event(customer_id="c-1")) is None


def test_a_quiet_customer_with_nothing_running_is_forgotten_after_the_horizon() -> None:
    # Churned at 200 (cancellation) after a detractor NPS: kept for the horizon,
    # then forgotten. An order after that starts afresh: its churn has no
    # detractor attribution. A touch before the horizon keeps the state.
    store: dict[str, Any] = {}
    book = CustomerBook(store, H)
    book.add("c9", [touch(100, "order"), touch(150, tp="delivery", bad=True)])
    book.add("c9", [touch(200, "subscription_cancelled", "account", sub="s1")])
    book.add("c9", [touch(210, "subscription_started", "account", sub="s2")])
    book.add("c9", [touch(220, "subscription_cancelled", "account", sub="s2")])
    book.decide(300)
    assert book.decide(220 + H - 1) == [] and "c9" in store
    assert book.decide(220 + H) == [] and "c9" not in store  # quiet for the horizon
    book.add("c9", [touch(2 * H, "order", "checkout")])
    book.add("c9", [touch(2 * H + 10, "subscription_started", "account", sub="s3")])
    book.add("c9", [touch(2 * H + 20, "subscription_cancelled", "account", sub="s3")])
    out = summary(book.decide(2 * H + 30))
    assert ("churn", "account", 2 * H + 20, (("churned", 1.0),)) in out
    assert [c for c in out if c[0] == "churn_detractor"] == []  # the old NPS is gone
    # Never ordered: only browsing, forgotten a horizon after the last touch; a
    # touch within the horizon keeps it (and moves the date).
    book.add("v1", [touch(10), touch(20 + H - 1)])
    book.decide(30 + H)
    assert "v1" in store
    book.decide(20 + 2 * H - 1)
    assert book.decide(20 + 2 * H) == [] and "v1" not in store
    # A restart rebuilds the due times from the store.
    book.add("v2", [touch(3 * H)])
    book.decide(3 * H + 1)
    again = CustomerBook(dict(store), H)
    again.rebuild()
    again.decide(4 * H)
    assert "v2" not in again.store
