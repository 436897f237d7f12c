"""A real Prometheus (Debian's `prometheus`) scraping a running stack: the worker
process and the sink of `touchstream up` (Stack). Through Prometheus' HTTP API:
both targets are up, the series exist, every alert rule of
deploy/prometheus/rules evaluates without error on real data, and when
ClickHouse loses the `events` table for real (DETACH TABLE) the sink's
backpressure and insert-failure alerts go pending, then firing, and resolve once
the table is back, with every event landed.

The rules are the real ones with time compressed 60x (a minute becomes a second:
`for`, range selectors and offsets), scraped and evaluated every second.
Skips without the binary; under CI=true a skip fails the run (conftest)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SettingsFactory
from touchstream.localbroker import LocalBroker
from touchstream.producers.emitter import Emitter
from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "touchstream.rules.yml"
COMPRESSION = 60
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "y": 31_536_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def compressed(duration: str) -> str:
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(duration))
    return f"{max(1, round(seconds * 1000 / COMPRESSION))}ms"


def compressed_rules() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(
                r"\[(\w+)\]", lambda m: f"[{compressed(m.group(1))}]", rule["expr"]
            )
            rule["expr"] = re.sub(
                r"offset\s+(\w+)", lambda m: f"offset {compressed(m.group(1))}", rule["expr"]
            )
            if "for" in rule:
                rule["for"] = compressed(rule["for"])
    return document


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector"
        return list(data["result"])

    def alert_states(self, name: str) -> set[str]:
        return {
            a["state"]
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name
        }


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "prometheus not found: `apt-get install -y prometheus` (Debian), or `make test`"
        )
    return found


def start_prometheus(binary: str, directory: Path, targets: dict[str, int]) -> Prometheus:
    (directory / "rules.yml").write_text(yaml.safe_dump(compressed_rules(), sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "rules.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - the Debian binary, our arguments
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    prometheus = Prometheus(process, port, log)
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:  # noqa: S310
                if r.status == 200:
                    return prometheus
        except OSError:
            pass
        assert time.monotonic() < deadline, "prometheus not ready in 30 s"
        time.sleep(0.2)


@pytest.fixture
def running_prometheus(
    prometheus_binary: str, tmp_path: Path
) -> Iterator[Callable[[dict[str, int]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, int]) -> Prometheus:
        prometheus = start_prometheus(prometheus_binary, tmp_path, targets)
        started.append(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        prometheus.process.terminate()
        try:
            prometheus.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prometheus.process.kill()
            prometheus.process.wait(timeout=5)
        assert prometheus.process.returncode == 0, prometheus.log.read_text()[-2000:]


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str | Callable[[], str], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what if isinstance(what, str) else what()}"
        )
        await asyncio.sleep(0.5)


def test_prometheus_scrapes_the_stack_and_a_real_sink_failure_fires_alerts(
    broker: LocalBroker,
    make_settings: SettingsFactory,
    ch: Any,
    running_prometheus: Callable[[dict[str, int]], Prometheus],
) -> None:
    worker_port = free_port()
    settings = make_settings(
        broker.bootstrap_servers,
        metrics={"port": 0, "worker_port": worker_port},
        clickhouse={"serve_port": 0},
        sink={"retry_initial_s": 0.2, "retry_max_s": 0.5},
    )
    db = settings.clickhouse.database
    start = datetime.now(UTC) - timedelta(minutes=20)
    # Twenty minutes ending now: events in the future are dead letters (README).
    config = SimulationConfig(customers=40, seed=5, start=start, duration_s=20 * 60)
    events = list(Simulator(config).events())
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    assert any(e["event_type"] == "csat_response" for e in first)  # its KPI gauge is checked
    alert_names = [r["alert"] for g in compressed_rules()["groups"] for r in g["rules"]]

    def landed() -> set[str]:
        rows = ch.query(f"SELECT DISTINCT toString(event_id) FROM {db}.events").result_rows
        return {r[0] for r in rows}

    async def scenario() -> None:
        stack = Stack(settings)
        try:
            await stack.start()
            prometheus = await asyncio.to_thread(
                running_prometheus,
                {"touchstream-sink": stack.metrics_port, "touchstream-worker": worker_port},
            )

            async def api(function: Callable[..., Any], *args: Any) -> Any:
                stack.check()
                return await asyncio.to_thread(function, *args)

            with Emitter(stack.settings) as emitter:
                for event in first:
                    emitter.emit(event)
            want = {e["event_id"] for e in first}

            async def first_half_landed() -> bool:
                return want <= await api(landed)

            await eventually(first_half_landed, "the first events in ClickHouse", 90)

            # Both targets up; the series of both processes exist in Prometheus.
            async def series_scraped() -> bool:
                targets = (await api(prometheus.get, "/api/v1/targets"))["activeTargets"]
                if {t["labels"]["job"]: t["health"] for t in targets} != {
                    "touchstream-sink": "up",
                    "touchstream-worker": "up",
                }:
                    return False
                written = await api(
                    prometheus.query, 'touchstream_sink_rows_written_total{table="events"}'
                )
                return bool(written) and float(written[0]["value"][1]) >= len(first)

            await eventually(series_scraped, "targets up and rows written scraped", 30)
            series = (
                'sum(touchstream_worker_messages_total{job="touchstream-worker"}) > 0',
                "touchstream_worker_consumer_lag",
                "touchstream_sink_consumer_lag",
                "touchstream_worker_event_freshness_seconds_count > 0",
                "touchstream_worker_processing_latency_seconds_count > 0",
                "touchstream_worker_up == 1",
                'touchstream_worker_state_keys{stage="kpis"} > 0',
                "touchstream_worker_state_file_bytes > 0",  # the outcome partitions' files
                "touchstream_sink_backpressured == 0",
                'touchstream_kpi_denominator{kpi="csat"} > 0',  # the first half has CSAT
            )
            missing: list[str] = []

            async def all_series_scraped() -> bool:
                # Lag and KPI gauges are set by timers (every 2 s, every 1 s).
                missing[:] = [q for q in series if not await api(prometheus.query, q)]
                return not missing

            await eventually(all_series_scraped, lambda: f"series {missing}", 30)

            # Every rule of the real file is loaded and evaluates without error.
            groups = (await api(prometheus.get, "/api/v1/rules"))["groups"]
            rules = {r["name"]: r for g in groups for r in g["rules"]}
            assert sorted(rules) == sorted(alert_names)
            assert {name: r["health"] for name, r in rules.items()} == dict.fromkeys(
                alert_names, "ok"
            ), {name: r.get("lastError") for name, r in rules.items()}
            for name in ("TouchstreamSinkBackpressured", "TouchstreamSinkDown"):
                assert await api(prometheus.alert_states, name) == set()

            # ClickHouse loses the events table: inserts fail for real, the sink pauses.
            await api(ch.command, f"DETACH TABLE {db}.events")
            with Emitter(stack.settings) as emitter:
                for event in second:
                    emitter.emit(event)
            seen: set[str] = set()

            async def backpressure_firing() -> bool:
                states = await api(prometheus.alert_states, "TouchstreamSinkBackpressured")
                seen.update(states)
                return "firing" in states

            await eventually(backpressure_firing, "TouchstreamSinkBackpressured firing", 60)
            assert "pending" in seen  # it went through `for` first

            async def failing_firing() -> bool:
                states = await api(prometheus.alert_states, "TouchstreamSinkInsertsFailing")
                return "firing" in states

            await eventually(failing_firing, "TouchstreamSinkInsertsFailing firing", 30)
            lag = await api(
                prometheus.query,
                f'sum(touchstream_sink_consumer_lag{{topic="{settings.topic("events")}"}})',
            )
            assert lag and float(lag[0]["value"][1]) > 0

            # The table is back: the retried batch lands, the alert resolves.
            await api(ch.command, f"ATTACH TABLE {db}.events")
            everything = {e["event_id"] for e in events}

            async def all_landed() -> bool:
                return await api(landed) == everything

            await eventually(all_landed, "every event in ClickHouse", 60)

            async def resolved() -> bool:
                return not await api(prometheus.alert_states, "TouchstreamSinkBackpressured")

            await eventually(resolved, "TouchstreamSinkBackpressured resolved", 30)
        finally:
            await stack.stop()

    asyncio.run(scenario())
