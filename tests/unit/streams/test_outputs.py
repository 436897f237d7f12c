"""The worker's outputs without a broker: where keyed outputs land, that a lost
delivery fails the flush, and the lz4 level of record batches."""

from __future__ import annotations

import asyncio
import functools
import random

import aiokafka.record._crecords.default_records as _c_records
import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from touchstream.settings import load_settings
from touchstream.streams.app import BUNDLE_ITEMS, bundle_chunks, contribution_key
from touchstream.streams.outputs import (
    LZ4_LEVEL,
    DeliveryFailed,
    Outputs,
    fast_lz4,
    murmur2,
    partition_of,
)


def test_partition_of_matches_the_java_client_partitioner() -> None:
    # kafka-python (the emitters' client) implements the same murmur2 as Java's:
    # the worker's idea of a key's partition is the one every client uses.
    for key in [b"nps|web|checkout", b"stock|active_delta", b"", b"\xff" * 40]:
        expected = (kafka_python_murmur2(key) & 0x7FFFFFFF) % 12
        assert partition_of(key, 12) == expected
    assert {partition_of(f"k{i}".encode(), 6) for i in range(200)} == set(range(6))


def test_murmur2_is_the_clients_murmur2_for_every_length() -> None:
    rng = random.Random(7)  # noqa: S311 - test keys, not secrets
    keys = [rng.randbytes(length) for length in range(70) for _ in range(20)]
    keys += [b"\xff" * 9, b"\x80\x00\x00\x01", "kassé|ü".encode()]
    for key in keys:
        assert murmur2(key) == kafka_python_murmur2(key) & 0xFFFFFFFF, key


def test_stock_kpis_are_keyed_by_their_stock() -> None:
    # A churn window's numerator and the stock deltas of its denominator are
    # counted in one partition; per-event KPIs are keyed by their own group.
    assert contribution_key("churn|web|checkout") == "stock|active_delta"
    assert contribution_key("churn_detractor|all|all") == "stock|active_delta"
    assert contribution_key("churn|all|all") == "stock|active_delta"
    assert contribution_key("upsell|app|plans") == "stock|subscriptions"
    assert contribution_key("nps|web|checkout") == "nps|web|checkout"
    assert contribution_key("isn:delivery|all|all") == "isn:delivery|all|all"


def test_outcome_bundles_are_chunked_in_order_and_nothing_is_lost() -> None:
    ops = [{"n": i} for i in range(2 * BUNDLE_ITEMS + 3)]
    customers = {f"c{i}": [[i, "touch"]] * 3 for i in range(BUNDLE_ITEMS + 1)}
    links = {f"a{i}": [i, f"c{i}"] for i in range(3)}
    anonymous = {f"a{i}": [[i, "touch"]] for i in range(BUNDLE_ITEMS)}
    body = {"ops": ops, "customers": customers, "links": links, "anonymous": anonymous}
    chunks = list(bundle_chunks(body))
    # steps, then customers, then links, then anonymous ids: one part per message
    assert [next(iter(c)) for c in chunks] == ["ops"] * 3 + ["customers"] * 2 + [
        "links",
        "anonymous",
    ]
    assert all(len(c) == 1 and len(next(iter(c.values()))) <= BUNDLE_ITEMS for c in chunks)
    assert [op for c in chunks for op in c.get("ops", [])] == ops
    for part, want in (("customers", customers), ("links", links), ("anonymous", anonymous)):
        merged = {k: v for c in chunks for k, v in c.get(part, {}).items()}
        assert merged == want and list(merged) == list(want)
    assert list(bundle_chunks({"ops": [], "customers": {}})) == []


class _Producer:
    """Stands in for AIOKafkaProducer: futures resolved (or failed) at flush."""

    def __init__(self) -> None:
        self.queued: list[asyncio.Future[object]] = []
        self.fail_next: BaseException | None = None

    async def send(self, topic: str, value: bytes | None, **_: object) -> asyncio.Future[object]:
        delivered: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.queued.append(delivered)
        return delivered

    async def flush(self) -> None:
        for delivered in self.queued:
            if self.fail_next is not None:
                delivered.set_exception(self.fail_next)
                self.fail_next = None
            else:
                delivered.set_result(None)
        self.queued = []


def _outputs(producer: _Producer) -> Outputs:
    outputs = Outputs(load_settings({}, kafka={"bootstrap_servers": "127.0.0.1:9"}))
    outputs._producer = producer  # noqa: SLF001
    return outputs


def test_a_failed_delivery_fails_every_flush_from_then_on() -> None:
    # aiokafka's flush only waits: a batch lost past the request timeout would be
    # checkpointed as done. Ours raises, and keeps raising for every stage.
    async def scenario() -> None:
        producer = _Producer()
        outputs = _outputs(producer)
        await outputs.send("t.events", b"a")
        await outputs.flush()  # delivered: fine
        producer.fail_next = KafkaTimeoutError("request timed out")
        await outputs.send("t.events", b"b")
        await outputs.send("t.kpis", b"c")
        with pytest.raises(DeliveryFailed, match=r"t\.events.*KafkaTimeoutError"):
            await outputs.flush()
        await outputs.send("t.kpis", b"d")
        with pytest.raises(DeliveryFailed):  # sticky: no later checkpoint goes out
            await outputs.flush()

    asyncio.run(scenario())


def test_records_still_in_flight_are_checked_by_a_later_flush() -> None:
    # Stages share the producer: a record another stage sent during this flush is
    # not done yet, which is not a failure; it is checked when it is.
    async def scenario() -> None:
        producer = _Producer()
        outputs = _outputs(producer)
        late: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        outputs._pending.append(("t.events", late))  # noqa: SLF001
        await outputs.flush()
        late.set_exception(KafkaTimeoutError("lost"))
        with pytest.raises(DeliveryFailed, match="1 batch"):
            await outputs.flush()

    asyncio.run(scenario())


def test_record_batches_compress_with_fast_lz4_and_read_back() -> None:
    fast_lz4()
    encode = _c_records.lz4_encode
    assert isinstance(encode, functools.partial) and encode.keywords == {"level": LZ4_LEVEL}
    builder = BatchBuilder(1 << 20, DefaultRecordBatch.CODEC_LZ4)
    values = [f'{{"event_id":"{n:08d}","touchpoint":"checkout"}}'.encode() for n in range(500)]
    for n, value in enumerate(values):
        assert builder.append(timestamp=None, key=f"k{n}".encode(), value=value) is not None
    batch = DefaultRecordBatch(bytearray(builder._build()))  # noqa: SLF001
    assert batch.compression_type == DefaultRecordBatch.CODEC_LZ4
    assert [record.value for record in batch] == values
