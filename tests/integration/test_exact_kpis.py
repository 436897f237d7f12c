"""KPIs exactly as the ground truth says, on the real broker and embedded
ClickHouse: duplicates, out-of-order, late and malformed input, churn by the
horizon with anonymous interactions stitched to their customers, and a stream
worker killed with SIGKILL mid-stream and restarted."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import expect, landed, send, settled, until_reconciled
from touchstream.localbroker import LocalBroker
from touchstream.producers.simulator import Message, Simulator
from touchstream.stack import Stack


@pytest.mark.parametrize("cache", [0, 8], ids=["in-memory", "spilling"])
def test_kpis_equal_the_ground_truth_through_noise_and_a_worker_kill(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any, cache: int
) -> None:
    # A one-hour churn horizon: customers churn within the three simulated hours,
    # some of them last seen logged out on another device (stitched). Spilling:
    # the outcome partitions keep 8 entities in memory, the rest in their files.
    settings = make_settings(
        broker.bootstrap_servers,
        streams={
            "kpi_emit_interval_s": 0.5,
            "churn_horizon_s": 3600,
            "outcome_cache_entries": cache,
        },
    )
    db = settings.clickhouse.database
    streams = settings.streams
    config = settled(
        settings,
        customers=70,
        duration_s=3 * 3600,
        start=datetime(2026, 11, 3, 21, tzinfo=UTC),  # across a UTC day boundary
        seed=17,
        duplicates=0.1,
        out_of_order=0.1,
        late=0.05,
        malformed=0.01,
    )
    messages = Simulator(config).messages()
    want = expect(messages, streams)
    assert want.truth.late and want.truth.duplicates and want.truth.dead_letters
    assert {k[0] for k in want.kpis} >= {
        "nps",
        "csat",
        "ces",
        "checkout_abandonment",
        "retention",
        "churn",
        "churn_detractor",
    }
    # Stitching decides some churn windows: without the links they would differ.
    unlinked = expect([without_links(m) for m in messages], streams)
    stitched = {k: v for k, v in want.kpis.items() if k[0] == "churn"}
    assert stitched != {k: v for k, v in unlinked.kpis.items() if k[0] == "churn"}

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:
            half = len(messages) // 2
            await asyncio.to_thread(send, producer, stack.settings, messages[:half])
            # Kill the worker once it is busy with the first half, then go on.
            deadline = time.monotonic() + 60
            while landed(ch, db)[0] < want.truth.events // 4:
                stack.check()
                assert time.monotonic() < deadline, "the worker never got going"
                await asyncio.sleep(0.2)
            stack.kill_worker(restart=True)
            await asyncio.to_thread(send, producer, stack.settings, messages[half:])
            await until_reconciled(stack, ch, db, want, timeout_s=240)
        finally:
            producer.close()
            await stack.stop()

    asyncio.run(scenario())
    # Spilling, the outcome partitions had their (unlinked) files there; none is left.
    state_dir = settings.data_dir / "state"
    assert state_dir.is_dir() == bool(cache) and not (cache and any(state_dir.iterdir()))


def without_links(message: Message) -> Message:
    """The message with no anonymous id where a customer id is set: nothing links
    an anonymous id to its customer."""
    if message.kind.startswith("malformed"):
        return message
    event = json.loads(message.value)
    if event.get("customer_id"):
        event.pop("anonymous_id", None)
    return Message(message.family, message.key, json.dumps(event).encode(), message.kind)
