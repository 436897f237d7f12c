"""KPIs exactly as the ground truth says, on the real broker and embedded
ClickHouse: duplicates, out-of-order, late and malformed input, and a stream
worker killed with SIGKILL mid-stream and restarted."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import Key, kpi_rows, landed
from touchstream.localbroker import LocalBroker
from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.producers.truth import truth_for
from touchstream.stack import Stack


def test_kpis_equal_the_ground_truth_through_noise_and_a_worker_kill(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    settings = make_settings(broker.bootstrap_servers, streams={"kpi_emit_interval_s": 0.5})
    db = settings.clickhouse.database
    streams = settings.streams
    config = SimulationConfig(
        customers=70,
        duration_s=3 * 3600,
        start=datetime(2026, 11, 3, 21, tzinfo=UTC),  # across a UTC day boundary
        seed=17,
        duplicates=0.1,
        out_of_order=0.1,
        late=0.05,
        malformed=0.01,
        allowed_lateness_s=streams.allowed_lateness_s,
        abandonment_timeout_s=streams.abandonment_timeout_s,
        settle=True,
    )
    messages = Simulator(config).messages()
    truth = truth_for(messages, streams)
    assert truth.late and truth.duplicates and truth.dead_letters
    want = {
        (r["kpi"], r["channel"], r["touchpoint"], r["window_start"], r["window_size"]): (
            r["numerator"],
            r["denominator"],
        )
        for r in truth.rows()
    }
    assert {k[0] for k in want} >= {"nps", "csat", "ces", "checkout_abandonment", "retention"}

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:

            def send(part: list[Any]) -> None:
                for m in part:
                    producer.send(stack.settings.topic(m.family), key=m.key, value=m.value)
                producer.flush()

            half = len(messages) // 2
            await asyncio.to_thread(send, messages[:half])
            # Kill the worker once it is busy with the first half, then go on.
            deadline = time.monotonic() + 60
            while landed(ch, db)[0] < truth.events // 4:
                stack.check()
                assert time.monotonic() < deadline, "the worker never got going"
                await asyncio.sleep(0.2)
            stack.kill_worker(restart=True)
            await asyncio.to_thread(send, messages[half:])

            deadline = time.monotonic() + 240
            got: dict[Key, tuple[float, float]] = {}
            while time.monotonic() < deadline:
                stack.check()
                got = kpi_rows(ch, db)
                if got == want and landed(ch, db) == (
                    truth.events,
                    truth.late,
                    sum(truth.dead_letters.values()),
                ):
                    return
                await asyncio.sleep(1)
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            extra = {k: got[k] for k in set(got) - set(want)}
            dead = ch.query(
                f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason"
            ).result_rows
            raise AssertionError(
                f"landed (events, late, dead) {landed(ch, db)} of {truth.events, truth.late}, "
                f"dead letters {sorted(dead)} of {sorted(truth.dead_letters.items())}; "
                f"{len(missing)} windows differ in {sorted({k[0] for k in missing})}, e.g. "
                f"{[(k, v, got.get(k)) for k, v in list(missing.items())[:3]]}; "
                f"extra {list(extra.items())[:3]}"
            )
        finally:
            producer.close()
            await stack.stop()

    asyncio.run(scenario())
