"""A deterministic storefront: customers with anonymous→identified sessions on two
devices (app and browser) across channels, browsing, carts, checkouts completed or
dropped at a step, orders, cancellations, returns, deliveries, subscriptions with
cancellations and retention saves, support contacts, and NPS/CSAT/CES/ISN/comment
feedback tied to touchpoints; detractors' cases closed some hours later.

Same seed and options → the same messages, byte for byte. :meth:`Simulator.events`
gives the clean events (wire dicts ordered by occurred_at); :meth:`Simulator.messages`
gives what is sent, in send order: the events plus, as configured, duplicates,
out-of-order events (within the allowed lateness), late events (beyond it) and
malformed messages. ``producers/truth.py`` computes what a correct pipeline must
make of them.

The lateness guarantees, which the ground truth checks rather than assumes:
- an out-of-order or duplicate message is sent at most 0.4 × lateness (event
  time) after the newest event sent before it, so it is on time on any partition;
- a late message is sent right after a later event of the same key on the same
  topic (so the same partition) that is more than lateness + 60 s newer, so it is
  late whatever else its partition carries.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka.partitioner.default import murmur2

from touchstream.schemas.events import family
from touchstream.schemas.records import alert_id_for

CHANNELS: dict[str, float] = {
    "web": 42,
    "mobile_app": 33,
    "whatsapp": 8,
    "call_center": 5,
    "email": 4,
    "store": 6,
    "marketplace": 2,
}
CATEGORIES = ("shoes", "apparel", "electronics", "home", "beauty", "toys")
CHECKOUT_STEPS = ("shipping", "payment", "review")
FEEDBACK_TOUCHPOINTS = ("delivery", "order_confirmation", "support_chat", "checkout")
ISN_ATTRIBUTES = ("attention", "product_found", "price_quality", "delivery")
PLANS = ("basic", "plus", "premium")
COMMENTS = {
    "positive": ("Fast delivery, great service", "Love the new app", "Easy checkout"),
    "neutral": ("It was fine", "Delivery as expected", "Nothing special"),
    "negative": ("Package arrived broken", "Nobody answered my call", "Payment failed twice"),
}
# Event types that may be sent late: they change per-event KPIs only, never an
# entity's outcome (checkouts, carts, identities, subscriptions).
LATE_TYPES = frozenset(
    {"page_view", "product_view", "search", "nps_response", "csat_response", "ces_response"}
)
MALFORMED_KEY = b"malformed"


@dataclass(frozen=True)
class SimulationConfig:
    customers: int = 200
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 8, tzinfo=UTC))
    duration_s: int = 6 * 3600
    seed: int = 7
    sessions_per_customer: float = 3.0
    currency: str = "EUR"
    duplicates: float = 0.0  # share of events sent twice (same bytes)
    out_of_order: float = 0.0  # share sent later than their turn, within the lateness
    late: float = 0.0  # share of LATE_TYPES events sent beyond the lateness
    malformed: float = 0.0  # malformed messages per event
    allowed_lateness_s: float = 600.0
    abandonment_timeout_s: float = 1800.0
    settle: bool = False  # end with a tail past every timeout: every outcome decided
    # With the raw topics' partition count, the tail reaches every partition of the
    # clickstream and orders topics (each one's watermark passes every timeout).
    partitions: int | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.customers < 1 or self.duration_s < 60:
            raise ValueError("need at least one customer and one minute of event time")
        for name in ("duplicates", "out_of_order", "late", "malformed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1")
        if self.allowed_lateness_s <= 0 or self.abandonment_timeout_s <= 0:
            raise ValueError("allowed_lateness_s and abandonment_timeout_s must be positive")

    @property
    def end(self) -> datetime:
        """No event of the journeys occurs after this instant."""
        return self.start + timedelta(seconds=self.duration_s)

    @property
    def settle_at(self) -> datetime:
        """Event time of the settling tail: every abandonment timeout has passed
        and every out-of-order event is within the lateness."""
        return self.end + timedelta(
            seconds=self.abandonment_timeout_s + self.allowed_lateness_s + 60
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka message as sent: the raw topic family, key, bytes, and what it is."""

    family: str  # clickstream, orders or feedback
    key: bytes
    value: bytes
    kind: str  # event, duplicate, out_of_order, late, or malformed:<expected reason>


