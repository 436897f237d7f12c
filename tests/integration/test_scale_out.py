"""Scale-out on one machine (issue 7): two stream workers in one consumer group and
one sink; one worker is SIGKILLed mid-stream, the other takes its partitions over,
the killed one comes back; the KPIs in ClickHouse equal the simulator's ground
truth exactly, and no event is lost or counted twice."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.integration.test_exact_kpis import kpi_rows, landed
from touchstream.localbroker import LocalBroker
from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.producers.truth import truth_for
from touchstream.stack import Stack


@pytest.mark.xfail(
    strict=False,
    reason="known bug, streams issue: after a worker kill, under load, an abandonment or "
    "churn decision can come out wrong or late (seen: one cart counted abandoned, or "
    "decisions stalled); docs/design/streams.md, 'Open: decisions after a kill'",
)
def test_two_workers_one_killed_and_back_kpis_exact(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    settings = make_settings(
        broker.bootstrap_servers,
        kafka={"partitions": 6},
        streams={"kpi_emit_interval_s": 0.5},
    )
    db = settings.clickhouse.database
    streams = settings.streams
    config = SimulationConfig(
        customers=90,
        duration_s=2 * 3600,
        start=datetime(2026, 11, 4, 9, tzinfo=UTC),
        seed=23,
        duplicates=0.1,
        out_of_order=0.05,
        late=0.03,
        malformed=0.01,
        allowed_lateness_s=streams.allowed_lateness_s,
        abandonment_timeout_s=streams.abandonment_timeout_s,
        settle=True,
    )
    messages = Simulator(config).messages()
    truth = truth_for(messages, streams)
    want = {
        (r["kpi"], r["channel"], r["touchpoint"], r["window_start"], r["window_size"]): (
            r["numerator"],
            r["denominator"],
        )
        for r in truth.rows()
    }
    want_landed = (truth.events, truth.late, sum(truth.dead_letters.values()))

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        second = stack.spawn_worker("worker-2.log")
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:

            def send(part: list[Any]) -> None:
                for m in part:
                    producer.send(stack.settings.topic(m.family), key=m.key, value=m.value)
                producer.flush()

            third = len(messages) // 3
            await asyncio.to_thread(send, messages[:third])
            deadline = time.monotonic() + 90
            while landed(ch, db)[0] < truth.events // 6:
                stack.check()
                assert second.poll() is None, "the second worker died"
                assert time.monotonic() < deadline, "the workers never got going"
                await asyncio.sleep(0.2)
            stack.kill_worker(restart=False)  # SIGKILL: the second one takes over
            await asyncio.to_thread(send, messages[third : 2 * third])
            await asyncio.sleep(8)  # past the session timeout: the group rebalanced
            stack.kill_worker(restart=True)  # the killed worker comes back
            await asyncio.to_thread(send, messages[2 * third :])

            deadline = time.monotonic() + 240
            got: dict[Any, tuple[float, float]] = {}
            while time.monotonic() < deadline:
                stack.check()
                assert second.poll() is None, "the second worker died"
                got = kpi_rows(ch, db)
                if got == want and landed(ch, db) == want_landed:
                    break
                await asyncio.sleep(1)
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            assert not missing and set(got) == set(want), (
                f"landed {landed(ch, db)} of {want_landed}; {len(missing)} windows differ in "
                f"{sorted({k[0] for k in missing})}, e.g. "
                f"{[(k, v, got.get(k)) for k, v in list(missing.items())[:3]]}"
            )
            # Every event once: distinct ids = rows after FINAL = the truth.
            ids = ch.query(f"SELECT uniqExact(event_id) FROM {db}.events").result_rows[0][0]
            assert ids == truth.events
        finally:
            producer.close()
            second.kill()
            second.wait(timeout=10)
            await stack.stop()

    asyncio.run(scenario())
