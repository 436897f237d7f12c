"""Customer-level KPIs, pure: churn (two attributions) and upsell.

Definitions (PRODUCT.md, with the choices written in the README):

- A customer becomes *active* at their first order or subscription start, and
  stops being active when they *churn*: on ``subscription_cancelled``, or when
  the churn horizon (default 90 days) passes after their last order with no
  order since and no subscription still running. A later order or subscription
  makes them active again.
- ``churn`` per (channel, touchpoint) = customers who churned in the window,
  attributed to the touchpoint (and channel) of their last interaction *before*
  the churning moment, ÷ customers active (overall) at the window start; so the
  per-touchpoint rates add up to the overall one, as for checkout abandonment.
  ``churn_detractor`` is the same, attributed to the customer's last detractor
  feedback (NPS ≤ 6, CSAT ≤ 2, CES ≤ 2, negative comment); churned customers
  without one are not in its numerator.
- ``upsell`` per (channel, touchpoint) = plan_upgraded events in the window at
  that touchpoint ÷ subscriptions active (overall) at the window start.

Everything about a customer is applied in event time once the watermark has
passed it (the same combined watermark as abandonment), so arrival order across
the raw topics does not matter. A stock (active customers, active
subscriptions) at an instant is the sum of the deltas before it; deltas are
contributions ``active_delta`` / ``subscription_delta`` to the overall group.

Identity stitching (``AnonymousBook``): an event with only an ``anonymous_id``
is an interaction of the customer that id is linked to, by ``identify`` or by any
event carrying both ids (the latest link in event time wins, as in ClickHouse's
``identities`` view). Until an anonymous id is linked, its latest interaction and
latest detractor feedback are kept; the link hands them to the customer, and the
id's later interactions follow one by one. A stitched interaction can reach the
customer after their history was decided past it (it comes from another
partition): it then becomes the last interaction or detractor feedback if it is
newer, and a churn it precedes is re-attributed to it (a -1 for the old
touchpoint, a +1 for the new), so the result does not depend on arrival order.
Orders and subscription events count for churn only with a ``customer_id``.

A customer with nothing running (not active, no subscription active) who has
been quiet for the churn horizon since their last interaction or churn is
forgotten, in event time like everything else: their state is dropped, and an
interaction after that starts afresh (their older detractor feedback no longer
attributes a later churn). The state then holds the customers of the last
horizon, not every customer ever seen.

State lives in any mutable mapping of JSON-able dicts, one per customer.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, MutableMapping
from typing import Any

from touchstream.schemas.events import (
    AnyEvent,
    CesResponse,
    Comment,
    CsatResponse,
    NpsResponse,
    OrderPlaced,
    PlanUpgraded,
    SubscriptionCancelled,
    SubscriptionStarted,
    event_types,
)
from touchstream.streams.kpis import OVERALL, Contribution
from touchstream.streams.state import entries, schedule_for

# kpi → (its count, the stock whose level at the window start is its denominator)
STOCK_KPIS = {
    "churn": ("churned", "active_delta"),
    "churn_detractor": ("churned", "active_delta"),
    "upsell": ("upgrades", "subscriptions"),
}
# The overall group that holds each stock's deltas.
STOCK_GROUP = {"active_delta": "churn|all|all", "subscriptions": "upsell|all|all"}
# Stock KPIs share a KPI partition per stock, so a window's denominator is local.
STOCK_KEY = {kpi: f"stock|{stock}" for kpi, (_, stock) in STOCK_KPIS.items()}

Touch = list[Any]  # [at, kind, channel, touchpoint, detractor, subscription_id]


# Checked by name before isinstance (schemas.events.event_types). FEEDBACK: the
# responses that can be a detractor's, which are also what raises an alert.
FEEDBACK = event_types(NpsResponse, CsatResponse, CesResponse, Comment)
SUBSCRIPTIONS = event_types(SubscriptionStarted, SubscriptionCancelled, PlanUpgraded)


def is_detractor(event: AnyEvent) -> bool:
    if event.event_type not in FEEDBACK:
        return False
    if isinstance(event, NpsResponse):
        return event.properties.score <= 6
    if isinstance(event, CsatResponse | CesResponse):
        return event.properties.score <= 2
    if isinstance(event, Comment):
        props = event.properties
        if props.sentiment is not None:
            return props.sentiment == "negative"
        return props.score is not None and props.score <= 2
    return False


def anonymous_touch_of(event: AnyEvent) -> tuple[str, Touch] | None:
    """(anonymous_id, touch) for an event with only an anonymous id: an interaction
    (whatever its type) of the customer the id is or will be linked to."""
    if event.customer_id or not event.anonymous_id:
        return None
    return event.anonymous_id, _touch(event, "touch", "")


def link_of(event: AnyEvent) -> tuple[str, str, float] | None:
    """(anonymous_id, customer_id, at) for an event carrying both ids."""
    if not (event.customer_id and event.anonymous_id):
        return None
    return event.anonymous_id, event.customer_id, event.at


def touch_of(event: AnyEvent) -> tuple[str, Touch] | None:
    """(customer_id, touch) for an identified event, else None."""
    if not event.customer_id:
        return None
    kind = "touch"
    subscription = ""
    if event.event_type == "order_placed" and isinstance(event, OrderPlaced):
        kind = "order"
    elif event.event_type in SUBSCRIPTIONS and isinstance(
        event, SubscriptionStarted | SubscriptionCancelled | PlanUpgraded
    ):
        kind = event.event_type
        subscription = event.properties.subscription_id
    return event.customer_id, _touch(event, kind, subscription)


def _touch(event: AnyEvent, kind: str, subscription: str) -> Touch:
    at = event.at
    return [at, kind, event.channel, event.touchpoint, is_detractor(event), subscription]


class CustomerBook:
    """Customers' histories, applied in event time as the watermark passes. A heap
    of due times (the next pending event, or the churn horizon), rebuilt from the
    store after a restart, avoids scanning every customer."""

    def __init__(self, store: MutableMapping[str, Any], horizon_s: float) -> None:
        self.store = store
        self.horizon_s = horizon_s
        self._due = schedule_for(store)

    def rebuild(self) -> None:
        self._due.clear()
        for customer_id, state in entries(self.store):
            self._schedule(customer_id, state)

    def _schedule(self, customer_id: str, state: dict[str, Any]) -> None:
        times = [float(state["pending"][0][0])] if state["pending"] else []
        for due in (self._horizon_due(state), self._quiet_due(state)):
            if due is not None:
                times.append(due)
        self._due.set(customer_id, min(times) if times else None)

    def add(self, customer_id: str, touches: Iterable[Touch]) -> list[Contribution]:
        """Queue a customer's touches; what an interaction behind the decided
        watermark changes (a stitched one, see the module) comes back at once."""
        state = self._state(customer_id)
        pending = [list(t) for t in state["pending"]]
        done = state.get("decided_until")
        out: list[Contribution] = []
        for touch in touches:
            # A replayed batch adds nothing: what it carries is either pending
            # already or behind the watermark this customer was decided to (where
            # a plain interaction is merged, which a replay leaves as it was).
            if list(touch) in pending:
                continue
            if done is not None and touch[0] <= done:
                if touch[1] == "touch":
                    _merge_late(state, touch, out)
                continue
            bisect.insort(pending, list(touch))
        state["pending"] = pending
        self.store[customer_id] = state
        self._schedule(customer_id, state)
        return out

    def _state(self, customer_id: str) -> dict[str, Any]:
        found = self.store.get(customer_id)
        if found:
            return dict(found)
        return {"pending": [], **_fresh()}

    def decide(self, watermark: float) -> list[Contribution]:
        """Apply every customer's history up to the watermark; the contributions."""
        out: list[Contribution] = []
        for customer_id in sorted(self._due.due(watermark)):
            found = self.store.get(customer_id)
            if found is None:
                continue
            state = dict(found)
            self._advance(state, watermark, out)
            if not state["pending"] and _forgotten(state):
                del self.store[customer_id]
                self._due.set(customer_id, None)
                continue
            state["decided_until"] = watermark
            self.store[customer_id] = state
            self._schedule(customer_id, state)
        return out

    def _advance(self, state: dict[str, Any], watermark: float, out: list[Contribution]) -> None:
        pending = state["pending"]
        due = 0
        while True:
            horizon = self._horizon_due(state)
            next_at = pending[due][0] if due < len(pending) else None
            if (
                horizon is not None
                and horizon <= watermark
                and (next_at is None or horizon < next_at)
            ):
                self._churn(state, horizon, out)
                continue
            quiet = self._quiet_due(state)
            if quiet is not None and quiet <= watermark and (next_at is None or quiet < next_at):
                state.update(_fresh(), pending=pending)  # quiet for the horizon: forgotten
                continue
            if next_at is None or next_at > watermark:
                break
            self._apply(state, pending[due], out)
            due += 1
        state["pending"] = pending[due:]

    def _quiet_due(self, state: dict[str, Any]) -> float | None:
        """When a customer with nothing running is forgotten: a horizon after their
        last interaction or churn (None while active or subscribed)."""
        if state["active"] or _subscribed(state):
            return None
        times = [float(state["last_touch"][0])] if state["last_touch"] is not None else []
        if state.get("churns"):
            times.append(float(state["churns"][-1][0]))
        return max(times) + self.horizon_s if times else None

    def _horizon_due(self, state: dict[str, Any]) -> float | None:
        if not state["active"] or state["last_order"] is None:
            return None
        if _subscribed(state):
            return None
        return float(state["last_order"]) + self.horizon_s

    def _apply(self, state: dict[str, Any], touch: Touch, out: list[Contribution]) -> None:
        at, kind, channel, touchpoint, detractor, subscription = touch
        subscriptions = dict(state["subscriptions"])
        if kind == "order":
            state["last_order"] = at
            self._activate(state, at, out)
        elif kind == "subscription_started":
            if subscriptions.get(subscription) != "active":
                subscriptions[subscription] = "active"
                out.append(_stock("subscriptions", at, 1.0))
            state["subscriptions"] = subscriptions
            self._activate(state, at, out)
        elif kind == "subscription_cancelled":
            if subscriptions.get(subscription) == "active":
                out.append(_stock("subscriptions", at, -1.0))
            subscriptions[subscription] = "cancelled"
            state["subscriptions"] = subscriptions
            if state["active"]:
                self._churn(state, at, out)
        elif kind == "plan_upgraded":
            counts = (("upgrades", 1.0),)
            out.append(Contribution("upsell", channel, touchpoint, at, counts))
            out.append(Contribution("upsell", OVERALL, OVERALL, at, counts))
        # Every event is an interaction; the churning one counts after its churn.
        state["last_touch"] = [at, channel, touchpoint]
        if detractor:
            state["last_detractor"] = [at, channel, touchpoint]

    def _activate(self, state: dict[str, Any], at: float, out: list[Contribution]) -> None:
        if not state["active"]:
            state["active"] = True
            out.append(_stock("active_delta", at, 1.0))

    def _churn(self, state: dict[str, Any], at: float, out: list[Contribution]) -> None:
        state["active"] = False
        out.append(_stock("active_delta", at, -1.0))
        counts = (("churned", 1.0),)
        touch = state["last_touch"]
        if touch is not None:
            out.append(Contribution("churn", touch[1], touch[2], at, counts))
        out.append(Contribution("churn", OVERALL, OVERALL, at, counts))
        detractor = state["last_detractor"]
        if detractor is not None:
            out.append(Contribution("churn_detractor", detractor[1], detractor[2], at, counts))
            out.append(Contribution("churn_detractor", OVERALL, OVERALL, at, counts))
        state["churns"] = [*state.get("churns", []), [at, touch, detractor]]


