"""Consumer lag on the real broker: the worker's measure (highwater minus position,
with aiokafka, Faust's own client) and the sink's (records not yet landed in
ClickHouse), which grows while ClickHouse refuses inserts and drains after."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from tests.conftest import SettingsFactory
from tests.integration.test_sink_runner import FailingInserts, N, make_runner, produce_events
from tests.topics import assigned
from touchstream.kafka_admin import ensure_topics
from touchstream.localbroker import LocalBroker
from touchstream.sinks.migrate import migrate
from touchstream.streams.metrics import measure_lag


def test_worker_lag_is_highwater_minus_position(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = make_settings(broker.bootstrap_servers)
    topic = settings.topic("clickstream")

    async def scenario() -> dict[tuple[str, int], int]:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        try:
            for n in range(10):
                await producer.send(topic, f"m{n}".encode(), partition=1)
            await producer.flush()
        finally:
            await producer.stop()
        partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        async with assigned(broker.bootstrap_servers, partitions) as consumer:
            got: list[Any] = []
            while len(got) < 4:
                polled = await consumer.getmany(timeout_ms=1000, max_records=4 - len(got))
                got.extend(r for records in polled.values() for r in records)
            return await measure_lag(consumer, {topic})

    lags = asyncio.run(scenario())
    assert lags[(topic, 1)] == 6  # 10 written, 4 read
    assert lags.get((topic, 0), 0) == 0  # empty partition


def test_sink_lag_counts_records_not_yet_in_clickhouse(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    settings = make_settings(
        broker.bootstrap_servers, sink={"retry_initial_s": 0.1, "retry_max_s": 0.2}
    )
    migrate(ch, settings.clickhouse.database)
    registry = CollectorRegistry()
    client = FailingInserts(ch, fail=10**6)
    runner = make_runner(settings, lambda: client, registry)
    runner.lag_interval_s = 0.1
    events = settings.topic("events")

    def lag() -> float:
        return sum(
            registry.get_sample_value(
                "touchstream_sink_consumer_lag", {"topic": events, "partition": str(p)}
            )
            or 0.0
            for p in range(settings.kafka.partitions)
        )

    def value(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    async def wait(check: Any, timeout_s: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.1)

    async def scenario() -> None:
        await produce_events(settings)
        task = asyncio.create_task(runner.run())
        # ClickHouse refuses: all N are read and buffered, none landed, consumption paused.
        await wait(lambda: lag() == N and value("touchstream_sink_backpressured") == 1)
        await wait(lambda: value("touchstream_sink_flush_retries_total") >= 2)
        client.fail = 0  # ClickHouse is back
        await wait(lambda: lag() == 0 and value("touchstream_sink_backpressured") == 0)
        runner.stop()
        await task

    asyncio.run(scenario())
    landed = ch.query(f"SELECT count() FROM {settings.clickhouse.database}.events")
    assert landed.result_rows[0][0] == N
