"""Benchmark: SELECT latency of a named journey query over the embedded engine's
ClickHouse HTTP interface while simulated traffic is ingested at a steady rate.

A script, not a test: `make bench` runs it; it prints a table and merges its
figures into build/bench.json. Usage:
    python -m tests.perf.bench_http [--rate 10000] [--seconds 30] [--query kpi_by_touchpoint]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from touchstream.producers.emitter import Emitter
from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.schemas import family
from touchstream.settings import Settings, load_settings
from touchstream.sinks import named
from touchstream.stack import RuntimeInfo, Stack, connect_running

RESULTS = Path("build/bench.json")


def wire_events(rate: int, seconds: int) -> list[tuple[str, bytes, bytes]]:
    """(family, key, value) for rate × seconds simulated events, pre-serialised so the
    emitting side costs what a backend service's producer costs."""
    wanted = rate * seconds
    start = datetime.now(UTC) - timedelta(hours=6)
    out: list[tuple[str, bytes, bytes]] = []
    seed = 1
    while len(out) < wanted:
        config = SimulationConfig(customers=2000, seed=seed, start=start, duration_s=6 * 3600)
        for event in Simulator(config).events():
            key = (event.get("customer_id") or event["anonymous_id"]).encode()
            out.append((family(event["event_type"]), key, json.dumps(event).encode()))
            if len(out) == wanted:
                break
        seed += 1
    return out


def produce(
    settings: Settings, events: list[tuple[str, bytes, bytes]], rate: int, sent: list[int]
) -> None:
    """Send at ``rate`` events/s in 10 ms slices."""
    topics = settings.raw_topics()
    per_slice = max(1, rate // 100)
    with Emitter(settings, client_id="bench") as emitter:
        started = time.perf_counter()
        for n in range(0, len(events), per_slice):
            for fam, key, value in events[n : n + per_slice]:
                emitter.send_raw(topics[fam], key, value)
            sent[0] = n + per_slice
            delay = started + (n + per_slice) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        emitter.flush(60)
    sent[0] = len(events)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(rate: int, seconds: int, query_name: str, console: Console) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="touchstream-bench-"))
    settings = load_settings(
        {},
        data_dir=str(data_dir),
        metrics={"port": 0, "worker_port": 0},
        clickhouse={"serve_port": 0},
    )
    console.print(f"preparing {rate * seconds:,} events ...")
    events = wire_events(rate, seconds)
    stack = Stack(settings)
    await stack.start()
    try:
        info = RuntimeInfo.read(stack.settings)
        assert info is not None
        client = await asyncio.to_thread(connect_running, stack.settings, info)
        query = named.get(query_name)
        sent = [0]
        producer = threading.Thread(
            target=produce, args=(stack.settings, events, rate, sent), daemon=True
        )
        latencies: list[float] = []
        started = time.perf_counter()
        producer.start()
        with Progress(console=console) as progress:
            task = progress.add_task(
                f"{rate:,} events/s in, {query_name} over HTTP", total=len(events)
            )
            while producer.is_alive():
                t0 = time.perf_counter()
                await asyncio.to_thread(
                    named.run, client, query, stack.settings.clickhouse.database, {}
                )
                latencies.append(time.perf_counter() - t0)
                progress.update(task, completed=sent[0])
                stack.check()
        elapsed = time.perf_counter() - started
        client.close()
    finally:
        await stack.stop()
    return {
        "http_select_query": query_name,
        "http_select_ingest_eps": round(len(events) / elapsed),
        "http_select_count": len(latencies),
        "http_select_p50_s": round(statistics.median(latencies), 4),
        "http_select_p95_s": round(percentile(latencies, 0.95), 4),
        "http_select_max_s": round(max(latencies), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=10_000, help="events/s produced")
    parser.add_argument("--seconds", type=int, default=30, help="how long to produce")
    parser.add_argument("--query", default="kpi_by_touchpoint", help="named query to time")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file to merge into")
    args = parser.parse_args()
    console = Console()
    figures = asyncio.run(run(args.rate, args.seconds, args.query, console))
    table = Table(title=f"SELECT over HTTP while ingesting ({datetime.now(UTC):%Y-%m-%d}, 2 cores)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, str(value))
    console.print(table)
    results: Path = args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(results.read_text() or "{}") if results.exists() else {}
    merged.update(figures)
    results.write_text(json.dumps(merged, indent=2) + "\n")
    console.print(f"written to {results}")


if __name__ == "__main__":
    main()
