"""ClickHouse unavailable for a while: the ``events`` table is detached for real
(DETACH TABLE), so every insert of the sink fails while the worker goes on
producing. The sink pauses consumption (backpressure), its buffer stays within
the configured batch bound, nothing is committed past what landed, and once the
table is back every event lands exactly once and the KPIs equal the truth."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import landed, send, until_reconciled
from tests.reliability.conftest import Simulated
from touchstream.localbroker import LocalBroker
from touchstream.stack import Stack

OUTAGE_S = 8.0


def test_clickhouse_outage_pauses_the_sink_within_its_bound_and_loses_nothing(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any, simulate: Simulated
) -> None:
    batch_rows = 150
    settings = make_settings(
        broker.bootstrap_servers,
        streams={"kpi_emit_interval_s": 0.5},
        sink={
            "batch_rows": batch_rows,
            "flush_interval_s": 0.3,
            "retry_initial_s": 0.2,
            "retry_max_s": 0.5,
        },
    )
    db = settings.clickhouse.database
    messages, want = simulate(
        settings, customers=30, duplicates=0.1, out_of_order=0.1, malformed=0.01, seed=41
    )
    assert len(want.event_ids) > 4 * batch_rows

    def gauge(stack: Stack, name: str) -> float:
        total = 0.0
        for metric in stack.registry.collect():
            for sample in metric.samples:
                if sample.name == f"touchstream_{name}":
                    total += sample.value
        return total

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        runner = stack.sink_runner
        assert runner is not None
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:
            third = len(messages) // 3
            await asyncio.to_thread(send, producer, stack.settings, messages[:third])
            deadline = time.monotonic() + 60
            while (await asyncio.to_thread(landed, ch, db))[0] < 20:
                stack.check()
                assert time.monotonic() < deadline, "nothing landed before the outage"
                await asyncio.sleep(0.2)

            await asyncio.to_thread(ch.command, f"DETACH TABLE {db}.events")
            started = time.monotonic()
            await asyncio.to_thread(send, producer, stack.settings, messages[third:])
            peak, read_at_pause = 0, None
            while time.monotonic() - started < OUTAGE_S:
                stack.check()
                peak = max(peak, runner.sink.buffered)
                if read_at_pause is None and gauge(stack, "sink_backpressured") == 1:
                    read_at_pause = runner.records_in
                await asyncio.sleep(0.05)
            # Paused: consumption stopped where the failing batch was full, the
            # buffer never outgrew the batch bound, the failed batch was retried.
            assert read_at_pause is not None, "the sink never reported backpressure"
            assert runner.records_in == read_at_pause, "the sink kept consuming while paused"
            assert 0 < peak <= batch_rows, f"{peak} rows buffered, bound {batch_rows}"
            assert gauge(stack, "sink_flush_retries_total") >= 3
            assert gauge(stack, "sink_consumer_lag") > 0  # the worker went on producing

            await asyncio.to_thread(ch.command, f"ATTACH TABLE {db}.events")
            await until_reconciled(stack, ch, db, want, timeout_s=120)
            assert gauge(stack, "sink_backpressured") == 0
        finally:
            producer.close()
            await stack.stop()

    asyncio.run(scenario())
