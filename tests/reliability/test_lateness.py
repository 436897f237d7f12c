"""Disorder within the allowed lateness changes nothing; beyond it, events are
late: stored raw, flagged, counted, and in no KPI window.

1. A stream with 10% duplicate deliveries and 10% out-of-order events (within
   the lateness): every KPI window equals the ground truth, each event once.
2. Then survey responses for the same customers, older than their stream's
   newest event minus the allowed lateness (so behind their partition's
   watermark): each lands in ``events`` with ``late = 1``, the worker's
   ``worker_late_events_total`` counts them, and no KPI window moves.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaProducer

from tests.conftest import SettingsFactory
from tests.reconcile import expect, kpi_rows, mismatches, send, until_reconciled
from tests.reliability.conftest import Simulated
from tests.samples import wire
from touchstream.localbroker import LocalBroker, free_port
from touchstream.producers.simulator import Message, encode
from touchstream.stack import Stack


def late_responses(messages: list[Message], lateness_s: float, count: int) -> list[Message]:
    """Feedback for customers already on the feedback topic, each an hour older
    than what its key (hence its partition) has already seen minus the lateness."""
    newest: dict[bytes, datetime] = {}
    for m in messages:
        if m.family == "feedback" and not m.kind.startswith("malformed"):
            at = datetime.fromisoformat(json.loads(m.value)["occurred_at"].replace("Z", "+00:00"))
            newest[m.key] = max(newest.get(m.key, at), at)
    out = []
    for n, (key, at) in enumerate(sorted(newest.items())[:count]):
        when = at - timedelta(seconds=lateness_s) - timedelta(hours=1)
        kind = ("nps_response", {"score": n % 11}) if n % 2 else ("csat_response", {"score": 1})
        event = wire(
            kind[0],
            customer_id=key.decode(),
            anonymous_id=None,
            occurred_at=when.astimezone(UTC).isoformat(),
            channel="web",
            touchpoint="delivery",
            properties=kind[1],
        )
        out.append(Message("feedback", key, encode({k: v for k, v in event.items() if v}), "late"))
    return out


def worker_late_total(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("touchstream_worker_late_events_total{")
    )


def test_disorder_within_lateness_is_exact_and_late_events_change_no_window(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any, simulate: Simulated
) -> None:
    worker_port = free_port()
    settings = make_settings(
        broker.bootstrap_servers,
        streams={"kpi_emit_interval_s": 0.5},
        metrics={"port": 0, "worker_port": worker_port},
    )
    db = settings.clickhouse.database
    lateness = settings.streams.allowed_lateness_s
    messages, want = simulate(settings, customers=40, duplicates=0.1, out_of_order=0.1, seed=53)
    assert want.truth.duplicates and not want.truth.late
    assert sum(m.kind == "out_of_order" for m in messages) > 0.05 * len(want.event_ids)
    late = late_responses(messages, lateness, count=12)
    assert len(late) == 12
    everything = expect(messages + late, settings.streams)
    # The truth agrees: these are late, and change no window.
    assert everything.late_ids == {json.loads(m.value)["event_id"] for m in late}
    assert everything.kpis == want.kpis

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:
            await asyncio.to_thread(send, producer, stack.settings, messages)
            await until_reconciled(stack, ch, db, want, timeout_s=120)
            assert await asyncio.to_thread(worker_late_total, worker_port) == 0
            before = await asyncio.to_thread(kpi_rows, ch, db)

            await asyncio.to_thread(send, producer, stack.settings, late)
            await until_reconciled(stack, ch, db, everything, timeout_s=60)
            await asyncio.sleep(4 * settings.streams.kpi_emit_interval_s)  # any update is out
            assert await asyncio.to_thread(mismatches, ch, db, everything) == []
            assert await asyncio.to_thread(kpi_rows, ch, db) == before
            assert await asyncio.to_thread(worker_late_total, worker_port) == len(late)
        finally:
            producer.close()
            await stack.stop()

    asyncio.run(scenario())
