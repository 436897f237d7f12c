"""`touchstream worker` as several processes (STREAMS__PROCESSES): one consumer group
across them, their metrics on the worker's one /metrics port; SIGKILLed as a whole
mid-stream and started again, the KPIs in ClickHouse still equal the simulator's
ground truth."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SettingsFactory
from tests.reconcile import expect, landed, send, settled, until_reconciled
from touchstream.localbroker import LocalBroker, free_port
from touchstream.producers.simulator import Simulator
from touchstream.stack import Stack


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def assigned(port: int, namespace: str) -> dict[str, set[str]]:
    """Per process label: the raw clickstream partitions it reports a consumer lag for,
    and whether it is up, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 - our loopback
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    out: dict[str, set[str]] = {}
    for sample in families[f"{namespace}_worker_process_up"].samples:
        assert sample.value == 1, sample
        out[sample.labels["process"]] = set()
    lag = families.get(f"{namespace}_worker_consumer_lag")
    for sample in lag.samples if lag else []:
        if sample.labels["topic"].endswith("storefront.clickstream.v1"):
            out[sample.labels["process"]].add(sample.labels["partition"])
    return out


def test_two_worker_processes_share_the_partitions_killed_together_kpis_exact(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    port = free_port()
    settings = make_settings(
        broker.bootstrap_servers,
        kafka={"partitions": 4},
        streams={"kpi_emit_interval_s": 0.5, "processes": 2},
        metrics={"worker_port": port},
    )
    db = settings.clickhouse.database
    streams = settings.streams
    config = settled(
        settings,
        customers=80,
        duration_s=2 * 3600,
        start=datetime(2026, 11, 4, 9, tzinfo=UTC),
        seed=31,
        duplicates=0.1,
        out_of_order=0.05,
        late=0.03,
        malformed=0.01,
    )
    messages = Simulator(config).messages()
    want = expect(messages, streams)
    namespace = settings.metrics.namespace

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        try:
            assert stack.worker is not None
            first = stack.worker.pid
            half = len(messages) // 2
            await asyncio.to_thread(send, producer, stack.settings, messages[:half])
            deadline = time.monotonic() + 120
            while landed(ch, db)[0] < want.truth.events // 4:
                stack.check()
                assert time.monotonic() < deadline, "the workers never got going"
                await asyncio.sleep(0.2)
            pids = children(first)
            assert len(pids) == 2, pids
            # Both processes in the group, their metrics on the worker's one port,
            # labelled by process: the raw partitions are split between them, none
            # read twice (lags are reported every 2 s).
            raw: dict[str, set[str]] = {}
            while len(raw) < 2 or not all(raw.values()):
                assert time.monotonic() < deadline, f"no lag from both processes: {raw}"
                await asyncio.sleep(0.5)
                raw = assigned(port, namespace)
            assert set(raw) == {"0", "1"}
            assert not raw["0"] & raw["1"], raw
            assert len(raw["0"] | raw["1"]) == settings.kafka.partitions
            stack.kill_worker(restart=True)  # SIGKILL: the supervisor and both processes
            for pid in pids:
                assert not Path(f"/proc/{pid}").exists() or _zombie(pid), pid
            await asyncio.to_thread(send, producer, stack.settings, messages[half:])
            await until_reconciled(stack, ch, db, want, timeout_s=240)
            assert len(children(stack.worker.pid)) == 2
        finally:
            producer.close()
            await stack.stop()

    asyncio.run(scenario())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
