"""The worker's outputs on the real broker: records sent in batches per partition
land where they were sent, in order, whatever the batch size."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from tests.conftest import SettingsFactory
from tests.topics import assigned
from touchstream.kafka_admin import ensure_topics
from touchstream.localbroker import LocalBroker
from touchstream.streams.outputs import DeliveryFailed, Outputs


def test_send_many_lands_in_order_per_partition_across_batches(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    # 1 KB batches: 300 records of ~120 bytes per partition take dozens of batches.
    settings = make_settings(broker.bootstrap_servers, kafka={"batch_bytes": 1024})
    topic = settings.topic("events")
    records = [
        (f"k{n % 7}".encode(), f'{{"n":{n},"pad":"{"x" * 100}"}}'.encode(), n % 3)
        for n in range(900)
    ]

    async def scenario() -> dict[int, list[tuple[bytes | None, bytes | None]]]:
        await ensure_topics(settings)
        outputs = Outputs(settings)
        try:
            await outputs.send_many(topic, records[:450])
            await outputs.send(topic, b"single", key=b"s", partition=1)
            await outputs.send_many(topic, records[450:])
            await outputs.flush()
        finally:
            await outputs.stop()
        got: dict[int, list[tuple[bytes | None, bytes | None]]] = {0: [], 1: [], 2: []}
        partitions = [TopicPartition(topic, p) for p in got]
        async with assigned(broker.bootstrap_servers, partitions) as consumer:
            while sum(len(v) for v in got.values()) < len(records) + 1:
                polled = await consumer.getmany(timeout_ms=1000)
                for tp, batch in polled.items():
                    got[tp.partition].extend((r.key, r.value) for r in batch)
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 60))
    for partition in (0, 2):
        assert got[partition] == [(k, v) for k, v, p in records if p == partition]
    first = [(k, v) for k, v, p in records[:450] if p == 1]
    rest = [(k, v) for k, v, p in records[450:] if p == 1]
    assert got[1] == [*first, (b"s", b"single"), *rest]


def test_a_record_over_the_request_limit_is_refused_before_anything_goes(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = make_settings(broker.bootstrap_servers, kafka={"max_request_bytes": 100_000})
    topic = settings.topic("events")

    async def scenario() -> None:
        await ensure_topics(settings)
        outputs = Outputs(settings)
        try:
            with pytest.raises(DeliveryFailed, match="over kafka.max_request_bytes"):
                await outputs.send_many(topic, [(b"k", b"x" * 200_000, 0)])
        finally:
            await outputs.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
