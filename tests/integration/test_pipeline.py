"""The whole pipeline on the real local broker and embedded ClickHouse: simulated
events in, reconciled exactly by event_id, and KPI rows equal to a plain-Python
computation from the same events."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from tests.conftest import SettingsFactory
from touchstream.localbroker import LocalBroker
from touchstream.producers.emitter import Emitter
from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.stack import Stack
from touchstream.streams.customers import STOCK_KPIS

BAD = [b"{oops", b'{"event_type": "nope", "customer_id": "x"}', b"\xff"]


def expected_daily_nps(
    events: list[dict[str, Any]],
) -> dict[tuple[str, str, datetime], tuple[float, float]]:
    """(channel, touchpoint, day) → (promoters - detractors, responses), from the definition."""
    out: dict[tuple[str, str, datetime], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in events:
        if e["event_type"] != "nps_response":
            continue
        at = datetime.fromisoformat(e["occurred_at"])
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        score = e["properties"]["score"]
        for key in ((e["channel"], e["touchpoint"], day), ("all", "all", day)):
            out[key][0] += (score >= 9) - (score <= 6)
            out[key][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def test_events_in_kpi_rows_out(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    settings = make_settings(broker.bootstrap_servers)
    db = settings.clickhouse.database
    events = list(
        Simulator(
            SimulationConfig(customers=80, seed=11, start=datetime(2026, 11, 2, 20, tzinfo=UTC))
        ).events()
    )
    assert any(e["event_type"] == "nps_response" for e in events)

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        try:
            with Emitter(stack.settings) as emitter:
                for event in events:
                    emitter.emit(event)
                for raw in BAD:
                    emitter.send_raw(stack.settings.topic("orders"), b"k", raw)
            want_ids = {e["event_id"] for e in events}
            want_nps = expected_daily_nps(events)
            deadline = time.monotonic() + 120
            while True:
                stack.check()
                got_ids = {
                    str(r[0])
                    for r in ch.query(f"SELECT event_id FROM {db}.events FINAL").result_rows
                }
                dead = ch.query(
                    f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason"
                ).result_rows
                nps_rows = ch.query(
                    f"SELECT channel, touchpoint, window_start, numerator, denominator "
                    f"FROM {db}.kpi_touchpoint FINAL WHERE kpi = 'nps' AND window_size = 86400"
                ).result_rows
                got_nps = {(c, t, ws.replace(tzinfo=UTC)): (n, d) for c, t, ws, n, d in nps_rows}
                if (
                    got_ids == want_ids
                    and sum(n for _, n in dead) == len(BAD)
                    and got_nps == want_nps
                ):
                    break
                assert time.monotonic() < deadline, (
                    f"not reconciled: {len(got_ids)}/{len(want_ids)} events, dead {dead}, "
                    f"nps rows {len(got_nps)}/{len(want_nps)}"
                )
                await asyncio.sleep(0.5)
            assert dict(dead) == {"not_json": 2, "unknown_event_type": 1}
            # Hourly windows exist too, and every value carries numerator and denominator;
            # but a rate over a stock (churn, upsell: over the customers active, the
            # subscriptions, at the window's start) has none, and no value, in a
            # window starting before the first customer (once the outcome stage has
            # decided: when the test runs long, as on a loaded machine).
            stocks = ", ".join(f"'{kpi}'" for kpi in STOCK_KPIS)
            hourly = ch.query(
                f"SELECT count(), countIf(denominator > 0), "
                f"countIf(denominator = 0 AND value IS NULL AND kpi IN ({stocks})) "
                f"FROM {db}.kpi_touchpoint FINAL WHERE window_size = 3600"
            ).result_rows[0]
            assert hourly[0] > 0 and hourly[0] == hourly[1] + hourly[2]
            metrics = stack.registry.get_sample_value(
                "touchstream_sink_rows_written_total", {"table": "events"}
            )
            assert metrics is not None and metrics >= len(events)
        finally:
            await stack.stop()

    asyncio.run(scenario())


def test_a_kafka_python_event_round_trips_through_aiokafka(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    """Smoke test of the two clients we ship: the kafka-python emitter and aiokafka."""
    from aiokafka import AIOKafkaConsumer

    from tests.samples import wire

    settings = make_settings(broker.bootstrap_servers)
    event = wire("nps_response", customer_id="cust-42")
    with Emitter(settings) as emitter:
        metadata = emitter.emit(event).get(timeout=10)
    assert metadata.topic == settings.topic("feedback")

    async def consume() -> Any:
        consumer = AIOKafkaConsumer(
            settings.topic("feedback"),
            bootstrap_servers=settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            return await asyncio.wait_for(consumer.getone(), 15)
        finally:
            await consumer.stop()

    record = asyncio.run(consume())
    assert record.key == b"cust-42"
    assert dict(record.headers)["event_type"] == b"nps_response"
    body = json.loads(record.value)
    assert body["event_id"] == event["event_id"] and body["properties"]["score"] == 9


def test_per_event_kpis_land_with_numerators_and_denominators(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    from tests.samples import wire

    settings = make_settings(broker.bootstrap_servers)
    db = settings.clickhouse.database
    at = "2026-11-02T10:15:00Z"
    item = {"sku": "s", "category": "toys", "quantity": 1, "price": "2"}
    events = [
        wire("isn_response", occurred_at=at, properties={"attribute": "delivery", "score": 5}),
        wire("isn_response", occurred_at=at, properties={"attribute": "delivery", "score": 1}),
        wire("isn_response", occurred_at=at, properties={"attribute": "delivery", "score": 4}),
        wire("comment", occurred_at=at, properties={"text": "great", "sentiment": "positive"}),
        wire("comment", occurred_at=at, properties={"text": "meh", "score": 3}),
        wire("cancellation_retained", occurred_at=at),
        wire("subscription_cancelled", occurred_at=at),
        wire("subscription_cancelled", occurred_at=at),
        wire("order_placed", occurred_at=at),
        wire(
            "order_placed",
            occurred_at=at,
            properties={
                **wire("order_placed")["properties"],
                "items": [item, {**item, "category": "home"}],
            },
        ),
    ]
    want = {  # kpi → (numerator, denominator) in the overall daily window
        "isn:delivery": (1.0, 3.0),
        "comments_positive_share": (1.0, 2.0),
        "retention": (1.0, 3.0),
        "cross_sell": (1.0, 2.0),
    }

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        try:
            with Emitter(stack.settings) as emitter:
                for event in events:
                    emitter.emit(event)
            deadline = time.monotonic() + 60
            while True:
                stack.check()
                rows = ch.query(
                    f"SELECT kpi, numerator, denominator FROM {db}.kpi_touchpoint FINAL "
                    "WHERE channel = 'all' AND window_size = 86400"
                ).result_rows
                got = {kpi: (n, d) for kpi, n, d in rows}
                if all(got.get(k) == v for k, v in want.items()):
                    break
                assert time.monotonic() < deadline, f"KPIs not as expected: {got}"
                await asyncio.sleep(0.5)
            values = dict(
                ch.query(
                    f"SELECT kpi, value FROM {db}.kpi_touchpoint FINAL "
                    "WHERE channel = 'all' AND window_size = 86400"
                ).result_rows
            )
            assert round(values["isn:delivery"], 4) == round(100 * (2 - 1) / 3, 4)
            assert values["retention"] == 1 / 3 and values["cross_sell"] == 0.5
        finally:
            await stack.stop()

    asyncio.run(scenario())
