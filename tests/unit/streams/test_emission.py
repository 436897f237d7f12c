"""The worker's timers across a rebalance, without a broker (tests/offline.py).
An eager rebalance revokes every partition before it assigns them (seconds on
the local broker): what the KPI stage folded goes out to the KPI topic once its
partition is owned, whichever way the rebalance went, and the alert gauges do
not drop to nothing in between."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.offline import Captured, Offline, offline_app, timer
from tests.samples import wire
from touchstream.settings import Settings, load_settings
from touchstream.streams.ingest import RawMessage
from touchstream.streams.outputs import partition_of

GROUP = "nps|web|checkout"  # its own contribution key (not a rate over a stock)
AT = 1_793_782_800.0  # 2026-11-04 09:00 UTC


@dataclass
class Worker:
    settings: Settings
    captured: Captured
    registry: CollectorRegistry
    stages: dict[str, Offline]  # each stage's intake by purpose
    emit: Callable[[], Awaitable[None]]  # one pass of the emission timer
    check_alerts: Callable[[], Awaitable[None]]  # one pass of the alert SLA timer

    @property
    def kpis(self) -> Offline:
        return self.stages["kpis"]

    @property
    def partition(self) -> int:
        """The contributions partition that holds GROUP."""
        return partition_of(GROUP.encode(), self.settings.kafka.partitions)

    async def fold_one(self) -> None:
        """One promoter's score in GROUP, folded by the KPI stage."""
        topic = self.settings.topic("kpi_contributions")
        bundle = {
            "contributions": [
                {
                    "group": GROUP,
                    "at": AT,
                    "counts": {"promoters": 1.0, "responses": 1.0},
                    "src": "raw:0",
                    "off": 0,
                }
            ]
        }
        message = RawMessage(topic, self.partition, 0, GROUP.encode(), orjson.dumps(bundle))
        await self.kpis.handle([message])

    def emitted(self) -> list[dict[str, Any]]:
        topic = self.settings.topic("kpis")
        return [
            json.loads(message.value or b"")
            for (name, _), log in sorted(self.captured.logs.items())
            if name == topic
            for message in log
        ]


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Worker:
    """The worker app with its outputs captured and every partition owned."""
    settings = load_settings(
        {
            "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "TOUCHSTREAM_DATA_DIR": str(tmp_path),
            "TOUCHSTREAM_METRICS__ENABLED": "false",
        }
    )

    def crashed(code: int) -> None:
        pytest.fail(f"the worker crashed ({code})")

    def patch(target: Any, name: str, value: Any) -> None:
        monkeypatch.setattr(target, name, value, raising=False)

    registry = CollectorRegistry()
    app, captured, stages = offline_app(settings, crashed, registry, patch)
    return Worker(
        settings,
        captured,
        registry,
        stages,
        timer(app, "emit_kpis"),
        timer(app, "alert_sla"),
    )


def test_folded_windows_go_out_when_no_rebalance_holds_them(worker: Worker) -> None:
    async def scenario() -> None:
        await worker.fold_one()
        await worker.emit()

    asyncio.run(scenario())
    updates = worker.emitted()
    # Every window holding the score, once: 12 hopping hours and the day.
    assert sorted(u["window_size_s"] for u in updates) == [3600] * 12 + [86_400]
    assert {(u["kpi"], u["value"], u["denominator"]) for u in updates} == {("nps", 100.0, 1.0)}


def test_folded_windows_go_out_after_a_rebalance_that_gives_the_partition_back(
    worker: Worker,
) -> None:
    # An eager rebalance revokes every partition, then assigns (here the same ones
    # again). A pass in between owns nothing; the windows it could not emit go out
    # once the partition is back (it stays: it is not restored, which would have
    # emitted every window it holds). They were forgotten, and a window no later
    # contribution touched kept a stale value in ClickHouse, or none.
    async def scenario() -> None:
        await worker.fold_one()
        partitions = sorted(worker.kpis.owned, key=lambda tp: tp.partition)
        await worker.kpis.on_partitions_revoked(partitions)
        await worker.emit()
        assert worker.emitted() == []
        await worker.kpis.on_partitions_assigned(partitions)
        await worker.emit()

    asyncio.run(scenario())
    updates = worker.emitted()
    assert len(updates) == 13
    assert {(u["kpi"], u["value"], u["denominator"]) for u in updates} == {("nps", 100.0, 1.0)}


def test_a_partition_gone_to_another_worker_is_not_emitted_here(worker: Worker) -> None:
    # Its new owner restores it and emits every window it holds: this worker's
    # copy is stale from the moment it was revoked.
    async def scenario() -> None:
        await worker.fold_one()
        partitions = sorted(worker.kpis.owned, key=lambda tp: tp.partition)
        await worker.kpis.on_partitions_revoked(partitions)
        await worker.emit()
        await worker.kpis.on_partitions_assigned(
            [tp for tp in partitions if tp.partition != worker.partition]
        )
        await worker.emit()
        await worker.emit()

    asyncio.run(scenario())
    assert worker.emitted() == []


def test_the_alert_gauges_hold_through_a_rebalance(worker: Worker) -> None:
    # Every worker's gauges at 0 for a scrape mid-rebalance would reset the
    # past-SLA alert's `for` (deploy/prometheus/rules): the last figures stand.
    settings = worker.settings
    detractor = wire("nps_response", properties={"score": 2, "order_id": "o-1"})
    raw = RawMessage(settings.topic("feedback"), 0, 0, b"c-1", orjson.dumps(detractor))

    def alerts_open() -> float | None:
        return worker.registry.get_sample_value("touchstream_alerts_open")

    async def scenario() -> None:
        await worker.stages["ingest"].handle([raw])
        alert_events = worker.captured.take(settings.topic("alert_events"), 100)
        await worker.stages["alerts"].handle(alert_events)
        await worker.check_alerts()
        assert alerts_open() == 1
        alerts = worker.stages["alerts"]
        partitions = sorted(alerts.owned, key=lambda tp: tp.partition)
        await alerts.on_partitions_revoked(partitions)
        await worker.check_alerts()
        assert alerts_open() == 1
        await alerts.on_partitions_assigned(partitions)
        await worker.check_alerts()
        assert alerts_open() == 1

    asyncio.run(scenario())
