from __future__ import annotations

import pytest

from touchstream.streams.kpis import OVERALL, contributions, score_counts, value_of


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
