"""The sink's Kafka loop on the real broker: offsets are committed only for rows
ClickHouse acknowledged, a failing ClickHouse pauses consumption, and the same code
writes over HTTP (to the embedded engine's HTTP interface, standing in for a server)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from tests.conftest import SettingsFactory
from tests.samples import wire
from touchstream.chhttp import EngineHTTP
from touchstream.kafka_admin import ensure_topics
from touchstream.localbroker import LocalBroker
from touchstream.schemas import Invalid, parse_object
from touchstream.settings import Settings
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks.clickhouse import ROLES, ClickHouseSink, default_routes
from touchstream.sinks.client import connect
from touchstream.sinks.migrate import migrate
from touchstream.sinks.runner import SinkRunner

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
N = 300


class FailingInserts:
    """The real client with its first ``fail`` inserts refused (fault injection)."""

    def __init__(self, real: Any, fail: int) -> None:
        self.real, self.fail = real, fail

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("injected: ClickHouse unavailable")
        return self.real.insert(*args, **kwargs)

    def close(self) -> None:
        return None  # the session fixture owns the real client


async def send_forwarded(producer: AIOKafkaProducer, settings: Settings, customer: str) -> str:
    """A page view as the worker forwards it, to the events topic; its event id."""
    event = parse_object(wire("page_view", customer_id=customer))
    assert not isinstance(event, Invalid)
    value = event.model_copy(update={"received_at": NOW}).model_dump_json(exclude_none=True)
    await producer.send(settings.topic("events"), value.encode(), key=event.identity.encode())
    return str(event.event_id)


async def produce_events(settings: Settings) -> list[str]:
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    ids = []
    try:
        for n in range(N):
            ids.append(await send_forwarded(producer, settings, f"c{n % 17}"))
        await producer.flush()
    finally:
        await producer.stop()
    return ids


async def committed(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.sink.group_id
    )
    await consumer.start()
    try:
        total = 0
        for p in range(settings.kafka.partitions):
            offset = await consumer.committed(TopicPartition(settings.topic("events"), p))
            total += offset or 0
        return total
    finally:
        await consumer.stop()


def make_runner(settings: Settings, client_factory: Any, registry: CollectorRegistry) -> SinkRunner:
    metrics = sink_metrics.create(registry)
    topics = {role: settings.topic(role) for role in ROLES}
    sink = ClickHouseSink(
        client_factory, settings.clickhouse.database, default_routes(topics), metrics
    )
    return SinkRunner(settings, sink, list(topics.values()), metrics)


async def wait_for(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)


def count(ch: Any, database: str) -> int:
    return int(ch.query(f"SELECT count() FROM {database}.events").result_rows[0][0])


def test_offsets_are_committed_only_after_clickhouse_acknowledged(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    settings = make_settings(
        broker.bootstrap_servers, sink={"retry_initial_s": 0.2, "retry_max_s": 0.4}
    )
    database = settings.clickhouse.database
    migrate(ch, database)
    registry = CollectorRegistry()
    client = FailingInserts(ch, fail=3)
    runner = make_runner(settings, lambda: client, registry)

    async def scenario() -> None:
        ids = await produce_events(settings)
        task = asyncio.create_task(runner.run())
        # While inserts fail: consumption pauses, nothing lands, nothing is committed.
        await wait_for(lambda: value(registry, "touchstream_sink_insert_failures_total") >= 2)
        assert count(ch, database) == 0
        assert await committed(settings) == 0
        assert runner.sink.buffered <= N
        await wait_for(lambda: count(ch, database) == N)
        await wait_for(lambda: committed_is(settings, N))
        runner.stop()
        await task
        got = {str(r[0]) for r in ch.query(f"SELECT event_id FROM {database}.events").result_rows}
        assert got == set(ids)  # every event once: the retried batch did not duplicate

    asyncio.run(scenario())
    assert value(registry, "touchstream_sink_backpressure_pauses_total") >= 1
    assert value(registry, "touchstream_sink_insert_failures_total") == 3


def test_the_sink_writes_to_clickhouse_over_http(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    embedded = make_settings(
        broker.bootstrap_servers, clickhouse={"password": "w", "serve_port": 0}
    )
    database = embedded.clickhouse.database
    migrate(ch, database)

    async def scenario() -> None:
        endpoint = EngineHTTP(embedded, lambda: connect(embedded))
        port = await endpoint.start()
        over_http = make_settings(
            broker.bootstrap_servers,
            clickhouse={"dsn": f"http://127.0.0.1:{port}", "database": database, "password": "w"},
            sink={"group_id": embedded.sink.group_id},
            kafka={"topic_prefix": embedded.kafka.topic_prefix},
        )
        assert not over_http.embedded_clickhouse
        runner = make_runner(over_http, lambda: connect(over_http), CollectorRegistry())
        try:
            ids = await produce_events(over_http)
            task = asyncio.create_task(runner.run())
            await wait_for(lambda: count(ch, database) == N)
            runner.stop()
            await task
            assert endpoint.queries > 0
            got = {
                str(r[0]) for r in ch.query(f"SELECT event_id FROM {database}.events").result_rows
            }
            assert got == set(ids)
        finally:
            await endpoint.stop()

    asyncio.run(scenario())


def value(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def committed_is(settings: Settings, expected: int) -> bool:
    return await committed(settings) == expected


class Shared:
    """The session's engine client for one sink among several: closing a sink
    leaves it open (the session fixture owns it). ``slow_s``: each INSERT takes
    that much longer (a flush still running when the group rebalances)."""

    def __init__(self, real: Any, slow_s: float = 0.0) -> None:
        self._real = real
        self._slow_s = slow_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._slow_s)
        return self._real.insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._slow_s)
        return self._real.raw_insert(*args, **kwargs)

    def close(self) -> None:
        return None


def test_sinks_that_join_and_leave_the_group_mid_stream_lose_nothing(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    # README, "Running in production": add sink replicas, they share the partitions
    # in their group. Each join and leave rebalances it while the sinks poll, flush
    # and commit; every event lands, and no sink fails for it.
    settings = make_settings(broker.bootstrap_servers)
    database = settings.clickhouse.database
    migrate(ch, database)
    enough = asyncio.Event()

    async def produce(ids: list[str]) -> None:
        """~500 events/s until ``enough``."""
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        await producer.start()
        try:
            while not enough.is_set():
                for _ in range(50):
                    ids.append(await send_forwarded(producer, settings, f"c{len(ids) % 101}"))
                await asyncio.sleep(0.1)
            await producer.flush()
        finally:
            await producer.stop()

    async def scenario() -> None:
        await ensure_topics(settings)
        ids: list[str] = []
        first = make_runner(settings, lambda: Shared(ch, slow_s=1.0), CollectorRegistry())
        running = asyncio.create_task(first.run())
        sending = asyncio.create_task(produce(ids))
        second = make_runner(settings, lambda: Shared(ch), CollectorRegistry())
        joined = asyncio.create_task(second.run())
        await wait_for(lambda: second.records_in > 0)  # it has partitions: rebalanced
        third = make_runner(settings, lambda: Shared(ch), CollectorRegistry())
        also = asyncio.create_task(third.run())
        await wait_for(lambda: third.records_in > 0)
        second.stop()  # leaves while the others poll and flush
        await joined
        await asyncio.sleep(1.0)
        enough.set()
        await sending

        def landed_all() -> bool:
            for task in (running, also):
                if task.done():
                    raise AssertionError(f"a sink stopped: {task.exception()!r}")
            return count_distinct(ch, database) == len(ids)

        await wait_for(landed_all, timeout_s=90)
        for runner, task in ((first, running), (third, also)):
            runner.stop()
            await task
        got = {str(r[0]) for r in ch.query(f"SELECT event_id FROM {database}.events").result_rows}
        assert got == set(ids)

    asyncio.run(scenario())


def count_distinct(ch: Any, database: str) -> int:
    return int(ch.query(f"SELECT uniqExact(event_id) FROM {database}.events").result_rows[0][0])
