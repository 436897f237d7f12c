"""A deterministic storefront: customers, sessions across channels, carts,
checkouts that complete or are dropped at a step, orders and feedback.

Same seed and options → the same events, byte for byte. Events come out as
wire dicts (PRODUCT.md's JSON form) ordered by occurred_at.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

CHANNELS: dict[str, float] = {
    "web": 45,
    "mobile_app": 35,
    "whatsapp": 8,
    "call_center": 5,
    "email": 4,
}
CATEGORIES = ("shoes", "apparel", "electronics", "home", "beauty", "toys")
CHECKOUT_STEPS = ("shipping", "payment", "review")
FEEDBACK_TOUCHPOINTS = ("delivery", "order_confirmation", "support_chat", "checkout")


@dataclass(frozen=True)
class SimulationConfig:
    customers: int = 200
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 8, tzinfo=UTC))
    duration_s: int = 6 * 3600
    seed: int = 7
    sessions_per_customer: float = 3.0
    currency: str = "EUR"

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.customers < 1 or self.duration_s < 60:
            raise ValueError("need at least one customer and one minute of event time")


class Simulator:
    """Generates journeys; iterate :meth:`events` for the ordered wire dicts."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)  # noqa: S311 - simulation, not security

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _channel(self) -> str:
        return self._rng.choices(list(CHANNELS), weights=list(CHANNELS.values()))[0]

    def events(self) -> Iterator[dict[str, Any]]:
        generated: list[tuple[datetime, int, dict[str, Any]]] = []
        for n in range(self.config.customers):
            for event in self._customer(f"c{self.config.seed}-{n:06d}"):
                generated.append((event["_at"], len(generated), event))
        generated.sort(key=lambda item: (item[0], item[1]))
        for _, _, event in generated:
            del event["_at"]
            yield event

    def _customer(self, customer_id: str) -> Iterator[dict[str, Any]]:
        rng = self._rng
        sessions = max(1, round(rng.expovariate(1 / self.config.sessions_per_customer)))
        span = self.config.duration_s
        starts = sorted(rng.uniform(0, span * 0.9) for _ in range(sessions))
        anonymous_id = f"a-{self._uuid()[:13]}"
        identified = False
        for offset in starts:
            at = self.config.start + timedelta(seconds=offset)
            yield from self._session(customer_id, anonymous_id, identified, at)
            identified = True

    def _session(
        self, customer_id: str, anonymous_id: str, identified: bool, at: datetime
    ) -> Iterator[dict[str, Any]]:
        rng = self._rng
        channel = self._channel()
        session_id = f"s-{self._uuid()[:13]}"
        who: dict[str, str] = {"anonymous_id": anonymous_id}
        if identified:
            who["customer_id"] = customer_id
        clock = [at]

        def event(event_type: str, touchpoint: str, **properties: Any) -> dict[str, Any]:
            clock[0] += timedelta(seconds=rng.uniform(3, 90))
            return {
                "_at": clock[0],
                "event_id": self._uuid(),
                "event_type": event_type,
                "schema_version": 1,
                "occurred_at": clock[0].isoformat().replace("+00:00", "Z"),
                **who,
                "session_id": session_id,
                "channel": channel,
                "touchpoint": touchpoint,
                "properties": properties,
            }

        yield event("page_view", "home", url="/")
        if rng.random() < 0.4:
            yield event(
                "search", "search", query=rng.choice(CATEGORIES), results=rng.randint(0, 40)
            )
        cart_id = f"cart-{self._uuid()[:13]}"
        lines: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 5)):
            category = rng.choice(CATEGORIES)
            sku = f"{category[:3]}-{rng.randint(1, 400):04d}"
            yield event("product_view", "product_page", sku=sku, category=category)
            if rng.random() < 0.35:
                line = {
                    "cart_id": cart_id,
                    "sku": sku,
                    "category": category,
                    "quantity": rng.randint(1, 3),
                    "price": f"{rng.uniform(5, 250):.2f}",
                    "currency": self.config.currency,
                }
                lines.append(line)
                yield event("add_to_cart", "cart", **line)
        if not lines or rng.random() < 0.3:
            return
        if not identified:
            who["customer_id"] = customer_id
            yield event("identify", "checkout")
        value = sum(float(line["price"]) * line["quantity"] for line in lines)
        checkout_id = f"chk-{self._uuid()[:13]}"
        yield event(
            "checkout_started",
            "checkout",
            checkout_id=checkout_id,
            cart_id=cart_id,
            value=f"{value:.2f}",
            currency=self.config.currency,
        )
        for step in CHECKOUT_STEPS:
            if rng.random() < 0.12:
                return  # dropped at the previous step
            touchpoint = "payment" if step == "payment" else "checkout"
            yield event("checkout_step", touchpoint, checkout_id=checkout_id, step=step)
            if step == "payment" and rng.random() < 0.08:
                yield event("payment_failed", "payment", checkout_id=checkout_id, reason="declined")
                if rng.random() < 0.5:
                    return
        order_id = f"ord-{self._uuid()[:13]}"
        yield event(
            "order_placed",
            "order_confirmation",
            order_id=order_id,
            checkout_id=checkout_id,
            total=f"{value:.2f}",
            currency=self.config.currency,
            items=[
                {k: line[k] for k in ("sku", "category", "quantity", "price")} for line in lines
            ],
        )
        yield from self._feedback(event, order_id)

    def _feedback(self, event: Any, order_id: str) -> Iterator[dict[str, Any]]:
        rng = self._rng
        touchpoint = rng.choice(FEEDBACK_TOUCHPOINTS)
        if rng.random() < 0.45:
            score = min(10, max(0, round(rng.gauss(7.6, 2.3))))
            yield event("nps_response", touchpoint, score=score, order_id=order_id)
        if rng.random() < 0.3:
            score = min(5, max(1, round(rng.gauss(3.9, 1.1))))
            yield event("csat_response", touchpoint, score=score, order_id=order_id)
        if rng.random() < 0.2:
            score = min(7, max(1, round(rng.gauss(5.2, 1.5))))
            yield event("ces_response", "checkout", score=score, order_id=order_id)
