"""Ground truth on streams small enough to check by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from touchstream.producers.simulator import Message
from touchstream.producers.truth import AmbiguousLateness, ground_truth
from touchstream.schemas.events import family

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # on a 5-minute and 1-hour boundary
N = 0


def msg(
    event_type: str,
    minutes: float,
    kind: str = "event",
    who: str = "c-1",
    channel: str = "web",
    touchpoint: str = "delivery",
    event_id: str | None = None,
    **properties: Any,
) -> Message:
    global N
    N += 1
    event = {
        "event_id": event_id or f"00000000-0000-4000-8000-{N:012d}",
        "event_type": event_type,
        "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
        "customer_id": who,
        "channel": channel,
        "touchpoint": touchpoint,
        "properties": properties,
    }
    return Message(family(event_type), who.encode(), json.dumps(event).encode(), kind)


def test_nps_boundaries_windows_duplicates_and_late() -> None:
    first = msg("nps_response", 0, score=6)
    stream = [
        first,
        msg("nps_response", 1, score=7),
        msg("nps_response", 2, score=9, touchpoint="checkout"),
        msg("nps_response", 4.99, score=10),
        Message(first.family, first.key, first.value, "duplicate"),  # counted once
        msg("page_view", 30),
        msg("nps_response", 5, score=0, kind="out_of_order"),  # 25 min behind: on time
        msg("nps_response", 80, score=10),
        msg("nps_response", 1, score=0, kind="late"),  # 79 min behind its key: late
        Message("feedback", b"x", b"{", "malformed:not_json"),
    ]
    # Lateness 4000 s: on time within 0.4 x 66.7 = 26.7 min, late beyond 66.7 min.
    truth = ground_truth(stream, allowed_lateness_s=4000)
    assert (truth.events, truth.duplicates, truth.late) == (8, 1, 1)
    assert dict(truth.dead_letters) == {"not_json": 1}
    # Overall: 6, 7, 9, 10, 0, 10 → promoters 3, detractors 2 of 6.
    assert truth.total("nps") == (1.0, 6.0, pytest.approx(100 / 6))
    # delivery: 6, 7, 10, 0, 10 → (2 - 2) / 5
    assert truth.total("nps", "web", "delivery") == (0.0, 5.0, 0.0)
    rows = {(r["touchpoint"], r["window_start"], r["window_size"]): r for r in truth.rows()}
    start = int(T0.timestamp())
    # The 5-minute bucket [10:00, 10:05) holds 4 responses; 10:05 opens a new one, so
    # the hour window starting at 10:05 holds just the 0 at 10:05.
    assert rows[("all", start + 300, 3600)]["denominator"] == 1
    assert rows[("all", start, 3600)]["denominator"] == 5
    assert rows[("all", start - 3300, 3600)]["denominator"] == 4
    assert (start - 3600, 3600) not in {(k[1], k[2]) for k in rows}
    assert rows[("all", start - 36_000, 86_400)]["denominator"] == 6  # the UTC day


def test_checkout_abandonment_timeout_and_attribution() -> None:
    def checkout(cid: str, start: float, channel: str = "web") -> Message:
        return msg(
            "checkout_started",
            start,
            channel=channel,
            touchpoint="checkout",
            checkout_id=cid,
            cart_id=f"cart-{cid}",
            value="1",
            currency="EUR",
        )

    def step(cid: str, at: float, touchpoint: str) -> Message:
        return msg("checkout_step", at, touchpoint=touchpoint, checkout_id=cid, step="x")

    def order(cid: str, at: float) -> Message:
        return msg(
            "order_placed",
            at,
            touchpoint="order_confirmation",
            order_id=f"o-{cid}",
            checkout_id=cid,
            total="1",
            currency="EUR",
            items=[{"sku": "s", "category": "a", "quantity": 1, "price": "1"}],
        )

    stream = [
        checkout("a", 0),
        step("a", 1, "payment"),
        order("a", 30),  # exactly at the timeout: done
        checkout("b", 0, "mobile_app"),
        step("b", 2, "payment"),
        order("b", 30.5),  # too late
        checkout("c", 1),
        step("c", 3, "payment"),
        step("c", 31.5, "review"),  # lost at payment
        checkout("d", 200),  # its timeout is not behind the final watermark: undecided
        msg("page_view", 244.9),
    ]
    stream.sort(key=lambda m: json.loads(m.value)["occurred_at"])
    truth = ground_truth(stream, abandonment_timeout_s=1800, allowed_lateness_s=900)
    assert truth.total("checkout_abandonment") == (2.0, 3.0, pytest.approx(2 / 3))
    assert truth.total("checkout_abandonment", "web", "payment") == (1.0, 2.0, 0.5)
    assert truth.total("checkout_abandonment", "mobile_app", "payment") == (1.0, 1.0, 1.0)
    assert truth.undecided["checkout_abandonment"] == 1
    # Carts: completed by their checkout_started (no add_to_cart here: never started).
    assert truth.total("cart_abandonment")[1] == 0
    # Cross-sell reads order_placed: one category in each of the two orders.
    assert truth.total("cross_sell") == (0.0, 2.0, 0.0)


def test_ambiguous_lateness_is_refused() -> None:
    stream = [msg("page_view", 60, who="a"), msg("page_view", 45, who="b")]
    with pytest.raises(AmbiguousLateness):
        ground_truth(stream, allowed_lateness_s=1200)  # 15 min behind, 0.4 x 20 = 8 allowed


def test_churn_and_upsell_by_hand() -> None:
    order: dict[str, Any] = {
        "order_id": "o",
        "total": "1",
        "currency": "EUR",
        "items": [{"sku": "s", "category": "a", "quantity": 1, "price": "1"}],
    }
    sub = {"subscription_id": "s-1", "plan": "basic"}
    stream = [
        msg("order_placed", 0, who="c-a", touchpoint="order_confirmation", **order),
        msg("subscription_started", 1, who="c-b", touchpoint="account", **sub),
        msg("nps_response", 2, who="c-a", touchpoint="delivery", score=3),
        msg("page_view", 3, who="c-a", touchpoint="home", url="/"),
        msg("plan_upgraded", 10, who="c-b", touchpoint="account", **sub),
        msg(
            "subscription_started",
            12,
            who="c-a",
            touchpoint="account",
            subscription_id="s-2",
            plan="basic",
        ),
        msg(
            "subscription_cancelled",
            20,
            who="c-a",
            touchpoint="account",
            subscription_id="s-2",
            plan="basic",
        ),
        msg("page_view", 90, who="c-z", touchpoint="home", url="/"),
    ]
    truth = ground_truth(stream, allowed_lateness_s=600)
    start = int(T0.timestamp())
    rows = {
        (r["kpi"], r["touchpoint"], r["window_start"], r["window_size"]): r for r in truth.rows()
    }
    # c-a churns at 10:20, attributed to its last interaction before (the
    # subscription start at "account") and to its detractor NPS at "delivery".
    hour = start + 20 * 60 - 3600 + 300  # the first hourly window holding 10:20
    row = rows[("churn", "account", hour, 3600)]
    assert (row["numerator"], row["denominator"]) == (1.0, 0.0)  # nobody active before 09:25
    row = rows[("churn", "account", start + 900, 3600)]  # from 10:15: c-a and c-b active
    assert (row["numerator"], row["denominator"], row["value"]) == (1.0, 2.0, 0.5)
    assert rows[("churn_detractor", "delivery", start + 900, 3600)]["numerator"] == 1.0
    # c-b's upgrade at 10:10 over the subscriptions running at 10:05 (c-b's own).
    row = rows[("upsell", "account", start + 300, 3600)]
    assert (row["numerator"], row["denominator"]) == (1.0, 1.0)


def test_anonymous_interactions_count_for_the_customer_they_are_linked_to() -> None:
    def anonymous(event_type: str, minutes: float, touchpoint: str, **props: Any) -> Message:
        m = msg(event_type, minutes, who="a-1", touchpoint=touchpoint, **props)
        event = json.loads(m.value)
        event["anonymous_id"] = event.pop("customer_id")
        return Message(m.family, m.key, json.dumps(event).encode(), m.kind)

    sub = {"subscription_id": "s-1", "plan": "basic"}
    identify = msg("identify", 5, who="c-s", touchpoint="checkout")
    linked = json.loads(identify.value) | {"anonymous_id": "a-1"}
    stream = [
        anonymous("csat_response", 0, "support_chat", score=1),  # a detractor, before identify
        Message(identify.family, identify.key, json.dumps(linked).encode(), identify.kind),
        msg("subscription_started", 6, who="c-s", touchpoint="account", **sub),
        anonymous("page_view", 8, "catalog", url="/c"),  # after the link, anonymous only
        anonymous(
            "order_placed",
            9,
            "order_confirmation",
            order_id="o",
            total="1",
            currency="EUR",
            items=[{"sku": "s", "category": "a", "quantity": 1, "price": "1"}],
        ),
        msg("subscription_cancelled", 20, who="c-s", touchpoint="account", **sub),
        anonymous("page_view", 21, "home", url="/"),
        msg("page_view", 90, who="c-z", touchpoint="home", url="/"),
    ]
    truth = ground_truth(stream, allowed_lateness_s=600)
    start = int(T0.timestamp())
    rows = {
        (r["kpi"], r["touchpoint"], r["window_start"], r["window_size"]): r for r in truth.rows()
    }
    day = (start // 86_400) * 86_400
    # The churn at 10:20 goes to the last interaction before it (the anonymous
    # order at 10:09, a plain interaction) and to the anonymous detractor CSAT.
    assert rows[("churn", "order_confirmation", day, 86_400)]["numerator"] == 1.0
    assert rows[("churn_detractor", "support_chat", day, 86_400)]["numerator"] == 1.0
    # The anonymous order activated nobody: one activation (the subscription).
    assert [delta for _, delta in truth.stocks["active_delta"]] == [1.0, -1.0]


def test_a_customer_quiet_for_the_horizon_starts_afresh() -> None:
    # The worker forgets a customer with nothing running once quiet for the churn
    # horizon; the truth does the same: c-q's detractor NPS before the gap does
    # not attribute the churn after it, c-r's (no gap) does.
    sub = {"subscription_id": "s-1", "plan": "basic"}
    later = {"subscription_id": "s-2", "plan": "basic"}
    stream = [
        msg("nps_response", 0, who="c-q", touchpoint="delivery", score=2),
        msg("nps_response", 0, who="c-r", touchpoint="delivery", score=2),
        msg("page_view", 1, who="c-q", touchpoint="home", url="/"),
        msg("page_view", 1, who="c-r", touchpoint="home", url="/"),
        msg("subscription_started", 62, who="c-q", touchpoint="account", **sub),
        msg("subscription_started", 60, who="c-r", touchpoint="account", **sub),
        msg("subscription_cancelled", 70, who="c-q", touchpoint="account", **sub),
        msg("subscription_cancelled", 70, who="c-r", touchpoint="account", **sub),
        msg("subscription_started", 71, who="c-z", touchpoint="account", **later),
        msg("page_view", 150, who="c-z", touchpoint="home", url="/"),
    ]
    truth = ground_truth(stream, allowed_lateness_s=600, churn_horizon_s=3600)
    start = int(T0.timestamp())
    rows = {
        (r["kpi"], r["touchpoint"], r["window_start"], r["window_size"]): r for r in truth.rows()
    }
    # Both churn at 11:10; c-q was quiet from 10:01 past 11:01 (the horizon) when
    # it came back at 11:02, c-r came back at 11:00.
    day = start - 10 * 3600
    assert rows[("churn", "account", day, 86_400)]["numerator"] == 2.0
    assert rows[("churn_detractor", "delivery", day, 86_400)]["numerator"] == 1.0