def keys_on_every_partition(
    partitions: int, name: Callable[[int], str], keyed: Callable[[str], str] = str
) -> list[str]:
    """``name(0)``, ``name(1)``, ... until one lands on each partition, one key per
    partition in partition order. A key lands where murmur2 of ``keyed(key)`` puts
    it, as every Kafka client partitions keys (``keyed``: the message key a name
    becomes, e.g. an internal topic's ``cart|<id>``)."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        key = name(n)
        found.setdefault((murmur2(keyed(key).encode()) & 0x7FFFFFFF) % partitions, key)
        n += 1
    return [found[p] for p in sorted(found)]


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def key_of(event: dict[str, Any]) -> bytes:
    return str(event.get("customer_id") or event.get("anonymous_id")).encode()


class Simulator:
    """Generates journeys; iterate :meth:`events` or :meth:`messages`."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)  # noqa: S311 - simulation, not security

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _channel(self) -> str:
        return self._rng.choices(list(CHANNELS), weights=list(CHANNELS.values()))[0]

    # -- the clean stream ---------------------------------------------------------

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event once, ordered by occurred_at (ties in generation order)."""
        self._rng = random.Random(self.config.seed)  # noqa: S311
        generated: list[tuple[datetime, int, dict[str, Any]]] = []
        end = self.config.end
        for n in range(self.config.customers):
            for event in self._customer(f"c{self.config.seed}-{n:06d}"):
                if event["_at"] <= end:
                    generated.append((event["_at"], len(generated), event))
        if self.config.settle:
            at = self.config.settle_at
            for key, event_type in self._tail_keys():
                generated.append((at, len(generated), self._tail(key, event_type, at)))
        generated.sort(key=lambda item: (item[0], item[1]))
        for _, _, event in generated:
            del event["_at"]
            yield event

    def _tail_keys(self) -> list[tuple[str, str]]:
        """(anonymous id, event type) of the settling tail: page views and, with a
        partition count, order deliveries too, on keys that cover every partition
        (murmur2, as every Kafka client partitions keys)."""
        seed, partitions = self.config.seed, self.config.partitions
        if partitions is None:
            return [(f"settle-{seed}-{n:02d}", "page_view") for n in range(16)]
        out = []
        for event_type in ("page_view", "order_delivered"):
            keys = keys_on_every_partition(partitions, f"settle-{seed}-{event_type}-{{}}".format)
            out += [(key, event_type) for key in keys]
        return out

    def _tail(self, key: str, event_type: str, at: datetime) -> dict[str, Any]:
        """A settling event: anonymous, counted in no KPI."""
        properties: dict[str, Any] = {"url": "/"}
        touchpoint = "home"
        if event_type == "order_delivered":
            properties, touchpoint = {"order_id": f"{key}-order"}, "delivery"
        return {
            "_at": at,
            "event_id": self._uuid(),
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": _iso(at),
            "anonymous_id": key,
            "channel": "web",
            "touchpoint": touchpoint,
            "properties": properties,
        }

    def _customer(self, customer_id: str) -> Iterator[dict[str, Any]]:
        rng = self._rng
        sessions = max(1, round(rng.expovariate(1 / self.config.sessions_per_customer)))
        span = self.config.duration_s
        starts = sorted(rng.uniform(0, span * 0.9) for _ in range(sessions))
        # One anonymous id per device: the mobile app's, and the browser's for every
        # other channel. A device is anonymous until the customer identifies on it
        # (at checkout), so a customer known on the web still browses the app
        # logged out: identity stitching links those events to them.
        first = f"a-{self._uuid()[:13]}"
        state: dict[str, Any] = {"devices": {}, "first": first, "subscription": None}
        for offset in starts:
            at = self.config.start + timedelta(seconds=offset)
            yield from self._session(customer_id, state, at)

    def _session(
        self, customer_id: str, state: dict[str, Any], at: datetime
    ) -> Iterator[dict[str, Any]]:
        rng = self._rng
        channel = self._channel()
        session_id = f"s-{self._uuid()[:13]}"
        device = "app" if channel == "mobile_app" else "browser"
        if device not in state["devices"]:
            anonymous = state.pop("first", None) or f"a-{self._uuid()[:13]}"
            state["devices"][device] = {"anonymous_id": anonymous, "identified": False}
        seen = state["devices"][device]
        who: dict[str, str] = {"anonymous_id": seen["anonymous_id"]}
        if seen["identified"]:
            who["customer_id"] = customer_id
        clock = [at]

        def event(
            event_type: str, touchpoint: str, after_s: float | None = None, **properties: Any
        ) -> dict[str, Any]:
            clock[0] += timedelta(seconds=rng.uniform(3, 90) if after_s is None else after_s)
            return {
                "_at": clock[0],
                "event_id": self._uuid(),
                "event_type": event_type,
                "schema_version": 1,
                "occurred_at": _iso(clock[0]),
                **who,
                "session_id": session_id,
                "channel": channel,
                "touchpoint": touchpoint,
                "properties": properties,
            }

        if channel in ("whatsapp", "call_center") and rng.random() < 0.35:
            yield from self._support(event, channel)
            return
        yield event("page_view", "home", url="/")
        if rng.random() < 0.4:
            yield event(
                "search", "search", query=rng.choice(CATEGORIES), results=rng.randint(0, 40)
            )
        if seen["identified"]:
            yield from self._subscription(event, state)
        cart_id = f"cart-{self._uuid()[:13]}"
        lines: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 5)):
            category = rng.choice(CATEGORIES)
            sku = f"{category[:3]}-{rng.randint(1, 400):04d}"
            yield event("product_view", "product_page", sku=sku, category=category)
            if rng.random() < 0.35:
                line: dict[str, Any] = {
                    "cart_id": cart_id,
                    "sku": sku,
                    "category": category,
                    "quantity": rng.randint(1, 3),
                    "price": f"{rng.uniform(5, 250):.2f}",
                    "currency": self.config.currency,
                }
                lines.append(line)
                yield event("add_to_cart", "cart", **line)
        if len(lines) > 1 and rng.random() < 0.15:
            yield event("remove_from_cart", "cart", **lines.pop())
        if not lines or rng.random() < 0.3:
            return
        if not seen["identified"]:
            seen["identified"] = True
            who["customer_id"] = customer_id
            # Services may send PII in clear: the stream pseudonymises it (schemas/pii.py).
            yield event("identify", "checkout", email=f"{customer_id}@example.com")
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
        if rng.random() < 0.03:
            # Completed far too late: the checkout counts as abandoned all the same.
            clock[0] += timedelta(seconds=self.config.abandonment_timeout_s)
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
        yield from self._fulfilment(event, order_id)

    def _support(self, event: Callable[..., dict[str, Any]], channel: str) -> Iterator[Any]:
        rng = self._rng
        touchpoint = "ivr" if channel == "call_center" else "support_chat"
        resolved = rng.random() < 0.75
        yield event("support_contact", touchpoint, reason="where is my order", resolved=resolved)
        if rng.random() < 0.4:
            score = rng.randint(1, 3) if not resolved else rng.randint(3, 5)
            yield from self._closed_loop(
                event, event("csat_response", touchpoint, score=score), score <= 2
            )

    def _subscription(self, event: Callable[..., dict[str, Any]], state: dict[str, Any]) -> Any:
        rng = self._rng
        sub = state["subscription"]
        if sub is None:
            if rng.random() < 0.12:
                sub = {"subscription_id": f"sub-{self._uuid()[:13]}", "plan": rng.choice(PLANS)}
                state["subscription"] = sub
                yield event("subscription_started", "account", **sub)
            return
        if sub.get("ended"):
            return
        roll = rng.random()
        if roll < 0.08 and sub["plan"] != PLANS[-1]:
            sub["plan"] = PLANS[PLANS.index(sub["plan"]) + 1]
            yield event("plan_upgraded", "account", **_sub(sub))
        elif roll < 0.3:
            if rng.random() < 0.4:
                yield event("cancellation_retained", "account", **_sub(sub))
            else:
                sub["ended"] = True
                yield event("subscription_cancelled", "account", **_sub(sub))

    def _feedback(self, event: Callable[..., dict[str, Any]], order_id: str) -> Iterator[Any]:
        rng = self._rng
        touchpoint = rng.choice(FEEDBACK_TOUCHPOINTS)
        if rng.random() < 0.45:
            score = min(10, max(0, round(rng.gauss(7.6, 2.3))))
            response = event("nps_response", touchpoint, score=score, order_id=order_id)
            yield from self._closed_loop(event, response, score <= 6)
        if rng.random() < 0.3:
            score = min(5, max(1, round(rng.gauss(3.9, 1.1))))
            response = event("csat_response", touchpoint, score=score, order_id=order_id)
            yield from self._closed_loop(event, response, score <= 2)
        if rng.random() < 0.2:
            score = min(7, max(1, round(rng.gauss(5.2, 1.5))))
            response = event("ces_response", "checkout", score=score, order_id=order_id)
            yield from self._closed_loop(event, response, score <= 2)
        if rng.random() < 0.2:
            for attribute in rng.sample(ISN_ATTRIBUTES, rng.randint(1, 2)):
                score = min(5, max(1, round(rng.gauss(3.8, 1.2))))
                yield event("isn_response", touchpoint, attribute=attribute, score=score)
        if rng.random() < 0.12:
            sentiment = rng.choices(list(COMMENTS), weights=(5, 3, 2))[0]
            text = rng.choice(COMMENTS[sentiment])
            if rng.random() < 0.7:
                comment = event("comment", touchpoint, text=text, sentiment=sentiment)
            else:  # no label: the score sent with it decides
                score = {"positive": 5, "neutral": 3, "negative": 1}[sentiment]
                comment = event("comment", touchpoint, text=text, score=score)
            yield from self._closed_loop(event, comment, sentiment == "negative")

    def _closed_loop(
        self, event: Callable[..., dict[str, Any]], response: dict[str, Any], bad: bool
    ) -> Iterator[dict[str, Any]]:
        yield response
        if bad and self._rng.random() < 0.7:
            yield event(
                "case_closed",
                "support_chat",
                after_s=self._rng.uniform(600, 8 * 3600),
                alert_id=alert_id_for(response["event_id"]),
                resolution="called back",
            )

    def _fulfilment(self, event: Callable[..., dict[str, Any]], order_id: str) -> Iterator[Any]:
        rng = self._rng
        roll = rng.random()
        if roll < 0.04:
            yield event(
                "order_cancelled", "order_confirmation", order_id=order_id, reason="changed mind"
            )
            return
        yield event(
            "order_delivered", "delivery", after_s=rng.uniform(2, 30) * 3600, order_id=order_id
        )
        if rng.random() < 0.06:
            yield event(
                "order_returned",
                "delivery",
                after_s=rng.uniform(1, 20) * 3600,
                order_id=order_id,
                reason="size",
            )

    # -- what is sent -------------------------------------------------------------

    def messages(self) -> list[Message]:
        """The events as sent, with duplicates, disorder, late and malformed messages."""
        cfg = self.config
        events = list(self.events())
        rng = random.Random(cfg.seed * 7919 + 1)  # noqa: S311 - independent of journeys
        lateness = cfg.allowed_lateness_s
        times = [_epoch(e["occurred_at"]) for e in events]
        # Per (family, key): the positions of its events, to find a later one for late.
        by_stream: dict[tuple[str, bytes], list[int]] = defaultdict(list)
        for i, e in enumerate(events):
            by_stream[(family(e["event_type"]), key_of(e))].append(i)
        kinds = []
        for e in events:
            roll = rng.random()
            if e["event_type"] in LATE_TYPES and roll < cfg.late:
                kinds.append("late")
            elif roll < cfg.late + cfg.out_of_order:
                kinds.append("out_of_order")
            else:
                kinds.append("event")
        order: list[tuple[float, int, int, Message]] = []  # (send time, tiebreak, seq, msg)
        seq = 0
        for i, e in enumerate(events):
            seq += 1
            fam, key, value = family(e["event_type"]), key_of(e), encode(e)
            send, kind, tie = times[i], kinds[i], 0
            if kind == "late":
                # Right after a later event of its stream that is itself sent in turn.
                later = [
                    j
                    for j in by_stream[(fam, key)]
                    if kinds[j] == "event"
                    and lateness + 60 < times[j] - times[i] <= lateness + 3600
                ]
                send, kind, tie = (times[later[0]], "late", 1) if later else (send, "event", 0)
            elif kind == "out_of_order":
                send = times[i] + rng.uniform(0.05, 0.4) * lateness
            order.append((send, tie, seq, Message(fam, key, value, kind)))
            if kind == "event" and rng.random() < cfg.duplicates:
                seq += 1
                again = times[i] + rng.uniform(0.0, 0.4) * lateness
                order.append((again, 0, seq, Message(fam, key, value, "duplicate")))
        for n in range(round(cfg.malformed * len(events))):
            seq += 1
            at = times[rng.randrange(len(times))] if times else 0.0
            reason, value, fam = _malformed(n, rng)
            order.append((at, 2, seq, Message(fam, MALFORMED_KEY, value, f"malformed:{reason}")))
        order.sort(key=lambda item: (item[0], item[1], item[2]))
        return [message for *_, message in order]


def _sub(sub: dict[str, Any]) -> dict[str, Any]:
    return {"subscription_id": sub["subscription_id"], "plan": sub["plan"]}


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _malformed(n: int, rng: random.Random) -> tuple[str, bytes, str]:
    """(expected dead-letter reason, bytes, topic family) of the n-th malformed message."""
    event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    envelope = (
        f'"event_id":"{event_id}","occurred_at":"2026-11-02T09:00:00Z",'
        '"channel":"web","touchpoint":"delivery"'
    )
    shapes: list[tuple[str, bytes, str]] = [
        ("not_json", b'{"event_type":"page_view","customer_id":"c-1",', "clickstream"),
        ("not_json", b"\xff\xfe\x00 not utf-8", "orders"),
        ("not_json", b"", "feedback"),
        ("not_object", b'["page_view", 1]', "clickstream"),
        (
            "unknown_event_type",
            ('{"event_type":"teleport","customer_id":"c-1",' + envelope + "}").encode(),
            "clickstream",
        ),
        (
            "schema_violation",
            (
                '{"event_type":"nps_response","customer_id":"c-1",'
                + envelope
                + ',"properties":{"score":11}}'
            ).encode(),
            "feedback",
        ),
        (
            "missing_identity",
            ('{"event_type":"page_view",' + envelope + ',"properties":{}}').encode(),
            "clickstream",
        ),
    ]
    return shapes[n % len(shapes)]
