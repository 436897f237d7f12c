"""Scale-out on one machine (issue 7): two stream workers in one consumer group and
one sink; one worker is SIGKILLed mid-stream, the other takes its partitions over,
the killed one comes back; the KPIs in ClickHouse equal the simulator's ground
truth exactly, and no event is lost or counted twice."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import expect, landed, send, settled, until_reconciled
from touchstream.localbroker import LocalBroker
from touchstream.producers.simulator import Simulator
from touchstream.stack import Stack


def test_two_workers_one_killed_and_back_kpis_exact(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    settings = make_settings(
        broker.bootstrap_servers,
        kafka={"partitions": 6},
        # A 1 h KPI retention: whatever the workers make final or drop across the
        # kill and the rebalances must change no window (whether it acts before
        # the end depends on the partitions' pace; tests/reliability/
        # test_worker_kill.py waits until it has).
        streams={"kpi_emit_interval_s": 0.5, "kpi_retention_s": 3600},
    )
    db = settings.clickhouse.database
    streams = settings.streams
    config = settled(
        settings,
        customers=90,
        duration_s=2 * 3600,
        start=datetime(2026, 11, 4, 9, tzinfo=UTC),
        seed=23,
        duplicates=0.1,
        out_of_order=0.05,
        late=0.03,
        malformed=0.01,
    )
    messages = Simulator(config).messages()
    want = expect(messages, streams)

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        second = stack.spawn_worker("worker-2.log")
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)

        def check() -> None:
            stack.check()
            assert second.poll() is None, "the second worker died"

        try:
            third = len(messages) // 3
            await asyncio.to_thread(send, producer, stack.settings, messages[:third])
            deadline = time.monotonic() + 90
            while landed(ch, db)[0] < want.truth.events // 6:
                check()
                assert time.monotonic() < deadline, "the workers never got going"
                await asyncio.sleep(0.2)
            stack.kill_worker(restart=False)  # SIGKILL: the second one takes over
            await asyncio.to_thread(send, producer, stack.settings, messages[third : 2 * third])
            await asyncio.sleep(8)  # past the session timeout: the group rebalanced
            assert second.poll() is None, "the second worker died"
            stack.kill_worker(restart=True)  # the killed worker comes back
            await asyncio.to_thread(send, producer, stack.settings, messages[2 * third :])
            # Every event once (by id), late ones flagged, dead letters by reason,
            # every KPI window equal to the truth.
            await until_reconciled(stack, ch, db, want, timeout_s=240)
            check()
        finally:
            producer.close()
            second.kill()
            second.wait(timeout=10)
            await stack.stop()

    asyncio.run(scenario())