def _subscribed(state: dict[str, Any]) -> bool:
    """A subscription of the customer is running (no horizon churn, not quiet)."""
    return any(status == "active" for status in state["subscriptions"].values())


def _fresh() -> dict[str, Any]:
    """A customer's state before anything is known of them (but their pending
    touches)."""
    return {
        "active": False,
        "last_order": None,
        "last_touch": None,
        "last_detractor": None,
        "subscriptions": {},
        "churns": [],  # [at, last touch, last detractor]: for late re-attribution
    }


def _forgotten(state: dict[str, Any]) -> bool:
    """Nothing left of a customer (forgotten, or never more than pending)."""
    return all(state.get(key) == value for key, value in _fresh().items())


def _merge_late(state: dict[str, Any], touch: Touch, out: list[Contribution]) -> None:
    """An interaction that arrives behind the decided watermark (stitched from an
    anonymous id): the last interaction or detractor feedback if newer, and the
    churns it precedes re-attributed to it if it is newer than what they used."""
    at, _, channel, touchpoint, detractor, _ = touch
    new = [at, channel, touchpoint]
    kinds = (("churn", 1, True), ("churn_detractor", 2, bool(detractor)))
    churns = [list(c) for c in state.get("churns", [])]
    for churn in churns:
        churned_at = float(churn[0])
        if at >= churned_at:
            continue
        for kpi, slot, applies in kinds:
            old = churn[slot]
            if not applies or (old is not None and old[0] >= at):
                continue
            if old is not None:
                out.append(Contribution(kpi, old[1], old[2], churned_at, (("churned", -1.0),)))
            elif kpi == "churn_detractor":  # newly attributed: overall counts it too
                out.append(Contribution(kpi, OVERALL, OVERALL, churned_at, (("churned", 1.0),)))
            out.append(Contribution(kpi, channel, touchpoint, churned_at, (("churned", 1.0),)))
            churn[slot] = new
    state["churns"] = churns
    for key, applies in (("last_touch", True), ("last_detractor", bool(detractor))):
        old = state[key]
        if applies and (old is None or old[0] < at):
            state[key] = new


