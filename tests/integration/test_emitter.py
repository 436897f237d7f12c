"""The producer SDK against the real local broker: what ``Emitter`` promises is read
back from the topics with an independent client (aiokafka), not from a mock.

Keys, topics by family, headers, per-customer partition and order, the producer
settings in force, delivery metrics, typed refusals that send nothing, and bounded
failure when the broker is unreachable or goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from kafka.partitioner.default import murmur2
from prometheus_client import CollectorRegistry

from tests.conftest import SettingsFactory
from tests.samples import PROPERTIES, wire
from tests.topics import assigned
from touchstream.kafka_admin import ensure_topics
from touchstream.localbroker import LocalBroker, free_port
from touchstream.producers.emitter import (
    BrokerUnavailable,
    Emitter,
    EventTooLarge,
    InvalidEvent,
)
from touchstream.schemas import Invalid, parse_event, parse_object
from touchstream.settings import Settings

pytestmark = pytest.mark.integration

# The contract's families, written out here rather than read from the code under test.
CLICKSTREAM = {
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_started",
    "checkout_step",
    "payment_failed",
    "identify",
}
ORDERS = {
    "order_placed",
    "order_cancelled",
    "order_returned",
    "order_delivered",
    "subscription_started",
    "subscription_cancelled",
    "cancellation_retained",
    "plan_upgraded",
}
FEEDBACK = {
    "nps_response",
    "csat_response",
    "ces_response",
    "isn_response",
    "comment",
    "support_contact",
    "case_closed",
}
FAMILY = {t: "clickstream" for t in CLICKSTREAM} | {t: "orders" for t in ORDERS}
FAMILY |= {t: "feedback" for t in FEEDBACK}
FAMILIES = ("clickstream", "orders", "feedback")
SLACK_S = 3.0  # what "no hang" allows beyond a configured deadline


# --- helpers -----------------------------------------------------------------------------


def event(
    event_type: str, customer: str | None, anonymous: str | None, **props: Any
) -> dict[str, Any]:
    """A valid wire event with exactly the identity given (None = field absent)."""
    data = wire(event_type)
    for field, value in (("customer_id", customer), ("anonymous_id", anonymous)):
        if value is None:
            del data[field]
        else:
            data[field] = value
    data["properties"].update(props)
    return data


def topic_of(settings: Settings, event_type: str) -> str:
    return settings.topic(FAMILY[event_type])


def ready(make_settings: SettingsFactory, bootstrap: str, **kafka: Any) -> Settings:
    """Settings for this test, with the contract's topics created (never auto-created)."""
    settings = make_settings(bootstrap, kafka=kafka) if kafka else make_settings(bootstrap)
    asyncio.run(ensure_topics(settings))
    return settings


def consume(settings: Settings, want: int, timeout_s: float = 20.0) -> list[ConsumerRecord]:
    """Every record on the three raw topics, from the beginning, with aiokafka.

    Reads until ``want`` records arrived, then polls once more while nothing comes:
    a record beyond what the test sent would show up there.
    """

    async def read() -> list[ConsumerRecord]:
        partitions = [
            TopicPartition(settings.topic(family), p)
            for family in FAMILIES
            for p in range(settings.kafka.partitions)
        ]
        bootstrap = settings.kafka.bootstrap_servers
        async with assigned(bootstrap, partitions, enable_auto_commit=False) as consumer:
            await consumer.seek_to_beginning(*partitions)
            records: list[ConsumerRecord] = []
            deadline = time.monotonic() + timeout_s
            while len(records) < want and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    records.extend(batch)
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
            return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))

    return asyncio.run(read())


def event_ids(records: Iterable[ConsumerRecord]) -> list[str]:
    return [json.loads(r.value)["event_id"] for r in records]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(f"touchstream_emitter_{name}", labels) or 0.0


def bounded(action: Callable[[], object], bound_s: float) -> tuple[Exception | None, float]:
    """Run ``action`` in a daemon thread: (what it raised, seconds taken), or fail when it
    is still blocked after ``bound_s``. A test of "does not hang" must not hang itself."""
    outcome: list[Exception | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound_s)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"still blocked after {bound_s:.1f}s"
    return outcome[0], elapsed


