"""The worker's stages in one process, without a broker: N simulated events through
ingest and the outcome, KPI and alert stages, each stage's outputs captured and fed
to the next in batches, the progress and KPI emission timers run every few batches.

Prints, per stage, the CPU time and µs per raw event (and how much of it the cyclic
garbage collector took), and per output topic the records and bytes per raw
event; ``--profile FILE`` writes cProfile stats of the whole run. This is the
worker's own work (validation, state, serialisation) with no Kafka client in it:
``make bench`` measures the worker with the broker, this says which part of the
worker costs what, and is quick enough to A/B a change (``python -m
tests.perf.stages --events 100000``).

``--series N`` also samples the stages' state N times (entities by kind, dedup ids,
KPI buckets, alert slots) against event time: with a longer ``--hours`` and a
short ``--churn-horizon-s``, ``--kpi-retention-s`` and ``--alert-retention-s`` it
shows whether the state stays bounded over several of them, which ``make
bench``'s runs are too short to.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tests.offline import Offline, offline_app, timer
from tests.perf.loadgen import simulated
from touchstream.producers.simulator import encode, key_of
from touchstream.runtime import tune_gc
from touchstream.schemas.events import family
from touchstream.settings import Settings, load_settings
from touchstream.streams.alerts import finished_at


class CollectorTime:
    """Seconds the cyclic garbage collector ran while registered, by generation
    (``gc.callbacks``): part of the stages' CPU, shown apart (runtime.tune_gc)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[int, float] = defaultdict(float)
        self.runs: Counter[int] = Counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started
            self.runs[info["generation"]] += 1

    def __enter__(self) -> CollectorTime:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self)


def state_sizes(stages: dict[str, Offline]) -> dict[str, float]:
    """What the stages hold now: outcome entities by kind (checkout, cart, customer,
    anonymous, mark), the ingest's dedup ids, KPI buckets, alert slots (and how
    many are open alerts, kept until closed), the KPI contributions expired so far,
    and the latest event time seen. (Not RSS: this harness keeps every output it
    captured.)"""
    sizes: Counter[str] = Counter()
    for state in stages["outcomes"].states.values():
        for key in state.store:
            sizes[key.split("|", 1)[0]] += 1
    sizes["dedup ids"] = sum(len(state) for state in stages["ingest"].states.values())
    sizes["kpi buckets"] = sum(len(state.store) for state in stages["kpis"].states.values())
    slots = [slot for state in stages["alerts"].states.values() for _, slot in state.slots()]
    sizes["alert slots"] = len(slots)
    sizes["alerts open"] = sum(1 for slot in slots if finished_at(slot) is None)
    # Not state: KPI contributions dropped as older than the retention, so far.
    sizes["kpi expired"] = sum(s.aggregator.expired for s in stages["kpis"].states.values())
    out: dict[str, float] = dict(sizes)
    out["event time"] = max(s.max_event_time for s in stages["ingest"].states.values())
    return out