def _stock(name: str, at: float, delta: float) -> Contribution:
    kpi = STOCK_GROUP[name].split("|", 1)[0]
    return Contribution(kpi, OVERALL, OVERALL, at, ((name, delta),))


class AnonymousBook:
    """Anonymous ids and their links to customers (identity stitching, see the
    module). What :meth:`link` and :meth:`add` return goes to the customers'
    books as ``(customer_id, touches)``. An id quiet for the churn horizon (in
    event time) is forgotten: its history could no longer precede a churn that
    the horizon has not already decided."""

    def __init__(self, store: MutableMapping[str, Any], horizon_s: float) -> None:
        self.store = store
        self.horizon_s = horizon_s
        # A linked id's link time and last activity are refreshed in steps of a
        # ninetieth of the horizon (a day at 90 days), not at every batch: each
        # write goes into the next checkpoint, and nearly every identified event
        # repeats its link. Expiry and a competing link are judged to within a step.
        self.step_s = horizon_s / 90
        self._due = schedule_for(store)

    def rebuild(self) -> None:
        self._due.clear()
        for anonymous_id, state in entries(self.store):
            self._due.set(anonymous_id, float(state["last_at"]) + self.horizon_s)

    def _state(self, anonymous_id: str) -> dict[str, Any]:
        found = self.store.get(anonymous_id)
        if found:
            return dict(found)
        return {"customer": None, "linked_at": None, "touch": None, "detractor": None}

    def _save(self, anonymous_id: str, state: dict[str, Any], at: float) -> None:
        last = max(at, float(state.get("last_at", at)))
        if state.get("last_at") != last:
            self._due.set(anonymous_id, last + self.horizon_s)
        state["last_at"] = last
        self.store[anonymous_id] = state

    def link(self, anonymous_id: str, customer_id: str, at: float) -> list[tuple[str, list[Touch]]]:
        state = self._state(anonymous_id)
        current, linked_at = state["customer"], state["linked_at"]
        out: list[tuple[str, list[Touch]]] = []
        if current == customer_id:
            if at <= float(linked_at) + self.step_s and not self._stale(state, at):
                return out  # nothing worth a write
            state["linked_at"] = max(float(linked_at), at)
        elif current is None or at > float(linked_at):
            state["customer"], state["linked_at"] = customer_id, at
            held = [t for t in (state["touch"], state["detractor"]) if t is not None]
            unique = [t for i, t in enumerate(held) if t not in held[:i]]
            if unique:
                out.append((customer_id, unique))
        self._save(anonymous_id, state, at)
        return out

    def _stale(self, state: dict[str, Any], at: float) -> bool:
        return "last_at" not in state or at > float(state["last_at"]) + self.step_s

    def add(self, anonymous_id: str, touches: list[Touch]) -> list[tuple[str, list[Touch]]]:
        state = self._state(anonymous_id)
        customer = state["customer"]
        latest = max(float(t[0]) for t in touches)
        # Linked, the touches go on to the customer, and the summary (kept for a
        # link to another customer) is refreshed only with the activity step.
        if customer is None or self._stale(state, latest):
            for touch in touches:
                held = state["touch"]
                if held is None or list(touch) > held:
                    state["touch"] = list(touch)
                held = state["detractor"]
                if touch[4] and (held is None or list(touch) > held):
                    state["detractor"] = list(touch)
            self._save(anonymous_id, state, latest)
        return [(customer, [list(t) for t in touches])] if customer is not None else []

    def expire(self, watermark: float) -> int:
        """Forget ids quiet for the horizon before the watermark; how many."""
        forgotten = 0
        for anonymous_id in self._due.due(watermark):
            state = self.store.get(anonymous_id)
            if state is not None and float(state["last_at"]) + self.horizon_s <= watermark:
                del self.store[anonymous_id]
                forgotten += 1
        return forgotten
