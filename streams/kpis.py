"""KPI logic, pure: what an event contributes, and a KPI's value from its counts.

Foundation scope: the feedback score KPIs (NPS, CSAT, CES). Values: NPS in
-100..100, CSAT and shares as ratios in 0..1, CES as the mean score (1..7).
Every value carries its numerator and denominator (PRODUCT.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OVERALL = "all"


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one event adds to one KPI group at one instant (event time, epoch s)."""

    kpi: str
    channel: str
    touchpoint: str
    at: float
    counts: tuple[tuple[str, float], ...]

    @property
    def group(self) -> str:
        return f"{self.kpi}|{self.channel}|{self.touchpoint}"


def score_counts(event_type: str, score: int) -> dict[str, dict[str, float]]:
    """Counts per KPI that a feedback score adds (boundaries from PRODUCT.md)."""
    if event_type == "nps_response":
        return {
            "nps": {
                "responses": 1,
                "promoters": float(score >= 9),
                "passives": float(7 <= score <= 8),
                "detractors": float(score <= 6),
            }
        }
    if event_type == "csat_response":
        return {"csat": {"responses": 1, "satisfied": float(score >= 4)}}
    if event_type == "ces_response":
        return {
            "ces": {"responses": 1, "score_sum": float(score)},
            "ces_easy_share": {"responses": 1, "easy": float(score >= 5)},
        }
    return {}


def contributions(
    event_type: str, channel: str, touchpoint: str, at: float, score: int
) -> list[Contribution]:
    """Contributions of one feedback event: to its (channel, touchpoint) and to overall."""
    out = []
    for kpi, counts in score_counts(event_type, score).items():
        items = tuple(sorted(counts.items()))
        out.append(Contribution(kpi, channel, touchpoint, at, items))
        out.append(Contribution(kpi, OVERALL, OVERALL, at, items))
    return out


def merge(into: dict[str, float], counts: Mapping[str, float]) -> dict[str, float]:
    for name, value in counts.items():
        into[name] = into.get(name, 0.0) + value
    return into


def value_of(kpi: str, counts: Mapping[str, float]) -> tuple[float, float, float | None]:
    """(numerator, denominator, value) of a KPI from its summed counts."""
    responses = counts.get("responses", 0.0)
    if kpi == "nps":
        numerator = counts.get("promoters", 0.0) - counts.get("detractors", 0.0)
        scale = 100.0
    elif kpi == "csat":
        numerator, scale = counts.get("satisfied", 0.0), 1.0
    elif kpi == "ces":
        numerator, scale = counts.get("score_sum", 0.0), 1.0
    elif kpi == "ces_easy_share":
        numerator, scale = counts.get("easy", 0.0), 1.0
    else:
        raise ValueError(f"unknown KPI {kpi!r}")
    value = scale * numerator / responses if responses else None
    return numerator, responses, value