async def run(
    settings: Settings,
    events: int,
    seed: int,
    console: Console,
    hours: float = 6,
    samples: int = 0,
) -> dict[str, Any]:
    app, captured, stages = offline_app(settings, on_crash=lambda code: sys.exit(code))
    progress_ticks = [timer(app, "outcome_progress"), timer(app, "decision_progress")]
    emit_timer = timer(app, "emit_kpis")

    async def progress_timer() -> None:
        for tick in progress_ticks:
            await tick()

    topic_of = settings.raw_topics()
    # The raw input in event-time order across topics and partitions, read in that
    # order: the worker's fetches interleave the partitions and hold back one that
    # runs ahead (max_source_skew_s); one topic or partition read to its end first
    # would hold the others' decisions back for hours of event time.
    captured.sent = []
    with console.status(f"simulating {events:,} events"):
        for event in simulated(events, seed, datetime.now(UTC), hours):
            key = key_of(event)
            await captured.send(topic_of[family(event["event_type"])], encode(event), key=key)
    ordered, captured.sent = captured.sent, None
    captured.bytes.clear()
    captured.records.clear()

    internal = {
        "outcomes": settings.topic("outcome_events"),
        "kpis": settings.topic("kpi_contributions"),
        "alerts": settings.topic("alert_events"),
    }
    batch_size = settings.streams.batch_size
    cpu: dict[str, float] = defaultdict(float)

    async def timed(name: str, call: Awaitable[None]) -> None:
        started = time.process_time()
        await call
        cpu[name] += time.process_time() - started

    async def drain_internal() -> None:
        while True:
            moved = False
            for stage, topic in internal.items():
                messages = captured.take(topic, batch_size)
                if messages:
                    moved = True
                    await timed(stage, stages[stage].handle(messages))
            if not moved:
                return

    done = 0
    series: list[dict[str, float]] = []
    every = max(1, events // max(1, samples)) if samples else 0
    wall = time.perf_counter()
    with CollectorTime() as collector, Progress(console=console, transient=True) as bar:
        task = bar.add_task("stages", total=events)
        batches = 0
        for first in range(0, len(ordered), batch_size):
            messages = ordered[first : first + batch_size]
            await timed("ingest", stages["ingest"].handle(messages))
            done += len(messages)
            batches += 1
            await drain_internal()
            if batches % 4 == 0:  # the worker's 1 s timers, every few batches
                await timed("progress", progress_timer())
                await drain_internal()
                await timed("emission", emit_timer())
            bar.update(task, completed=done)
            if every and (not series or done - series[-1]["events"] >= every):
                series.append({"events": done, **state_sizes(stages)})
        for _ in range(3):  # idle reports: the last decisions
            await timed("progress", progress_timer())
            await drain_internal()
        await timed("emission", emit_timer())
    if samples:
        series.append({"events": done, **state_sizes(stages)})
    wall = time.perf_counter() - wall
    return {
        "events": done,
        "wall_s": wall,
        "cpu": dict(cpu),
        "gc_s": dict(collector.seconds),
        "gc_runs": dict(collector.runs),
        "records": dict(captured.records),
        "bytes": dict(captured.bytes),
        "series": series,
    }


def report(result: dict[str, Any], console: Console) -> None:
    n = result["events"]
    total = sum(result["cpu"].values())
    table = Table(title=f"stages, {n:,} events: {n / total:,.0f} events/s of CPU")
    for column in ("stage", "CPU s", "µs/event", "share"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, seconds in sorted(result["cpu"].items(), key=lambda kv: -kv[1]):
        table.add_row(stage, f"{seconds:.2f}", f"{seconds / n * 1e6:.1f}", f"{seconds / total:.0%}")
    console.print(table)
    collected = sum(result["gc_s"].values())
    by_generation = ", ".join(
        f"gen{g} {result['gc_s'][g]:.2f} s in {result['gc_runs'][g]}"
        for g in sorted(result["gc_s"])
    )
    console.print(
        f"of which the cyclic garbage collector: {collected:.2f} s, "
        f"{collected / n * 1e6:.1f} µs/event ({by_generation or 'no collection'})"
    )
    out = Table(title="outputs per raw event")
    for column in ("topic", "records", "bytes"):
        out.add_column(column, justify="left" if column == "topic" else "right")
    for topic, count in sorted(result["records"].items()):
        out.add_row(topic, f"{count / n:.3f}", f"{result['bytes'][topic] / n:,.0f}")
    console.print(out)
    if result["series"]:
        report_series(result["series"], console)


SERIES_COLUMNS = (
    "checkout",
    "cart",
    "customer",
    "anonymous",
    "dedup ids",
    "kpi buckets",
    "kpi expired",
    "alert slots",
    "alerts open",
)


def report_series(series: list[dict[str, float]], console: Console) -> None:
    """State against event time, a row per sample; a bar for the outcome entities."""
    start = series[0]["event time"]
    peak = max(sum(row.get(k, 0) for k in SERIES_COLUMNS[:4]) for row in series) or 1
    table = Table(title="state against event time (entities)")
    for column in ("event time", "events", *SERIES_COLUMNS, "outcome entities"):
        table.add_column(column, justify="left" if column == "outcome entities" else "right")
    for row in series:
        entities = sum(row.get(k, 0) for k in SERIES_COLUMNS[:4])
        table.add_row(
            f"+{(row['event time'] - start) / 3600:.1f} h",
            f"{row['events']:,.0f}",
            *(f"{row.get(k, 0):,.0f}" for k in SERIES_COLUMNS),
            "█" * round(30 * entities / peak),
        )
    Console(width=max(console.width, 140)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="write cProfile stats here")
    parser.add_argument("--hours", type=float, default=6, help="event time simulated")
    parser.add_argument("--series", type=int, default=0, help="state samples (0: none)")
    parser.add_argument("--churn-horizon-s", type=float, help="STREAMS__CHURN_HORIZON_S")
    parser.add_argument("--kpi-retention-s", type=float, help="STREAMS__KPI_RETENTION_S")
    parser.add_argument("--alert-retention-s", type=float, help="STREAMS__ALERT_RETENTION_S")
    args = parser.parse_args()
    settings = load_settings()
    update = {
        name: value
        for name, value in (
            ("churn_horizon_s", args.churn_horizon_s),
            ("kpi_retention_s", args.kpi_retention_s),
            ("alert_retention_s", args.alert_retention_s),
        )
        if value is not None
    }
    # Validated as the worker's settings are (the retention against the lateness).
    streams = type(settings.streams).model_validate(settings.streams.model_dump() | update)
    settings = settings.model_copy(update={"streams": streams})
    # Never connected to: the outputs are captured and the intakes have no consumer.
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})
    settings = settings.model_copy(update={"kafka": kafka})
    console = Console()
    tune_gc()  # as the worker does
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    result = asyncio.run(run(settings, args.events, args.seed, console, args.hours, args.series))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    report(result, console)


if __name__ == "__main__":
    main()
