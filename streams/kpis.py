"""KPI logic, pure: what an event contributes, and a KPI's value from its counts.

Per-event KPIs (each event adds counts at its own event time, so no state beyond
the windows is needed):

| kpi | counts | value |
|---|---|---|
| nps | responses, promoters (9-10), passives, detractors (0-6) | 100 (p - d) / responses |
| csat | responses, satisfied (4-5 of 1-5) | satisfied / responses, 0..1 |
| ces | responses, score_sum (1-7) | mean score |
| ces_easy_share | responses, easy (>= 5) | easy / responses |
| isn:<attribute> | responses, satisfied (4-5), dissatisfied (1-2) | 100 (s - d) / responses |
| comments_positive_share | comments, positive | positive / comments |
| retention | decisions (retained + cancelled), retained | retained / decisions |
| cross_sell | orders, multi_category (items from >= 2 categories) | multi_category / orders |

A comment is positive by its sentiment label; without one, by its optional 1-5
score (>= 4 positive, 3 neutral, <= 2 negative); with neither, it is counted and
not positive. Abandonment and churn need per-entity state (streams/outcomes.py).
Abandonment (checkout_abandonment, cart_abandonment: decided, abandoned; value
abandoned / decided) is decided by streams/outcomes.py and counted here too.
Every value carries its numerator and denominator (PRODUCT.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from touchstream.schemas.events import (
    AnyEvent,
    CancellationRetained,
    CesResponse,
    Comment,
    CsatResponse,
    IsnResponse,
    NpsResponse,
    OrderPlaced,
    SubscriptionCancelled,
    event_types,
)

OVERALL = "all"


@dataclass(slots=True)  # a value, never changed; frozen, its __init__ cost 1.95 µs, not 0.47
class Contribution:
    """What one event adds to one KPI group at one instant (event time, epoch s)."""

    kpi: str
    channel: str
    touchpoint: str
    at: float
    counts: tuple[tuple[str, float], ...]
    source: str = ""  # raw "topic:partition" of the event, for replay detection
    offset: int = -1

    @property
    def group(self) -> str:
        return f"{self.kpi}|{self.channel}|{self.touchpoint}"

    def numbered(self, source: str, offset: int) -> Contribution:
        """The same contribution from ``source`` at ``offset`` (dataclasses.replace
        costs ~5 µs, a third of an outcome decision)."""
        return Contribution(
            self.kpi, self.channel, self.touchpoint, self.at, self.counts, source, offset
        )


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


def comment_is_positive(comment: Comment) -> bool:
    props = comment.properties
    if props.sentiment is not None:
        return props.sentiment == "positive"
    return props.score is not None and props.score >= 4


# The event types event_counts reads (checked by name first: see event_types).
COUNTED = event_types(
    NpsResponse,
    CsatResponse,
    CesResponse,
    IsnResponse,
    Comment,
    CancellationRetained,
    SubscriptionCancelled,
    OrderPlaced,
)


def event_counts(event: AnyEvent) -> dict[str, dict[str, float]]:
    """Counts per KPI that one event adds (empty for events no per-event KPI reads)."""
    if event.event_type not in COUNTED:
        return {}
    if isinstance(event, NpsResponse | CsatResponse | CesResponse):
        return score_counts(event.event_type, event.properties.score)
    if isinstance(event, IsnResponse):
        score = event.properties.score
        return {
            f"isn:{event.properties.attribute}": {
                "responses": 1,
                "satisfied": float(score >= 4),
                "dissatisfied": float(score <= 2),
            }
        }
    if isinstance(event, Comment):
        return {
            "comments_positive_share": {
                "comments": 1,
                "positive": float(comment_is_positive(event)),
            }
        }
    if isinstance(event, CancellationRetained | SubscriptionCancelled):
        retained = isinstance(event, CancellationRetained)
        return {"retention": {"decisions": 1, "retained": float(retained)}}
    if isinstance(event, OrderPlaced):
        categories = {item.category for item in event.properties.items}
        return {"cross_sell": {"orders": 1, "multi_category": float(len(categories) >= 2)}}
    return {}


def contributions(
    event_type: str, channel: str, touchpoint: str, at: float, score: int
) -> list[Contribution]:
    """Contributions of one feedback score: to its (channel, touchpoint) and overall."""
    return _spread(score_counts(event_type, score), channel, touchpoint, at)


def contributions_of(event: AnyEvent, source: str = "", offset: int = -1) -> list[Contribution]:
    """Contributions of any event: to its (channel, touchpoint) and to overall."""
    return _spread(
        event_counts(event),
        event.channel,
        event.touchpoint,
        event.at,
        source,
        offset,
    )


def _spread(
    by_kpi: dict[str, dict[str, float]],
    channel: str,
    touchpoint: str,
    at: float,
    source: str = "",
    offset: int = -1,
) -> list[Contribution]:
    out = []
    for kpi, counts in by_kpi.items():
        items = tuple(sorted(counts.items()))
        out.append(Contribution(kpi, channel, touchpoint, at, items, source, offset))
        out.append(Contribution(kpi, OVERALL, OVERALL, at, items, source, offset))
    return out


def merge(into: dict[str, float], counts: Mapping[str, float]) -> dict[str, float]:
    for name, value in counts.items():
        into[name] = into.get(name, 0.0) + value
    return into


# kpi → (numerator counts added, numerator counts subtracted, denominator count, scale)
_RATIOS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, float]] = {
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


def value_of(kpi: str, counts: Mapping[str, float]) -> tuple[float, float, float | None]:
    """(numerator, denominator, value) of a KPI from its summed counts."""
    ratio = _RATIOS.get(kpi.split(":", 1)[0])
    if ratio is None:
        raise ValueError(f"unknown KPI {kpi!r}")
    plus, minus, denominator_name, scale = ratio
    numerator = sum(counts.get(n, 0.0) for n in plus) - sum(counts.get(n, 0.0) for n in minus)
    denominator = counts.get(denominator_name, 0.0)
    value = scale * numerator / denominator if denominator else None
    return numerator, denominator, value
