"""Checkout and cart abandonment on the real broker, against outcomes worked out by
hand from PRODUCT.md's definition (timeout 30 min, lateness 10 min, event time)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import SettingsFactory
from tests.samples import wire
from touchstream.localbroker import LocalBroker
from touchstream.producers.emitter import Emitter
from touchstream.producers.simulator import keys_on_every_partition
from touchstream.stack import Stack

T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def checkout(minutes: float, event_type: str, checkout_id: str, **kw: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"checkout_id": checkout_id}
    if event_type == "checkout_started":
        props.update(cart_id=kw.pop("cart_id"), value="10", currency="EUR")
    elif event_type == "checkout_step":
        props["step"] = kw.pop("step")
    elif event_type == "order_placed":
        props = {**wire("order_placed")["properties"], "checkout_id": checkout_id}
    return wire(event_type, occurred_at=at(minutes), properties=props, **kw)


def cart(minutes: float, cart_id: str, **kw: Any) -> dict[str, Any]:
    props = {**wire("add_to_cart")["properties"], "cart_id": cart_id}
    return wire("add_to_cart", occurred_at=at(minutes), properties=props, **kw)


def carts_on_every_partition(partitions: int) -> list[str]:
    """Cart ids whose outcome messages land on each partition of the internal topic."""
    return keys_on_every_partition(partitions, lambda n: f"flush-{n}", lambda k: f"cart|{k}")


def test_abandonment_matches_the_definition(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    # One burst, no kills: partitions quiet for a second may stop holding decisions.
    settings = make_settings(broker.bootstrap_servers, streams={"idle_source_s": 1})
    db = settings.clickhouse.database
    web = {"channel": "web"}
    app = {"channel": "mobile_app"}
    events = [
        # A: completed in 10 min; its last step before the order was payment.
        checkout(0, "checkout_started", "A", cart_id="cart-Y", touchpoint="checkout", **web),
        checkout(5, "checkout_step", "A", step="payment", touchpoint="payment", **web),
        checkout(10, "order_placed", "A", touchpoint="order_confirmation", **web),
        # B: no order: abandoned at its shipping step (touchpoint checkout).
        checkout(1, "checkout_started", "B", cart_id="cart-B", touchpoint="checkout", **app),
        checkout(2, "checkout_step", "B", step="shipping", touchpoint="checkout", **app),
        # C: ordered after 31 min: abandoned, at payment (its last step before the deadline).
        checkout(2, "checkout_started", "C", cart_id="cart-C", touchpoint="checkout", **web),
        checkout(20, "checkout_step", "C", step="payment", touchpoint="payment", **web),
        checkout(33, "checkout_step", "C", step="review", touchpoint="review", **web),
        checkout(33, "order_placed", "C", touchpoint="order_confirmation", **web),
        # Carts: X never reaches checkout (abandoned), Y does (A's cart).
        cart(0, "cart-X", touchpoint="cart", **web),
        cart(-3, "cart-Y", touchpoint="cart", **web),
    ]
    # In event-time order: nothing here is beyond the allowed lateness.
    events.sort(key=lambda e: e["occurred_at"])
    # Later activity on every partition moves the watermarks past every deadline.
    flush = [
        cart(120, key, touchpoint="cart")
        for key in carts_on_every_partition(settings.kafka.partitions)
    ]
    want = {
        ("checkout_abandonment", "all", "all"): (2.0, 3.0),
        ("checkout_abandonment", "web", "payment"): (1.0, 2.0),
        ("checkout_abandonment", "mobile_app", "checkout"): (1.0, 1.0),
        ("cart_abandonment", "all", "all"): (1.0, 2.0),
        ("cart_abandonment", "web", "cart"): (1.0, 2.0),
    }

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        try:
            with Emitter(stack.settings) as emitter:
                for event in events + events[:3]:  # re-sent: still counted once
                    emitter.emit(event)
            time.sleep(1)
            with Emitter(stack.settings) as emitter:
                for event in flush:
                    emitter.emit(event)
            deadline = time.monotonic() + 60
            while True:
                stack.check()
                rows = ch.query(
                    f"SELECT kpi, channel, touchpoint, numerator, denominator "
                    f"FROM {db}.kpi_touchpoint FINAL WHERE kpi LIKE '%abandonment' "
                    "AND window_size = 86400"
                ).result_rows
                got = {(k, c, t): (n, d) for k, c, t, n, d in rows}
                if got == want:
                    break
                assert time.monotonic() < deadline, f"got {got}"
                await asyncio.sleep(0.5)
            value = ch.query(
                f"SELECT value FROM {db}.kpi_touchpoint FINAL WHERE kpi = 'checkout_abandonment' "
                "AND channel = 'all' AND window_size = 86400"
            ).result_rows[0][0]
            assert value == 2 / 3
        finally:
            await stack.stop()

    asyncio.run(scenario())