def threads_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


# --- keys, topics, headers, bytes ---------------------------------------------------------


def test_each_event_goes_to_its_familys_topic_keyed_by_identity_with_headers(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, broker.bootstrap_servers)
    identities = [("cust-1", None), (None, "anon-7"), ("cust-2", "anon-8")]
    sent: list[dict[str, Any]] = []
    for n, event_type in enumerate(sorted(PROPERTIES)):
        customer, anonymous = identities[n % 3] if event_type != "identify" else ("c-9", "a-9")
        sent.append(event(event_type, customer, anonymous))
    assert set(FAMILY) == set(PROPERTIES)  # all 24 types of the contract

    with Emitter(settings, registry=CollectorRegistry()) as emitter:
        serialized = {e["event_id"]: emitter.serialize(e) for e in sent}
        metadata = {e["event_id"]: emitter.emit(e).get(timeout=15) for e in sent}

    records = {json.loads(r.value)["event_id"]: r for r in consume(settings, len(sent))}
    assert sorted(records) == sorted(e["event_id"] for e in sent)
    for data in sent:
        record = records[data["event_id"]]
        topic, key, value, _ = serialized[data["event_id"]]
        assert record.topic == topic == topic_of(settings, data["event_type"])
        assert record.key == key == (data.get("customer_id") or data["anonymous_id"]).encode()
        assert record.value == value  # exactly the bytes serialize() promised
        headers = dict(record.headers)
        assert headers["event_type"] == data["event_type"].encode()
        assert headers["schema_version"] == b"1"
        assert parse_event(record.value) == parse_object(data)
        meta = metadata[data["event_id"]]
        assert (meta.topic, meta.partition, meta.offset) == (
            record.topic,
            record.partition,
            record.offset,
        )


