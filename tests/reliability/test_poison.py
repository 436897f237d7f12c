"""Poison messages of every kind, in the middle of a live stream: each one is a
dead letter with the reason it deserves (matched by its topic, partition and
offset), the same worker process keeps running, and the valid stream around
them reconciles exactly (events by event_id, KPIs = the simulator's truth).

Event time (schemas/parse.py ``check_event_time``): an ``occurred_at`` more than
``MAX_FUTURE_S`` (5 min) ahead of the pipeline's clock, or before
``EARLIEST_EVENT_TIME`` (2000-01-01), is a dead letter ``timestamp_out_of_range``.
A future one would drag its partition's watermark ahead and make the next
genuine events late; an ancient one has no KPI window ClickHouse can store
(``DateTime`` starts in 1970), and its insert would fail the sink's batch for
ever. An old but plausible one (days, years) is a valid event: late when its
partition's watermark is past it (tests/reliability/test_lateness.py).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import send, until_reconciled
from tests.reliability.conftest import Simulated
from tests.samples import wire
from touchstream.localbroker import LocalBroker
from touchstream.stack import Stack


def poison(max_event_bytes: int) -> list[tuple[str, str, bytes | None]]:
    """(expected dead-letter reason, raw topic family, bytes) of each kind."""

    def event(**changes: Any) -> dict[str, Any]:
        base = wire("nps_response", customer_id="poison-1", properties={"score": 3})
        return {**base, **changes}

    def raw(data: Any) -> bytes:
        return json.dumps(data).encode()

    now = datetime.now(UTC)
    valid = raw(event())
    deep = b'{"event_type":"nps_response","properties":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        ("not_json", "feedback", valid[: len(valid) // 2]),  # truncated
        ("not_json", "feedback", valid.replace(b'"poison-1"', b'"poison-\xff\xfe"')),  # bad UTF-8
        ("not_json", "feedback", b""),  # empty
        ("not_json", "feedback", None),  # no value at all (a tombstone)
        ("not_json", "feedback", deep),  # nesting deeper than any parser's limit
        ("not_json", "clickstream", b"\x00\x01\x02\x03 binary"),
        ("not_object", "feedback", b'"nps_response"'),
        ("not_object", "feedback", b"42"),
        ("not_object", "feedback", b"null"),
        ("not_object", "clickstream", raw([event()])),
        ("schema_violation", "feedback", raw(event(properties={"score": "nine"}))),
        ("schema_violation", "feedback", raw(event(properties={"score": True}))),
        ("schema_violation", "feedback", raw(event(event_id=12345))),
        ("schema_violation", "feedback", raw(event(occurred_at="yesterday"))),
        ("schema_violation", "feedback", raw(event(occurred_at="2026-11-02T09:00:00"))),  # naive
        ("schema_violation", "feedback", raw(event(channel={"web": 1}))),
        ("unknown_event_type", "feedback", raw(event(event_type=["nps_response"]))),
        ("missing_identity", "feedback", raw(event(customer_id="", anonymous_id=None))),
        (
            "too_large",
            "feedback",
            raw(event(properties={"score": 3, "comment": "x" * (max_event_bytes + 1)})),
        ),
        (
            "timestamp_out_of_range",
            "feedback",
            raw(event(occurred_at=(now + timedelta(days=1)).isoformat())),
        ),
        ("timestamp_out_of_range", "feedback", raw(event(occurred_at="9999-12-31T23:59:59Z"))),
        ("timestamp_out_of_range", "feedback", raw(event(occurred_at="1969-07-20T20:17:40Z"))),
        ("timestamp_out_of_range", "feedback", raw(event(occurred_at="0001-01-01T00:00:00Z"))),
    ]


def test_poison_messages_are_dead_letters_and_the_worker_keeps_running(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any, simulate: Simulated
) -> None:
    settings = make_settings(broker.bootstrap_servers, streams={"kpi_emit_interval_s": 0.5})
    db = settings.clickhouse.database
    messages, want = simulate(settings, customers=25, duplicates=0.05, seed=31)
    bad = poison(settings.streams.max_event_bytes)
    for reason, _, _ in bad:
        want.dead_letters[reason] += 1

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        assert stack.worker is not None
        worker_pid = stack.worker.pid
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:
            half = len(messages) // 2
            await asyncio.to_thread(send, producer, stack.settings, messages[:half])
            futures = [
                producer.send(settings.topic(family), key=b"poison", value=value)
                for _, family, value in bad
            ]
            placed = [await asyncio.to_thread(f.get, 30) for f in futures]
            await asyncio.to_thread(send, producer, stack.settings, messages[half:])
            await until_reconciled(stack, ch, db, want, timeout_s=120)
        finally:
            producer.close()
            await stack.stop()
        # The same worker process handled everything: no crash, no restart.
        assert stack.worker.pid == worker_pid
        rows = ch.query(
            f"SELECT source_topic, source_partition, source_offset, reason "
            f"FROM {db}.dead_letters FINAL WHERE source_topic IN {{topics:Array(String)}}",
            parameters={"topics": [settings.topic("feedback"), settings.topic("clickstream")]},
        ).result_rows
        reasons = {(t, int(p), int(o)): r for t, p, o, r in rows}
        got = [reasons.get((m.topic, m.partition, m.offset)) for m in placed]
        assert got == [reason for reason, _, _ in bad]

    asyncio.run(scenario())
