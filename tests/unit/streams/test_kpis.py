from __future__ import annotations

import pytest

from tests.samples import wire
from touchstream.schemas import Invalid, parse_object
from touchstream.schemas.events import AnyEvent
from touchstream.streams.kpis import (
    OVERALL,
    contributions,
    contributions_of,
    event_counts,
    merge,
    score_counts,
    value_of,
)


@pytest.mark.parametrize(
    ("score", "promoter", "passive", "detractor"),
    [(0, 0, 0, 1), (6, 0, 0, 1), (7, 0, 1, 0), (8, 0, 1, 0), (9, 1, 0, 0), (10, 1, 0, 0)],
)
def test_nps_boundaries(score: int, promoter: int, passive: int, detractor: int) -> None:
    counts = score_counts("nps_response", score)["nps"]
    assert (counts["promoters"], counts["passives"], counts["detractors"]) == (
        promoter,
        passive,
        detractor,
    )


def test_nps_value_by_hand() -> None:
    # 3 promoters, 1 passive, 2 detractors: (3 - 2) / 6 * 100
    counts = {"responses": 6, "promoters": 3, "passives": 1, "detractors": 2}
    assert value_of("nps", counts) == (1, 6, pytest.approx(16.6667, abs=1e-4))
    assert value_of("nps", {"responses": 2, "promoters": 0, "detractors": 2}) == (-2, 2, -100.0)


def test_csat_counts_four_and_five_as_satisfied() -> None:
    satisfied = [score_counts("csat_response", s)["csat"]["satisfied"] for s in range(1, 6)]
    assert satisfied == [0, 0, 0, 1, 1]
    assert value_of("csat", {"responses": 4, "satisfied": 3}) == (3, 4, 0.75)


def test_ces_mean_and_easy_share() -> None:
    counts = score_counts("ces_response", 5)
    assert counts["ces"] == {"responses": 1, "score_sum": 5.0}
    assert counts["ces_easy_share"]["easy"] == 1
    assert score_counts("ces_response", 4)["ces_easy_share"]["easy"] == 0
    assert value_of("ces", {"responses": 4, "score_sum": 18}) == (18, 4, 4.5)


def test_no_responses_has_no_value() -> None:
    assert value_of("nps", {}) == (0, 0, None)


def test_contributions_go_to_the_touchpoint_and_to_overall() -> None:
    out = contributions("nps_response", "web", "delivery", 1.0, 3)
    assert {c.group for c in out} == {"nps|web|delivery", f"nps|{OVERALL}|{OVERALL}"}


def test_unknown_kpi_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown KPI"):
        value_of("happiness", {})


def parsed(event_type: str, **properties: object) -> AnyEvent:
    data = wire(event_type)
    data["properties"].update(properties)
    event = parse_object(data)
    assert not isinstance(event, Invalid), event
    return event


@pytest.mark.parametrize(
    ("score", "satisfied", "dissatisfied"),
    [(1, 0, 1), (2, 0, 1), (3, 0, 0), (4, 1, 0), (5, 1, 0)],
)
def test_isn_per_attribute(score: int, satisfied: int, dissatisfied: int) -> None:
    counts = event_counts(parsed("isn_response", attribute="delivery", score=score))
    assert counts == {
        "isn:delivery": {"responses": 1, "satisfied": satisfied, "dissatisfied": dissatisfied}
    }


def test_isn_value_by_hand() -> None:
    # 3 satisfied, 1 neutral, 2 dissatisfied of 6: (3 - 2) / 6 * 100
    counts = {"responses": 6, "satisfied": 3, "dissatisfied": 2}
    assert value_of("isn:price_quality", counts) == (1, 6, pytest.approx(16.6667, abs=1e-4))


@pytest.mark.parametrize(
    ("sentiment", "score", "positive"),
    [
        ("positive", None, 1),
        ("negative", 5, 0),  # the label wins over the score
        ("neutral", None, 0),
        (None, 4, 1),
        (None, 3, 0),
        (None, 2, 0),
        (None, None, 0),
    ],
)
def test_comment_positivity(sentiment: str | None, score: int | None, positive: int) -> None:
    event = parsed("comment", text="hi", sentiment=sentiment, score=score)
    assert event_counts(event) == {"comments_positive_share": {"comments": 1, "positive": positive}}


def test_retention_counts_saves_among_cancellation_decisions() -> None:
    saved = event_counts(parsed("cancellation_retained"))
    lost = event_counts(parsed("subscription_cancelled"))
    total = merge(merge({}, saved["retention"]), lost["retention"])
    assert value_of("retention", total) == (1, 2, 0.5)
    assert event_counts(parsed("subscription_started")) == {}


def test_cross_sell_counts_orders_with_two_categories() -> None:
    one = parsed("order_placed")  # one item, one category
    item = {"sku": "s", "category": "toys", "quantity": 1, "price": "1"}
    two = parsed(
        "order_placed",
        items=[{"sku": "a", "category": "shoes", "quantity": 1, "price": "1"}, item],
    )
    assert event_counts(one)["cross_sell"] == {"orders": 1, "multi_category": 0}
    assert event_counts(two)["cross_sell"] == {"orders": 1, "multi_category": 1}


def test_contributions_of_any_event_go_to_its_group_and_overall() -> None:
    out = contributions_of(parsed("isn_response", attribute="attention", score=5))
    assert {c.group for c in out} == {"isn:attention|web|checkout", "isn:attention|all|all"}
    assert contributions_of(parsed("page_view")) == []