def test_one_customers_events_stay_on_one_partition_in_emit_order(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, broker.bootstrap_servers)
    people = [(f"cust-{n}", None) for n in range(6)] + [(None, f"anon-{n}") for n in range(3)]
    kinds = ["page_view", "product_view", "add_to_cart", "nps_response", "checkout_step"]
    sent = [
        event(kinds[(round_ + n) % len(kinds)], customer, anonymous, seq=round_)
        for round_ in range(20)
        for n, (customer, anonymous) in enumerate(people)  # interleaved across people
    ]
    with Emitter(settings) as emitter:
        for data in sent:
            emitter.emit(data)

    records = consume(settings, len(sent))
    assert Counter(event_ids(records)) == Counter(e["event_id"] for e in sent)
    by_key: dict[tuple[str, bytes], list[ConsumerRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.offset):
        by_key[(record.topic, record.key)].append(record)
    used = set()
    for (topic, key), stream in by_key.items():
        partitions = {r.partition for r in stream}
        assert len(partitions) == 1, (topic, key, partitions)
        # Any Kafka client with the default (murmur2) partitioner puts this key here too.
        partition = partitions.pop()
        assert partition == (murmur2(key) & 0x7FFFFFFF) % settings.kafka.partitions
        seqs = [json.loads(r.value)["properties"]["seq"] for r in stream]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (key, seqs)
        used.add((topic, partition))
    assert len({p for _, p in used}) > 1  # the keys really spread over partitions


def test_the_producer_runs_with_the_configured_acks_idempotence_and_limits(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, broker.bootstrap_servers)
    kafka = settings.kafka
    assert (kafka.acks, kafka.enable_idempotence) == ("all", True)  # the defaults
    with Emitter(settings) as emitter:
        emitter.emit(event("page_view", "cust-1", None)).get(timeout=15)
        config = emitter.producer.config
        assert config["acks"] == -1  # kafka-python's spelling of acks=all
        assert config["enable_idempotence"] is True
        assert config["compression_type"] == kafka.compression_type == "lz4"
        assert config["max_block_ms"] == kafka.max_block_ms
        assert config["max_request_size"] == kafka.max_request_bytes
        assert config["linger_ms"] == kafka.linger_ms
        assert config["batch_size"] == kafka.batch_bytes
        # Idempotence is on for real: the broker granted a producer id (kafka-python keeps
        # it on its transaction manager; there is no public accessor).
        granted = emitter.producer._transaction_manager.producer_id_and_epoch
        assert granted.producer_id >= 0 and granted.epoch >= 0

    relaxed = ready(
        make_settings,
        broker.bootstrap_servers,
        acks="1",
        enable_idempotence=False,
        compression_type="none",
    )
    relaxed_event = event("page_view", "cust-1", None)
    with Emitter(relaxed) as emitter:
        emitter.emit(relaxed_event).get(timeout=15)
        config = emitter.producer.config
        assert config["acks"] == 1 and config["enable_idempotence"] is False
        assert config["compression_type"] is None
        assert emitter.producer._transaction_manager is None
    assert relaxed_event["event_id"] in event_ids(consume(relaxed, 2))  # same topics


def test_delivery_metrics_count_what_the_broker_acknowledged(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, broker.bootstrap_servers)
    sent = [event(t, f"cust-{n % 4}", None) for n, t in enumerate(sorted(FAMILY) * 2)]
    sent = [e for e in sent if e["event_type"] != "identify"]
    registry, other = CollectorRegistry(), CollectorRegistry()
    started = time.monotonic()
    with Emitter(settings, registry=registry) as emitter, Emitter(settings, registry=other):
        for data in sent:
            emitter.emit(data)
        emitter.flush()
        elapsed = time.monotonic() - started

        records = consume(settings, len(sent))
        assert len(records) == len(sent)
        for family in FAMILIES:
            topic = settings.topic(family)
            mine = [r for r in records if r.topic == topic]
            assert mine, family
            assert sample(registry, "events_sent_total", topic=topic) == len(mine)
            assert sample(registry, "bytes_sent_total", topic=topic) == sum(
                len(r.value) for r in mine
            )
            assert sample(registry, "delivery_seconds_count", topic=topic) == len(mine)
            latency = sample(registry, "delivery_seconds_sum", topic=topic)
            assert 0 < latency <= elapsed * len(mine)
            assert sample(registry, "events_failed_total", topic=topic) == 0
            # The registry is the caller's: another emitter's registry saw nothing.
            assert sample(other, "events_sent_total", topic=topic) == 0
    assert emitter.failures == []


# --- typed refusals send nothing ------------------------------------------------------------


def test_an_invalid_event_raises_InvalidEvent_and_nothing_is_sent(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, broker.bootstrap_servers)
    naive = event("page_view", "cust-1", None)
    naive["occurred_at"] = "2026-11-02T09:30:00"
    nameless = event("nps_response", None, None)
    invalid = [
        (event("nps_response", "cust-1", None, score=11), "schema_violation", "properties.score"),
        (
            event("order_placed", "cust-1", None, currency="EURO"),
            "schema_violation",
            "properties.currency",
        ),
        (event("add_to_cart", "cust-1", None, sku=""), "schema_violation", "properties.sku"),
        (naive, "schema_violation", "occurred_at"),
        (nameless, "missing_identity", "customer_id"),
        ({**naive, "event_type": "teleport"}, "unknown_event_type", "event_type"),
        (
            {**naive, "occurred_at": "2026-11-02T09:30:00Z", "properties": []},
            "schema_violation",
            "properties",
        ),
    ]
    registry = CollectorRegistry()
    with Emitter(settings, registry=registry) as emitter:
        for data, reason, field in invalid:
            with pytest.raises(InvalidEvent) as raised:
                emitter.emit(data)
            assert raised.value.invalid.reason == reason
            assert any(i.field == field for i in raised.value.invalid.errors), raised.value
        # serialize() validates and encodes, and sends nothing either.
        unsent = event("csat_response", "cust-1", None)
        topic, key, value, parsed = emitter.serialize(unsent)
        assert (topic, key) == (settings.topic("feedback"), b"cust-1")
        assert parse_event(value) == parsed
        # Then one valid event per family for the same customer: they are all there is.
        sentinels = [event(t, "cust-1", None) for t in ("page_view", "order_placed", "comment")]
        for data in sentinels:
            emitter.emit(data)

    records = consume(settings, len(sentinels))
    assert sorted(event_ids(records)) == sorted(e["event_id"] for e in sentinels)
    reasons = Counter(reason for _, reason, _ in invalid)
    for reason, count in reasons.items():
        assert sample(registry, "events_invalid_total", reason=reason) == count
    for family in FAMILIES:
        assert sample(registry, "events_sent_total", topic=settings.topic(family)) == 1


def test_an_oversized_event_raises_EventTooLarge_and_nothing_is_sent(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, broker.bootstrap_servers, max_request_bytes=4096)
    registry = CollectorRegistry()

    def nps(comment_chars: int) -> dict[str, Any]:
        return event("nps_response", "cust-1", None, comment="x" * comment_chars)

    # The largest comment the emitter accepts, found through serialize() (sends nothing)
    # of a scratch emitter, so that the metrics below count only the emits.
    scratch = Emitter(settings)
    accepted, refused = 0, settings.kafka.max_request_bytes
    while refused - accepted > 1:
        middle = (accepted + refused) // 2
        try:
            scratch.serialize(nps(middle))
            accepted = middle
        except EventTooLarge:
            refused = middle
    at_limit, over = nps(accepted), nps(refused)
    value = scratch.serialize(at_limit)[2]

    with Emitter(settings, registry=registry) as emitter:
        # The limit follows max_request_bytes: not above it, and not far below it.
        assert settings.kafka.max_request_bytes - 1024 < len(value) <= 4096
        with pytest.raises(EventTooLarge, match=str(len(value) + 1)):
            emitter.emit(over)
        typed = parse_object(over)
        assert not isinstance(typed, Invalid)
        with pytest.raises(EventTooLarge):
            emitter.emit(typed)  # a typed event is measured the same way
        # The largest allowed event is delivered: kafka-python's own size check agrees.
        emitter.emit(at_limit).get(timeout=15)

    [record] = consume(settings, 1)
    assert record.value == value
    assert sample(registry, "events_invalid_total", reason="too_large") == 2
    assert sample(registry, "events_sent_total", topic=record.topic) == 1


# --- lifecycle -------------------------------------------------------------------------------


def test_the_context_manager_flushes_on_exit_and_closes(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    # Ten seconds of linger: without the flush on exit nothing would be sent yet.
    settings = ready(make_settings, broker.bootstrap_servers, linger_ms=10_000)
    client_id = f"emitter-{uuid.uuid4().hex[:8]}"
    sent = [event("page_view", "cust-1", None) for _ in range(5)]
    with Emitter(settings, client_id=client_id) as emitter:
        futures = [emitter.emit(data) for data in sent]
        assert not any(f.is_done for f in futures)
    assert all(f.succeeded() for f in futures)
    assert threads_named(client_id) == []  # the network thread is gone: closed
    assert event_ids(consume(settings, len(sent))) == [e["event_id"] for e in sent]

    # An error inside the block propagates unchanged, and the emitter is still closed.
    with pytest.raises(RuntimeError, match="boom"), Emitter(settings, client_id=client_id) as e2:
        e2.emit(event("page_view", "cust-1", None))
        raise RuntimeError("boom")
    assert threads_named(client_id) == []


def test_send_raw_sends_bytes_as_they_are(
    broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, broker.bootstrap_servers)
    raw = b'{"event_type": "nps_response", "oops'  # malformed on purpose (simulator, replay)
    with Emitter(settings) as emitter:
        emitter.send_raw(settings.topic("feedback"), b"k-1", raw, [("origin", b"test")])
    [record] = consume(settings, 1)
    assert (record.topic, record.key, record.value) == (settings.topic("feedback"), b"k-1", raw)
    assert dict(record.headers) == {"origin": b"test"}
    assert isinstance(parse_event(record.value), Invalid)


# --- an unreachable broker: typed errors within a deadline, never a hang --------------------


def test_a_closed_port_raises_BrokerUnavailable_within_max_block_ms(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(f"127.0.0.1:{free_port()}", kafka={"max_block_ms": 1000})
    emitter = Emitter(settings)  # connecting is lazy: nothing happens here
    try:
        error, elapsed = bounded(
            lambda: emitter.emit(event("page_view", "cust-1", None)), 1.0 + SLACK_S
        )
        assert isinstance(error, BrokerUnavailable), error
        assert "127.0.0.1" in str(error)
        error, _ = bounded(emitter.flush, SLACK_S)
        assert error is None
    finally:
        emitter.close(timeout_s=1)


@pytest.fixture
def own_broker(tmp_path: Path) -> Any:
    """A broker of this test's own, which it may stop (the session broker stays up)."""
    with LocalBroker(log_path=tmp_path / "broker.log") as running:
        yield running


DOWN = {"max_block_ms": 1000, "delivery_timeout_ms": 1500}


def test_with_the_broker_gone_emit_is_bounded_and_lost_events_are_counted(
    own_broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, own_broker.bootstrap_servers, **DOWN)
    registry = CollectorRegistry()
    emitter = Emitter(settings, registry=registry)
    try:
        emitter.emit(event("page_view", "cust-1", None)).get(timeout=15)
        own_broker.stop(timeout_s=0.5)  # SIGTERM waits for clients: kill

        # A topic whose metadata the producer has: the event is buffered at once...
        buffered = [emitter.emit(event("page_view", "cust-1", None)) for _ in range(3)]
        # ...and one it has never seen: metadata cannot come, emit gives up at max_block_ms.
        unknown = settings.topic("clickstream") + ".never-created"
        error, elapsed = bounded(lambda: emitter.send_raw(unknown, b"k", b"{}"), 1.0 + SLACK_S)
        assert isinstance(error, BrokerUnavailable), error
        assert elapsed >= 0.9  # it did wait for the broker, up to max_block_ms

        # The buffered events fail at the delivery timeout, and are counted as failed.
        deadline = time.monotonic() + 1.5 + SLACK_S
        topic = settings.topic("clickstream")
        while sample(registry, "events_failed_total", topic=topic) < 3:
            assert time.monotonic() < deadline, "undelivered events were not reported"
            time.sleep(0.05)
        assert all(f.failed() for f in buffered)
        assert len(emitter.failures) == 3
        assert sample(registry, "events_sent_total", topic=topic) == 1
        assert sample(registry, "events_failed_total", topic=unknown) == 1
    finally:
        error, _ = bounded(lambda: emitter.close(timeout_s=2), 2 + SLACK_S)
    assert error is None or isinstance(error, BrokerUnavailable), repr(error)


def test_flush_raises_BrokerUnavailable_when_events_were_not_delivered(
    own_broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, own_broker.bootstrap_servers, **DOWN)
    emitter = Emitter(settings)
    try:
        emitter.emit(event("page_view", "cust-1", None)).get(timeout=15)
        own_broker.stop(timeout_s=0.5)  # SIGTERM waits for clients: kill
        for _ in range(3):
            emitter.emit(event("page_view", "cust-1", None))
        error, _ = bounded(emitter.flush, 1.5 + SLACK_S)
        assert isinstance(error, BrokerUnavailable), f"flush returned {error!r}, 3 events lost"
    finally:
        emitter.close(timeout_s=2)


def test_close_with_undeliverable_events_is_bounded_typed_and_releases_the_producer(
    own_broker: LocalBroker, make_settings: SettingsFactory
) -> None:
    settings = ready(make_settings, own_broker.bootstrap_servers, **DOWN)
    client_id = f"emitter-{uuid.uuid4().hex[:8]}"
    emitter = Emitter(settings, client_id=client_id)
    producer = emitter.producer
    try:
        emitter.emit(event("page_view", "cust-1", None)).get(timeout=15)
        own_broker.stop(timeout_s=0.5)  # SIGTERM waits for clients: kill
        emitter.emit(event("page_view", "cust-1", None))
        error, _ = bounded(lambda: emitter.close(timeout_s=0.5), 0.5 + SLACK_S)
        assert error is None or isinstance(error, BrokerUnavailable), repr(error)
        assert threads_named(client_id) == []
    finally:  # release what a failed close left behind
        if threads_named(client_id):
            with contextlib.suppress(KafkaTimeoutError):
                producer.flush(timeout=1.5 + SLACK_S)
            producer.close(timeout=2)
