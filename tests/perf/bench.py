"""End-to-end benchmark of the pipeline on this machine, in one run (`make bench`,
`make bench-quick`). A script that prints figures, not a timed test.

Phases, each against the same freshly started local broker and a temporary data dir:

1. preload: N simulated events (6 h of storefront traffic ending now) into the raw
   topics, by a child process (tests/perf/loadgen.py), timed;
2. ceiling: plain aiokafka consume + json.loads of the N raw messages (child);
   floor: the contract's path alone (tests/perf/floor.py: validate, forward to the
   events topic, the real sink into ClickHouse) on the same topics, timed from
   start until every event is in its own `events` table;
3. baseline: a naive Faust agent, one event at a time, one synchronous INSERT per
   row into its own embedded ClickHouse (tests/perf/naive_worker.py), on the same
   topics, for at most --naive-seconds (its rate is its steady rate, first row to
   latest row, a figure in its favour);
4. drain: the pipeline (core/stack.py: stream worker subprocess, sink in this
   process, embedded ClickHouse) started on the preloaded topics, timed from start
   until every event is in `events` and the KPI windows count every NPS/CSAT/CES
   response overall and per (channel, touchpoint), with checkout abandonment
   settled; py-spy samples the worker when events start to land, from half of them
   on, and in the KPI tail (build/worker-profile{,-late,-tail}.txt);
5. freshness: --rate events/s for --fresh-seconds, each stamped occurred_at = now
   when sent; "queryable" is when a poll of ClickHouse (every 0.1 s) first returns
   a probe event (every 50th has an identity of its own); alerts are timed from the
   detractor response's occurred_at to the alert read from cx.alerts.v1;
6. memory: --distinct events with one distinct customer each, sent while the
   pipeline runs; worker and sink RSS against the customers landed;
7. the HTTP SELECT benchmark (tests/perf/bench_http.py), as before.

Figures go to build/bench.json (drain_eps, naive_eps, raw_eps, freshness_p95_s,
alert_p95_s, worker_peak_rss_mb, ...; machine and date) and a table.

    python -m tests.perf.bench --events 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tests.perf.chart import svg as cpu_chart
from touchstream.kafka_admin import ensure_topics
from touchstream.localbroker import LocalBroker, die_with_parent, free_port
from touchstream.runtime import tune_gc
from touchstream.settings import Settings, load_settings
from touchstream.sinks.client import connect
from touchstream.stack import Stack
from touchstream.streams.processes import available_cpus, worker_processes

RESULTS = Path("build/bench.json")
# py-spy's raw (collapsed) stacks of the worker: when events start to land, from half
# the events (or half the budget) on, and after the last one landed while the KPI
# windows catch up.
PROFILES = {
    "ingest": Path("build/worker-profile.txt"),
    "late": Path("build/worker-profile-late.txt"),
    "tail": Path("build/worker-profile-tail.txt"),
}
SCORE_KPIS = ("nps", "csat", "ces")
# Internal topics the worker must have read to the end before the KPIs can be final
# (checkout abandonment settled "for 3 s" alone once passed while the outcome agent
# still had hundreds of bundles to read).
DRAINED_TOPICS = ("kpi_contributions", "outcome_events")
# The worker's lags once every event landed: at most this often. Every read is a
# scrape of the worker's /metrics (the supervisor fetches and merges each process's);
# read every 0.25 s they took ~0.3 of the 2 cores from the KPI tail they wait for.
LAG_READ_S = 1.0
# The floor's own topics for what the sink reads (the raw ones are the drain's).
FLOOR_OUTPUTS = ("events", "kpis", "dead_letters", "alerts")
TARGETS = {  # issue 9; never lowered here
    "drain_eps": 100_000,
    "drain_vs_naive": 5.0,
    "drain_vs_raw": 1 / 3,
    "freshness_p95_s": 1.0,
    "alert_p95_s": 1.0,
}


# -- processes -------------------------------------------------------------------------


def _status(pid: int, field_name: str) -> float | None:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mb(pid: int) -> float | None:
    return _status(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float | None:
    return _status(pid, "VmHWM")


def family(pid: int) -> list[int]:
    """pid and its descendants: a worker of several processes is its supervisor and
    their workers (STREAMS__PROCESSES)."""
    out = [pid]
    for parent in out:
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text()
            out.extend(int(child) for child in children.split())
    return out


def _summed(measure: Callable[[int], float | None], pid: int) -> float | None:
    values = [v for p in family(pid) if (v := measure(p)) is not None]
    return sum(values) if values else None


def worker_rss_mb(pid: int) -> float | None:
    return _summed(rss_mb, pid)


def worker_peak_rss_mb(pid: int) -> float | None:
    """The processes' peaks summed: an upper bound of the worker's (they need not
    peak at once); one process: its peak."""
    return _summed(peak_rss_mb, pid)


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_us_per_event(
    before: dict[str, float], after: dict[str, float], events: int
) -> dict[str, float]:
    """CPU µs per event of the worker (or the floor's forwarder), the sink's process
    and the broker, between two :meth:`Watch.cpu` readings."""
    return {
        name: round((after[name] - before[name]) / max(events, 1) * 1e6, 1)
        for name in ("worker", "sink", "broker")
    }


PHASES = ("ceiling", "floor", "naive", "drain", "freshness", "memory", "http")


@dataclass
class Watch:
    """RSS and CPU of named processes, sampled."""

    pids: dict[str, int]
    families: frozenset[str] = frozenset({"worker"})  # counted with their descendants
    peak: dict[str, float] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        now = {}
        for name, pid in self.pids.items():
            value = _summed(rss_mb, pid) if name in self.families else rss_mb(pid)
            if value is not None:
                now[name] = value
                self.peak[name] = max(self.peak.get(name, 0.0), value)
        return now

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            value = _summed(cpu_s, pid) if name in self.families else cpu_s(pid)
            if value is not None:
                out[name] = value
        return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def censored(
    sent: dict[str, float], arrived: dict[str, float], waited_until: float
) -> tuple[list[float], int]:
    """Latencies of everything sent: arrival minus sending, or, for what never
    arrived, the wait's end minus sending (a lower bound); and how many those are."""
    out = [arrived[k] - at if k in arrived else waited_until - at for k, at in sent.items()]
    return out, sum(1 for k in sent if k not in arrived)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = _meminfo_gib()
    commit = subprocess.run(  # noqa: S603 - fixed argv
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(  # noqa: S603 - fixed argv
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if commit and dirty:
        commit += "+uncommitted changes"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _meminfo_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def child_env(settings: Settings) -> dict[str, str]:
    own = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHSTREAM_")}
    return {**own, **settings.as_env()}


# -- the run ----------------------------------------------------------------------------


class FloorStack(Stack):
    """The local stack with the floor's forwarder (tests/perf/floor.py) in the stream
    worker's place: as many processes, one consumer group, the same sink."""

    def spawn_worker(self, log_name: str = "worker.log") -> subprocess.Popen[bytes]:
        processes = worker_processes(self.settings)
        with open(self.logs / "floor.log", "ab") as log:
            return subprocess.Popen(  # noqa: S603 - our interpreter and module
                [sys.executable, "-m", "tests.perf.floor", "--processes", str(processes)],
                env=child_env(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )


@dataclass
class Options:
    events: int
    rate: int
    fresh_seconds: int
    naive_seconds: int
    distinct: int
    http_seconds: int
    profile: bool
    keep: bool
    drain_budget: float = 1200.0
    fresh_wait: float = 120.0
    memory_budget: float = 600.0
    profile_seconds: int = 60
    phases: frozenset[str] = frozenset(PHASES)
    processes: int = 0  # of the worker; 0: the setting's default (one per CPU)
    outcome_cache: int | None = None  # STREAMS__OUTCOME_CACHE_ENTRIES; None: its default


class Bench:
    def __init__(self, options: Options, console: Console, progress: Progress) -> None:
        self.o = options
        self.console = console
        self.progress = progress
        self.uid = uuid.uuid4().hex[:8]
        self.data_dir = Path(tempfile.mkdtemp(prefix="touchstream-bench-"))
        self.logs = self.data_dir / "logs"
        self.logs.mkdir(parents=True)
        self.figures: dict[str, Any] = {}
        self.broker = LocalBroker(log_path=self.logs / "broker.log")
        self.settings: Settings | None = None
        self.profiles: dict[str, dict[str, Any]] = {}
        self._spy_windows: dict[int, str] = {}
        self.bootstrap = ""
        self.worker_peaks: dict[str, float] = {}

    @property
    def s(self) -> Settings:
        assert self.settings is not None
        return self.settings

    # -- helpers

    def note_lag(self, phase: str, sample: dict[str, Any]) -> None:
        shown = ", ".join(f"{k} {v:,}" for k, v in sample.items() if k not in ("t", "landed"))
        landed = f", {sample['landed']:,} landed" if "landed" in sample else ""
        self.console.log(f"{phase} {sample['t']:>6.1f} s{landed}; lag: {shown}")

    def note(self, phase: str, *keys: str) -> None:
        """One line per finished phase (also when the output is not a terminal)."""
        shown = ", ".join(f"{k}={self.figures.get(k)}" for k in keys)
        self.console.log(f"{phase}: {shown}")

    def pipeline_watch(self, stack: Stack) -> Watch:
        """The started stack's worker (its processes), the sink's process (this one)
        and the broker."""
        assert stack.worker is not None
        return Watch(
            {"worker": stack.worker.pid, "sink": os.getpid(), "broker": self.broker.pid or 0}
        )

    def task(self, description: str, total: float | None) -> TaskID:
        return self.progress.add_task(description, total=total)

    async def child(
        self, args: list[str], name: str, on_progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Run ``python -m <args>`` with the bench settings; JSON lines on its stdout
        report progress; returns its result. Its stderr goes to logs/<name>.log."""
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *args,
                env=child_env(self.s),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=1 << 20,
            )
        result: dict[str, Any] | None = None
        assert proc.stdout is not None
        async for line in proc.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if "result" in message:
                    result = message["result"]
                else:
                    on_progress(message)
        code = await proc.wait()
        if code != 0 or result is None:
            raise RuntimeError(f"{name} failed (exit {code}); see {self.logs / (name + '.log')}")
        return result

    def staged(self, stages: dict[str, str]) -> Callable[[dict[str, Any]], None]:
        """A progress callback with one bar per stage name a child reports."""
        tasks: dict[str, TaskID] = {}

        def update(message: dict[str, Any]) -> None:
            stage = message.get("stage", "")
            if stage not in tasks:
                tasks[stage] = self.task(stages.get(stage, stage), message.get("total"))
            self.progress.update(tasks[stage], completed=message.get("done", 0))

        return update

    # -- phases

    async def start_broker(self) -> None:
        self.bootstrap = self.broker.start()
        self.settings = self.pipeline_settings("d")
        self.settings.ensure_local_pii_key()
        await ensure_topics(self.settings)

    def pipeline_settings(
        self, tag: str, prefix_tag: str | None = None, topics: dict[str, str] | None = None
    ) -> Settings:
        """Each phase runs its own pipeline: its own topics, groups and database (one
        engine directory: chDB allows one per process), on the one broker. The floor
        reads the drain's topics (``prefix_tag``) and writes its own (``topics``)."""

        settings = load_settings(
            {},
            data_dir=str(self.data_dir),
            kafka={"topic_prefix": f"b{self.uid}{prefix_tag or tag}."},
            clickhouse={"serve_port": 0, "database": f"bench_{tag}"},
            # The worker's /metrics on a port of its own: the drain reads its lags.
            metrics={"port": 0, "worker_port": free_port("127.0.0.1")},
            streams={
                "app_id": f"bench-{self.uid}-{tag}",
                "processes": self.o.processes,
                **(
                    {}
                    if self.o.outcome_cache is None
                    else {"outcome_cache_entries": self.o.outcome_cache}
                ),
            },
            sink={"group_id": f"bench-sink-{self.uid}-{tag}"},
            topics=topics or {},
        ).with_bootstrap(self.bootstrap)  # the local broker, as the local stack uses it
        self.figures["worker_processes"] = worker_processes(settings)
        return settings

    @contextlib.asynccontextmanager
    async def pipeline(
        self, tag: str, start: bool = True, settings: Settings | None = None, floor: bool = False
    ) -> AsyncIterator[tuple[Stack, Any]]:
        """A stack for one phase (started, unless the phase times its start) and a
        client of its engine; on the way out its worker's peak RSS is kept, and it is
        stopped. With ``floor``, the floor's forwarder runs in the worker's place."""
        self.settings = settings or self.pipeline_settings(tag)
        stack = FloorStack(self.settings) if floor else Stack(self.settings)
        client = None
        try:
            if start:
                await stack.start()
                tune_gc()  # as `touchstream up` does: the sink runs in this process
            client = await asyncio.to_thread(connect, self.settings)
            yield stack, client
            if stack.worker is not None and not floor:  # the floor's is not the worker's
                peak = worker_peak_rss_mb(stack.worker.pid) or 0.0
                self.worker_peaks[tag] = peak
        finally:
            if client is not None:
                client.close()
            await stack.stop()

    async def preload(self) -> dict[str, Any]:
        n = self.o.events
        stages = {
            "generate": f"preload: simulate {n:,} events",
            "encode": "preload: encode",
            "send": "preload: send to the raw topics",
        }
        result = await self.child(
            ["tests.perf.loadgen", "preload", "--events", str(n)], "preload", self.staged(stages)
        )
        self.figures.update(
            preload_events=result["events"],
            preload_bytes_per_event=round(result["bytes"] / result["events"], 1),
            preload_customers=result["identities"],
            preload_generate_eps=round(result["events"] / result["generate_s"]),
            preload_encode_eps=round(result["events"] / max(result["encode_s"], 1e-9)),
            preload_send_eps=round(result["events"] / result["send_s"]),
        )
        self.note("preload", "preload_events", "preload_generate_eps", "preload_send_eps")
        return result

    async def raw_ceiling(self) -> None:
        task = self.task("ceiling: aiokafka consume + json.loads", None)
        result = await self.child(
            ["tests.perf.raw_ceiling", "--records", str(self.o.events)], "raw", lambda _: None
        )
        self.progress.update(task, total=1, completed=1)
        if not result["complete"]:
            raise RuntimeError(f"the raw consumer read {result['records']} of {self.o.events}")
        self.figures.update(raw_eps=result["eps"], raw_seconds=result["seconds"])
        self.note("ceiling", "raw_eps", "raw_seconds")

    async def floor(self, stack: Stack, client: Any) -> None:
        """The contract's path alone (tests/perf/floor.py), from start until every
        preloaded event is in the floor's `events` table: against the raw ceiling,
        what validating, forwarding and storing cost here before any stream logic;
        against the drain, what the stream logic costs."""
        n = self.o.events
        db = self.s.clickhouse.database
        task = self.task(f"floor: {n:,} events validated, forwarded, in ClickHouse", n)
        started = time.perf_counter()
        await stack.start()
        tune_gc()  # as for the drain: the sink runs in this process
        watch = self.pipeline_watch(stack)
        count = first_count = 0
        first_at = None
        cpu0 = watch.cpu()
        while count < n and time.perf_counter() - started < self.o.drain_budget:
            stack.check()
            await asyncio.sleep(0.25)
            count = await asyncio.to_thread(_count, client, db)
            self.progress.update(task, completed=count)
            if count and first_at is None:  # from here on, as the drain's steady rate
                first_at, first_count, cpu0 = time.perf_counter(), count, watch.cpu()
        end = time.perf_counter()
        cpu1 = watch.cpu()
        busy = max(end - (first_at or started), 1e-9)
        landed = count - first_count
        cpu_us = cpu_us_per_event(cpu0, cpu1, landed)
        total_us = sum(cpu_us.values())
        self.figures.update(
            floor_complete=count >= n,
            floor_eps=round(count / (end - started)),
            floor_seconds=round(end - started, 1),
            floor_steady_eps=round(landed / busy),
            floor_worker_cpu_cores=round((cpu1["worker"] - cpu0["worker"]) / busy, 2),
            floor_sink_cpu_cores=round((cpu1["sink"] - cpu0["sink"]) / busy, 2),
            floor_broker_cpu_cores=round((cpu1["broker"] - cpu0["broker"]) / busy, 2),
            # CPU per event of the three while events land; the cores over it is the
            # most the contract's path alone can reach here, busy or not.
            floor_cpu_us_per_event=round(total_us, 1),
            floor_cpu_us=cpu_us,
            floor_bound_eps=round(available_cpus() * 1e6 / max(total_us, 1e-9)),
        )
        self.note(
            "floor", "floor_complete", "floor_eps", "floor_steady_eps", "floor_cpu_us_per_event"
        )

    async def naive(self) -> None:
        report = self.data_dir / "naive.json"
        task = self.task(f"baseline: naive agent, row by row (≤ {self.o.naive_seconds} s)", None)
        with open(self.logs / "naive.log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our interpreter and module
                [
                    sys.executable,
                    "-m",
                    "tests.perf.naive_worker",
                    "--clickhouse",
                    str(self.data_dir / "naive-clickhouse"),
                    "--report",
                    str(report),
                ],
                env=child_env(self.s),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started = time.time()
        counts: dict[str, Any] = {"rows": 0}
        watch = Watch({"naive": proc.pid})
        try:
            while proc.poll() is None:
                await asyncio.sleep(0.5)
                watch.sample()
                with contextlib.suppress(OSError, ValueError):
                    counts = json.loads(report.read_text())
                self.progress.update(task, completed=counts["rows"])
                first = counts.get("first_at")
                if counts["rows"] >= self.o.events:
                    break
                if first is not None and time.time() - first >= self.o.naive_seconds:
                    break
                if first is None and time.time() - started > 120:
                    raise RuntimeError(f"the naive worker wrote nothing; see {self.logs}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait, 5)
        if not counts.get("first_at") or counts["rows"] < 2:
            raise RuntimeError(f"the naive worker exited early; see {self.logs / 'naive.log'}")
        span = counts["last_at"] - counts["first_at"]
        self.figures.update(
            naive_eps=round(counts["rows"] / span, 1),
            naive_rows=counts["rows"],
            naive_seconds=round(span, 1),
            naive_startup_s=round(counts["first_at"] - started, 1),
            naive_peak_rss_mb=round(watch.peak.get("naive", 0.0)),
        )
        self.note("baseline", "naive_eps", "naive_rows", "naive_seconds", "naive_startup_s")

    async def drain(self, stack: Stack, client: Any, responses: dict[str, int]) -> None:
        """From the pipeline's start until every event is in ClickHouse and the KPI
        windows are final, or until --drain-budget has passed: then the rate is what
        landed in that time, and the run says the drain is incomplete."""
        n = self.o.events
        db = self.s.clickhouse.database
        task = self.task(f"drain: {n:,} events into ClickHouse, KPIs final", n)
        started = time.perf_counter()
        await stack.start()
        tune_gc()  # as `touchstream up` does: the sink runs in this process
        assert stack.worker is not None
        watch = self.pipeline_watch(stack)
        spy: subprocess.Popen[bytes] | None = None
        profiled: set[str] = set()
        cpu0 = cpu1 = watch.cpu()
        first_at = all_at = kpis_at = None
        final: tuple[Any, ...] | None = None  # KPI state first seen final, and when
        count = 0
        lags: list[dict[str, Any]] = []  # the worker's consumer lag per topic, every 5 s
        internal = [self.s.topics.model_dump()[role] for role in DRAINED_TOPICS]
        drained, drained_read = False, float("-inf")  # internal queues read; when looked
        try:
            while True:
                stack.check()
                watch.sample()
                count, overall, per_group = await asyncio.to_thread(_landed, client, db, n)
                now = time.perf_counter()
                if not lags or now - started - lags[-1]["t"] >= 5.0:
                    lag = await asyncio.to_thread(worker_lags, self.s)
                    if lag is not None:
                        lags.append({"t": round(now - started, 1), "landed": count, **lag})
                        self.note_lag("drain", lags[-1])
                self.progress.update(task, completed=count)
                if count and first_at is None:
                    first_at = now
                    cpu0 = watch.cpu()
                    if self.o.profile:
                        spy = self._start_profiler(profiled_pid(stack.worker.pid), "ingest")
                if spy is not None and spy.poll() is not None:
                    self._stop_profiler(spy)  # its window ended
                    spy = None
                halfway = first_at is not None and (
                    count >= n / 2 or now - first_at >= self.o.drain_budget / 2
                )
                if self.o.profile and halfway and spy is None and "late" not in profiled:
                    if count < n:
                        spy = self._start_profiler(profiled_pid(stack.worker.pid), "late")
                    profiled.add("late")
                if count >= n and all_at is None:
                    all_at = now
                    cpu1 = watch.cpu()
                    if self.o.profile:
                        if spy is not None:
                            self._stop_profiler(spy)
                        spy = self._start_profiler(profiled_pid(stack.worker.pid), "tail")
                responses_done = all(
                    overall.get(k, 0) == responses[k] and per_group.get(k, 0) == responses[k]
                    for k in SCORE_KPIS
                )
                state: tuple[Any, ...] = (overall, per_group)
                if responses_done and count >= n:
                    if now - drained_read >= LAG_READ_S:
                        # The worker's internal queues read to their end (a fresh read).
                        lag = await asyncio.to_thread(worker_lags, self.s)
                        drained = lag is not None and all(lag.get(t) == 0 for t in internal)
                        drained_read = now
                    state = (overall, per_group, drained)
                if responses_done and count >= n and state[-1] is True:
                    if final is None or final[0] != state:
                        final = (state, now)
                    elif now - final[1] >= 3.0:  # unchanged for 3 s: settled
                        kpis_at = final[1]
                        break
                else:
                    final = None
                if now - started > self.o.drain_budget:
                    cpu1 = watch.cpu()
                    break
                await asyncio.sleep(0.25)
        finally:
            if spy is not None:
                self._stop_profiler(spy)
        end = time.perf_counter()
        cpu_end = watch.cpu()
        self.figures["drain_lag_timeline"] = lags
        complete = kpis_at is not None
        done = max(all_at or end, kpis_at or end)
        busy_until = all_at or end
        busy = max(1e-9, busy_until - (first_at or started))
        landed_in_time = n if all_at is not None else count
        self.figures.update(
            drain_complete=complete,
            drain_events_landed=landed_in_time,
            drain_eps=round(landed_in_time / (done - started)),
            drain_seconds=round(done - started, 1),
            drain_startup_s=round((first_at or end) - started, 1),
            drain_steady_eps=round(landed_in_time / busy),
            drain_kpis_after_events_s=round(kpis_at - all_at, 1)
            if kpis_at is not None and all_at is not None
            else None,
            drain_worker_cpu_cores=round((cpu1["worker"] - cpu0["worker"]) / busy, 2),
            drain_sink_cpu_cores=round((cpu1["sink"] - cpu0["sink"]) / busy, 2),
            drain_broker_cpu_cores=round((cpu1["broker"] - cpu0["broker"]) / busy, 2),
            # From the first event landed to the KPIs final (the tail's work included),
            # against the floor's figure: what the stream logic costs per event.
            drain_cpu_us=(drain_us := cpu_us_per_event(cpu0, cpu_end, landed_in_time)),
            drain_cpu_us_per_event=round(sum(drain_us.values()), 1),
            worker_rss_after_drain_mb=round(worker_rss_mb(stack.worker.pid) or 0),
            worker_peak_rss_drain_mb=round(worker_peak_rss_mb(stack.worker.pid) or 0),
            sink_peak_rss_drain_mb=round(watch.peak.get("sink", 0.0)),
            broker_rss_after_drain_mb=round(rss_mb(self.broker.pid or 0) or 0),
        )
        if complete:
            distinct = await asyncio.to_thread(
                lambda: client.query(f"SELECT uniqExact(event_id) FROM {db}.events").result_rows[0][
                    0
                ]  # noqa: S608 - our database name
            )
            self.figures["drain_distinct_events"] = int(distinct)
            if distinct != n:
                raise RuntimeError(f"{distinct} distinct events in ClickHouse, {n} sent")
        self.note(
            "drain",
            "drain_complete",
            "drain_events_landed",
            "drain_eps",
            "drain_seconds",
            "drain_startup_s",
            "drain_steady_eps",
            "drain_kpis_after_events_s",
            "drain_worker_cpu_cores",
            "drain_sink_cpu_cores",
            "drain_broker_cpu_cores",
            "drain_cpu_us_per_event",
            "worker_peak_rss_drain_mb",
        )

    def _start_profiler(self, pid: int, window: str) -> subprocess.Popen[bytes]:
        """py-spy on the worker for --profile-seconds at most. --nonblocking: pausing
        the process at every sample (py-spy's default) slowed the drain ~15x here."""
        py_spy = Path(sys.executable).with_name("py-spy")
        path = PROFILES[window]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        spy = subprocess.Popen(  # noqa: S603 - the pinned py-spy next to our interpreter
            [str(py_spy), "record", "--pid", str(pid), "--nonblocking", "--format", "raw"]
            + ["--threads"]
            + ["--function", "--rate", "100", "--duration", str(self.o.profile_seconds)]
            + ["--output", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._spy_windows[spy.pid] = window
        return spy

    def _stop_profiler(self, spy: subprocess.Popen[bytes]) -> None:
        from tests.perf.pyspy import Profile, ticks_of

        spy.send_signal(signal.SIGINT)
        try:
            out, _ = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            out, _ = spy.communicate()
        text = out.decode(errors="replace")
        window = self._spy_windows[spy.pid]
        path = PROFILES[window]
        (self.logs / f"py-spy-{window}.log").write_text(text)
        if not path.exists():
            self.console.print(f"[yellow]py-spy wrote no profile: {text.strip()[-300:]}")
            return
        profile = Profile.load(path, ticks_of(text))
        threads = profile.threads()
        main = next((t for t in threads if t.endswith("MainThread")), None)
        top = profile.top(main, n=80)
        root = max((incl for _, _, incl in top), default=0.0)
        self.profiles[window] = {
            "file": str(path),
            "ticks": profile.ticks,
            "threads_busy": {t: round(c / profile.ticks, 3) for t, c in threads.most_common(6)},
            "main_thread": main,
            # Below the event loop: the frames in (nearly) every sample of the thread
            # are its root chain (runpy, typer, mode's worker, run_forever), not news.
            "main_top_inclusive": [
                (frame, round(own, 3), round(incl, 3))
                for frame, own, incl in top
                if incl < 0.9 * root
            ][:25],
            "main_top_self": [(f, round(s, 3)) for f, s in profile.top_self(main, n=15)],
            "main_by_package": [(p, round(s, 3)) for p, s in profile.by_package(main)[:12]],
        }
        if main is not None:
            busy = round(threads[main] / profile.ticks, 3)
            self.figures[f"worker_main_thread_busy_{window}"] = busy

    async def freshness(self, stack: Stack, client: Any) -> None:
        """--rate events/s for --fresh-seconds into a started, idle pipeline."""
        db = self.s.clickhouse.database
        prefix = f"f{self.uid}-"
        arrived: dict[str, float] = {}
        alerts_task = asyncio.create_task(self._read_alerts(arrived))
        await asyncio.sleep(1.0)  # the alert consumer is positioned at the end
        seen: dict[str, float] = {}
        stop = asyncio.Event()
        poll_task = asyncio.create_task(self._poll_probes(client, db, prefix, seen, stop))
        lags: list[dict[str, Any]] = []  # which stage the backlog is in, every 2 s
        lag_task = asyncio.create_task(self._sample_lags(lags, stop))
        total = self.o.rate * self.o.fresh_seconds
        stages = {
            "generate": f"freshness: simulate {total:,} events",
            "steady": f"freshness: {self.o.rate:,} events/s for {self.o.fresh_seconds} s",
        }
        # CPU while the load is sent: the pipeline's (worker, broker, and the sink's
        # process, which here also runs the probe queries, the alert reader and
        # the lag reads) against the load generator's own.
        watch = self.pipeline_watch(stack)
        steady_cpu: list[tuple[float, dict[str, float]]] = []
        show = self.staged(stages)

        def progress(message: dict[str, Any]) -> None:
            if message.get("stage") == "steady" and not steady_cpu:
                steady_cpu.append((time.perf_counter(), watch.cpu()))
            show(message)

        try:
            result = await self.child(
                ["tests.perf.loadgen", "steady", "--rate", str(self.o.rate)]
                + ["--seconds", str(self.o.fresh_seconds), "--prefix", prefix],
                "steady",
                progress,
            )
            steady_cpu.append((time.perf_counter(), watch.cpu()))
            probes: dict[str, float] = result["probes"]
            alerts: dict[str, float] = result["alerts"]
            wait = self.task(
                f"freshness: last probes and alerts (≤ {self.o.fresh_wait:.0f} s)",
                len(probes) + len(alerts),
            )
            deadline = time.monotonic() + self.o.fresh_wait
            while time.monotonic() < deadline:
                stack.check()
                got = len(seen) + sum(1 for a in alerts if a in arrived)
                self.progress.update(wait, completed=got)
                if got >= len(probes) + len(alerts):
                    break
                await asyncio.sleep(0.2)
            waited_until = time.time()
        finally:
            stop.set()
            alerts_task.cancel()
            await asyncio.gather(poll_task, alerts_task, lag_task, return_exceptions=True)
        self.figures["freshness_lag_timeline"] = lags
        fresh, fresh_censored = censored(probes, seen, waited_until)
        alert, alert_censored = censored(alerts, arrived, waited_until)
        written = await asyncio.to_thread(_written_latency, client, db, prefix)
        (t0, cpu0), (t1, cpu1) = steady_cpu[0], steady_cpu[-1]
        cores = {name: round((cpu1[name] - cpu0[name]) / (t1 - t0), 2) for name in cpu0}
        cores["load"] = result["cpu_cores"]
        self.figures.update(
            freshness_cpu_cores=cores,
            freshness_cpu_us_per_event={
                name: round(value / result["rate"] * 1e6, 1) for name, value in cores.items()
            },
            freshness_rate_eps=result["rate"],
            freshness_producer_max_behind_s=result["max_behind_s"],
            freshness_probes=len(probes),
            freshness_censored=fresh_censored,
            freshness_poll_interval_s=0.1,
            **written,
            alerts_expected=len(alerts),
            alerts_censored=alert_censored,
        )
        for name, values in (("freshness", fresh), ("alert", alert)):
            for q in (50, 95, 99):
                value = percentile(values, q / 100) if values else None
                self.figures[f"{name}_p{q}_s"] = None if value is None else round(value, 3)
        self.note(
            "freshness",
            "freshness_rate_eps",
            "freshness_p50_s",
            "freshness_p95_s",
            "freshness_p99_s",
            "freshness_probes",
            "freshness_censored",
            "freshness_cpu_cores",
            "written_p95_s",
            "received_p95_s",
            "sink_wait_p95_s",
            "alert_p50_s",
            "alert_p95_s",
            "alerts_expected",
            "alerts_censored",
        )

    async def _sample_lags(self, out: list[dict[str, Any]], stop: asyncio.Event) -> None:
        """Every 2 s: the worker's consumer lag per topic (raw topics: ingest behind;
        internal ones: the stage after it), logged as the drain's is."""
        started = time.perf_counter()
        while not stop.is_set():
            lag = await asyncio.to_thread(worker_lags, self.s)
            if lag is not None:
                out.append({"t": round(time.perf_counter() - started, 1), **lag})
                self.note_lag("freshness", out[-1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    async def _poll_probes(
        self,
        client: Any,
        db: str,
        prefix: str,
        seen: dict[str, float],
        stop: asyncio.Event,
    ) -> None:
        """Every 0.1 s: which probe events a query returns. A row returned was
        queryable when the query started, so that is its (upper bound) time."""
        last = time.time()
        while not stop.is_set():
            at = time.time()
            rows = await asyncio.to_thread(_probes, client, db, prefix + "p", last - 10)
            for identity in rows:
                seen.setdefault(identity, at)
            last = at
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, 0.1 - (time.time() - at)))

    async def _read_alerts(self, out: dict[str, float]) -> None:
        """When each alert first arrives on cx.alerts.v1 (status open)."""
        kafka = self.s.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id="touchstream-bench-alerts",
            group_id=None,
            enable_auto_commit=False,
            **kafka.consumer_kwargs(),
        )
        await consumer.start()
        try:
            topic = self.s.topic("alerts")
            parts = [TopicPartition(topic, p) for p in range(kafka.partitions)]
            consumer.assign(parts)
            await consumer.seek_to_end(*parts)
            while True:
                polled = await consumer.getmany(timeout_ms=100)
                at = time.time()
                for batch in polled.values():
                    for record in batch:
                        alert = json.loads(record.value)
                        if alert["status"] == "open":
                            out.setdefault(alert["alert_id"], at)
        finally:
            await consumer.stop()

    async def memory(self, stack: Stack, client: Any) -> None:
        """--distinct events, one customer each, sent while a fresh pipeline runs;
        RSS against customers landed, until all landed or --memory-budget passed."""
        n = self.o.distinct
        db = self.s.clickhouse.database
        prefix = f"u{self.uid}-"
        assert stack.worker is not None
        watch = Watch({"worker": stack.worker.pid, "sink": os.getpid()})
        await asyncio.sleep(2.0)  # settled after start
        before = watch.sample()
        series: list[tuple[int, float, float]] = [(0, before["worker"], before["sink"])]
        stages = {
            "generate": f"memory: simulate {n:,} events of distinct customers",
            "encode": "memory: encode",
            "send": "memory: send (the pipeline drains meanwhile)",
        }
        landed_task = self.task(
            f"memory: {n:,} distinct customers landed (≤ {self.o.memory_budget:.0f} s)", n
        )
        load = asyncio.create_task(
            self.child(
                ["tests.perf.loadgen", "preload", "--events", str(n), "--distinct", prefix]
                + ["--seed", "47"],
                "distinct",
                self.staged(stages),
            )
        )
        started: float | None = None  # when the first customer landed
        landed = 0
        while True:
            stack.check()
            if load.done() and load.exception() is not None:
                raise RuntimeError("the distinct-customer load failed") from load.exception()
            now = watch.sample()
            landed = await asyncio.to_thread(_count_prefix, client, db, prefix)
            series.append((landed, now.get("worker", 0.0), now.get("sink", 0.0)))
            self.progress.update(landed_task, completed=landed)
            if landed and started is None:
                started = time.monotonic()
            if landed >= n:
                break
            if started is not None and time.monotonic() - started > self.o.memory_budget:
                break
            await asyncio.sleep(1.0)
        await load
        await asyncio.sleep(2.0)
        after = watch.sample()
        keys = await asyncio.to_thread(worker_gauge, self.s, "worker_state_keys", "stage")
        half = min(series, key=lambda item: abs(item[0] - landed / 2))
        first_half = half[1] - before["worker"]
        second_half = after["worker"] - half[1]
        self.figures.update(
            distinct_customers=n,
            distinct_customers_landed=landed,
            worker_rss_before_distinct_mb=round(before["worker"]),
            worker_rss_after_distinct_mb=round(after["worker"]),
            worker_rss_growth_distinct_mb=round(after["worker"] - before["worker"]),
            worker_rss_growth_first_half_mb=round(first_half),
            worker_rss_growth_second_half_mb=round(second_half),
            worker_rss_growth_per_100k_customers_mb=round(
                (after["worker"] - before["worker"]) / max(1, landed) * 100_000, 1
            ),
            sink_rss_growth_distinct_mb=round(after["sink"] - before["sink"]),
            worker_state_keys_after_distinct=keys or {},
            worker_rss_series=[
                (c, round(w), round(k)) for c, w, k in series[:: max(1, len(series) // 40)]
            ],
        )
        self.note(
            "memory",
            "distinct_customers_landed",
            "worker_rss_before_distinct_mb",
            "worker_rss_after_distinct_mb",
            "worker_rss_growth_first_half_mb",
            "worker_rss_growth_second_half_mb",
            "worker_rss_growth_per_100k_customers_mb",
            "worker_state_keys_after_distinct",
        )

    async def run(self) -> None:
        try:
            await self.start_broker()
            produced = await self.preload()
            if "ceiling" in self.o.phases:
                await self.raw_ceiling()
            if "floor" in self.o.phases:
                # The drain's raw topics, the floor's own outputs, group and database.
                floor_topics = {role: f"floor.{role}.v1" for role in FLOOR_OUTPUTS}
                settings = self.pipeline_settings("l", prefix_tag="d", topics=floor_topics)
                async with self.pipeline("l", False, settings, floor=True) as (stack, client):
                    await self.floor(stack, client)
                # The local broker keeps every record in memory: the floor's 1M forwarded
                # events must not weigh on the phases after it.
                await delete_topics(settings, [settings.topic(r) for r in FLOOR_OUTPUTS])
            if "naive" in self.o.phases:
                await self.naive()
            if "drain" in self.o.phases:
                async with self.pipeline("d", start=False) as (stack, client):
                    await self.drain(stack, client, produced["responses"])
            if "freshness" in self.o.phases:
                async with self.pipeline("f") as (stack, client):
                    await self.freshness(stack, client)
            if self.o.distinct and "memory" in self.o.phases:
                async with self.pipeline("m") as (stack, client):
                    await self.memory(stack, client)
            self.figures.update(
                worker_peak_rss_mb=round(max(self.worker_peaks.values(), default=0.0)),
                sink_peak_rss_mb=round(peak_rss_mb(os.getpid()) or 0),
                broker_peak_rss_mb=round(peak_rss_mb(self.broker.pid or 0) or 0),
            )
        finally:
            self.broker.stop()

    def close(self) -> None:
        if self.o.keep:
            self.console.print(f"data and logs kept in {self.data_dir}")
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def profiled_pid(worker: int) -> int:
    """The process py-spy samples: the worker, or the first of its processes (they
    all run the same stages on their share of the partitions)."""
    return next(iter(family(worker)[1:]), worker)


def worker_lags(settings: Settings) -> dict[str, int] | None:
    """The worker's consumer lag (records not read yet) per topic, from its /metrics
    (all of its processes'; the topic prefix left out); None while it does not answer."""
    lags = worker_gauge(settings, "worker_consumer_lag", "topic")
    if lags is None:
        return None
    prefix = settings.kafka.topic_prefix
    out: dict[str, int] = {}
    for topic, value in lags.items():
        short = topic.removeprefix(prefix)
        out[short] = out.get(short, 0) + value
    return out


def worker_gauge(settings: Settings, metric: str, label: str) -> dict[str, int] | None:
    """A gauge of the worker's /metrics summed by one label (over its processes and
    the other labels); None while the worker does not answer."""
    url = f"http://127.0.0.1:{settings.metrics.worker_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our loopback
            text = response.read().decode()
    except OSError:
        return None
    name = f"{settings.metrics.namespace}_{metric}{{"
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(name):
            labels, _, value = line.rpartition(" ")
            key = labels.split(f'{label}="', 1)[1].split('"', 1)[0]
            out[key] = out.get(key, 0) + int(float(value))
    return out


def _landed(client: Any, db: str, n: int) -> tuple[int, dict[str, int], dict[str, int]]:
    """Events in ClickHouse; once all ``n`` are, per score KPI the responses counted
    by the daily windows, overall and summed over (channel, touchpoint), and
    checkout abandonment decided. (Not before: that query, with FINAL, ran every
    0.25 s in the sink's process and took ~14 % of its samples in a drain.)"""
    count = _count(client, db)
    if count < n:
        return int(count), {}, {}
    rows = client.query(
        "SELECT kpi, channel = 'all', sum(denominator) FROM {db:Identifier}.kpi_touchpoint FINAL "
        "WHERE window_size = 86400 AND kpi IN ('nps', 'csat', 'ces', 'checkout_abandonment') "
        "GROUP BY kpi, channel = 'all'",
        parameters={"db": db},
    ).result_rows
    overall = {str(k): int(v) for k, is_all, v in rows if is_all}
    per_group = {str(k): int(v) for k, is_all, v in rows if not is_all}
    return int(count), overall, per_group


async def delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def _count(client: Any, db: str) -> int:
    """Events in the database's ``events`` table."""
    return int(client.query(f"SELECT count() FROM {db}.events").result_rows[0][0])  # noqa: S608 - our database name


def _probes(client: Any, db: str, prefix: str, since: float) -> list[str]:
    rows = client.query(
        "SELECT identity FROM {db:Identifier}.events "
        "WHERE identity >= {lo:String} AND identity < {hi:String} "
        "AND inserted_at >= fromUnixTimestamp64Milli({since:Int64})",
        parameters={"db": db, "lo": prefix, "hi": prefix + "\x7f", "since": int(since * 1000)},
    ).result_rows
    return [str(identity) for (identity,) in rows]


def _count_prefix(client: Any, db: str, prefix: str) -> int:
    return int(
        client.query(
            "SELECT count() FROM {db:Identifier}.events "
            "WHERE identity >= {lo:String} AND identity < {hi:String}",
            parameters={"db": db, "lo": prefix, "hi": prefix + "\x7f"},
        ).result_rows[0][0]
    )


def _written_latency(client: Any, db: str, prefix: str) -> dict[str, float]:
    """Over every event of the steady phase, where the time to ClickHouse goes:
    occurred_at → received_at (sent, fetched and validated by the worker),
    received_at → inserted_at (forwarded, then buffered by the sink until its
    INSERT started; visible once it commits) and the two together; p50/p95/p99 s."""
    spans = {
        "written": ("occurred_at", "inserted_at"),
        "received": ("occurred_at", "received_at"),
        "sink_wait": ("received_at", "inserted_at"),
    }
    columns = ", ".join(
        f"quantilesExact(0.5, 0.95, 0.99)(toUnixTimestamp64Milli({end}) "
        f"- toUnixTimestamp64Milli({start}))"
        for start, end in spans.values()
    )
    count, *quantiles = client.query(
        f"SELECT count(), {columns} FROM {{db:Identifier}}.events "
        "WHERE identity >= {lo:String} AND identity < {hi:String}",
        parameters={"db": db, "lo": prefix, "hi": prefix + "\x7f"},
    ).result_rows[0]
    out: dict[str, float] = {"written_events": int(count)}
    for name, values in zip(spans, quantiles, strict=True):
        for q, value in zip((50, 95, 99), values, strict=True):
            out[f"{name}_p{q}_s"] = value / 1000
    return out


# -- report -----------------------------------------------------------------------------


def run_http_bench(console: Console, seconds: int, rate: int) -> dict[str, Any]:
    """tests/perf/bench_http.py in its own process (chDB: one engine dir per process)."""
    results = Path(tempfile.mkstemp(prefix="bench-http-", suffix=".json")[1])
    try:
        subprocess.run(  # noqa: S603 - our interpreter and module
            [sys.executable, "-m", "tests.perf.bench_http", "--rate", str(rate)]
            + ["--seconds", str(seconds), "--results", str(results)],
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("TOUCHSTREAM_")},
        )
        figures: dict[str, Any] = json.loads(results.read_text())
        return figures
    finally:
        results.unlink(missing_ok=True)


def verdicts(f: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, wanted, met?)"""

    def ok(good: bool) -> str:
        return "[green]yes" if good else "[red]no"

    out = []
    drain, naive, raw = f.get("drain_eps"), f.get("naive_eps"), f.get("raw_eps")
    partial = "" if f.get("drain_complete", True) else " (budget ran out)"
    if drain:
        out.append(
            (
                "drain, events/s per worker",
                f"{drain:,}{partial}",
                "≥ 100,000",
                ok(drain >= 100_000),
            )
        )
    if drain and naive:
        ratio = drain / naive
        out.append(("drain ÷ naive baseline", f"{ratio:,.1f}×", "≥ 5×", ok(ratio >= 5)))
    if drain and raw:
        ratio = drain / raw
        out.append(("drain ÷ raw ceiling", f"{ratio:.3f}", "≥ 0.333", ok(ratio >= 1 / 3)))
    floor = f.get("floor_eps")
    if floor and raw:
        # Not a target: what the contract's path alone reaches of the ceiling here.
        ratio = floor / raw
        out.append(("floor ÷ raw ceiling (bound)", f"{ratio:.3f}", "≥ 0.333", ok(ratio >= 1 / 3)))
    for key, label, cut in (
        ("freshness_p95_s", "freshness p95", "freshness_censored"),
        ("alert_p95_s", "alert p95", "alerts_censored"),
    ):
        value = f.get(key)
        if value is not None:
            at_least = "≥ " if f.get(cut) else ""
            out.append(
                (
                    f"{label} at {f.get('freshness_rate_eps', 0):,}/s",
                    f"{at_least}{value} s",
                    "≤ 1 s",
                    ok(value <= 1.0),
                )
            )
    first, second = (
        f.get("worker_rss_growth_first_half_mb"),
        f.get("worker_rss_growth_second_half_mb"),
    )
    if first is not None and second is not None:
        bounded = second <= max(20, 0.25 * max(first, 0))
        out.append(
            (
                f"worker memory bounded ({f['distinct_customers_landed']:,} customers)",
                f"+{first} MB then +{second} MB",
                "2nd half flat",
                ok(bounded),
            )
        )
    return out


FIGURE_LABELS = {
    "preload_events": "events preloaded",
    "preload_customers": "distinct customer keys in the preload",
    "preload_generate_eps": "simulator, events/s generated",
    "preload_send_eps": "aiokafka producer, events/s sent",
    "raw_eps": "ceiling: aiokafka + json.loads, events/s",
    "floor_eps": "floor: validate + forward + sink only, events/s",
    "floor_seconds": "floor: seconds (start → all in ClickHouse)",
    "floor_steady_eps": "floor: first → last event landed, events/s",
    "floor_worker_cpu_cores": "floor: forwarder CPU, cores (while landing)",
    "floor_sink_cpu_cores": "floor: sink process CPU, cores",
    "floor_broker_cpu_cores": "floor: broker CPU, cores",
    "floor_cpu_us_per_event": "floor: CPU µs per event (forwarder + sink + broker)",
    "floor_bound_eps": "floor: all cores ÷ that CPU, events/s",
    "naive_eps": "baseline: naive agent row by row, events/s",
    "naive_rows": "baseline: rows written in its window",
    "drain_complete": "drain: complete within the budget",
    "drain_events_landed": "drain: events landed",
    "drain_eps": "drain: events/s (start → all landed, KPIs final)",
    "drain_seconds": "drain: seconds",
    "drain_startup_s": "drain: start → first event queryable, s",
    "drain_steady_eps": "drain: first → last event landed, events/s",
    "drain_kpis_after_events_s": "drain: KPIs final after last event, s",
    "drain_worker_cpu_cores": "drain: worker CPU, cores",
    "drain_sink_cpu_cores": "drain: sink process CPU, cores",
    "drain_broker_cpu_cores": "drain: broker CPU, cores",
    "drain_cpu_us_per_event": "drain: CPU µs per event (worker + sink + broker, to KPIs final)",
    "worker_main_thread_busy_ingest": "drain: worker main thread busy (py-spy)",
    "worker_main_thread_busy_late": "drain, later: worker main thread busy",
    "worker_main_thread_busy_tail": "drain, KPI tail: worker main thread busy",
    "freshness_rate_eps": "freshness: events/s produced",
    "freshness_p50_s": "freshness p50, s (occurred → queryable)",
    "freshness_p95_s": "freshness p95, s",
    "freshness_p99_s": "freshness p99, s",
    "freshness_censored": "freshness: probes not seen by the end of the wait",
    "freshness_cpu_cores": "freshness: CPU while sent, cores (the sink's process has the probes)",
    "written_p95_s": "occurred → sink INSERT, p95 s (every event)",
    "received_p95_s": "  of which occurred → worker received_at, p95 s",
    "sink_wait_p95_s": "  of which received_at → sink INSERT, p95 s",
    "alert_p50_s": "alert p50, s (response → cx.alerts.v1)",
    "alert_p95_s": "alert p95, s",
    "alert_p99_s": "alert p99, s",
    "alerts_expected": "alerts expected",
    "alerts_censored": "alerts not seen by the end of the wait",
    "worker_peak_rss_mb": "worker peak RSS, MB",
    "sink_peak_rss_mb": "sink process peak RSS, MB (sink + chDB)",
    "broker_peak_rss_mb": "local broker peak RSS, MB",
    "distinct_customers_landed": "memory run: distinct customers landed",
    "worker_rss_growth_distinct_mb": "worker RSS growth, distinct customers, MB",
    "worker_rss_growth_per_100k_customers_mb": "… per 100k customers, MB",
    "worker_state_keys_after_distinct": "worker state keys by stage after them",
    "sink_rss_growth_distinct_mb": "sink RSS growth, distinct customers, MB",
    "http_select_p50_s": "HTTP SELECT p50 under ingest, s",
    "http_select_p95_s": "HTTP SELECT p95 under ingest, s",
}


def report(console: Console, figures: dict[str, Any], profiles: dict[str, dict[str, Any]]) -> None:
    m = figures["machine"]
    title = (
        f"Touchstream bench, {m['date']}: {m['cores']} cores {m['cpu']}, "
        f"{m['memory_gib']} GiB, Python {m['python']}, load at start {m['load_at_start']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, label in FIGURE_LABELS.items():
        if figures.get(key) is not None:
            value = figures[key]
            if isinstance(value, bool):
                shown = "yes" if value else "no"
            elif isinstance(value, dict):
                shown = ", ".join(f"{name} {part}" for name, part in value.items())
            else:
                shown = f"{value:,}" if isinstance(value, int) else str(value)
            table.add_row(label, shown)
    console.print(table)
    targets = Table(title="Targets (issue 9)", title_justify="left")
    for column in ("target", "measured", "wanted", "met"):
        targets.add_column(column)
    for row in verdicts(figures):
        targets.add_row(*row)
    console.print(targets)
    titles = {
        "ingest": "when events start to land",
        "late": "from half the events (or half the budget) on",
        "tail": "after the last event landed, until the KPIs are final",
    }
    for window, profile in profiles.items():
        if not profile.get("main_top_inclusive"):
            continue
        spy = Table(
            title=(
                f"Worker main thread {titles[window]} (py-spy, {profile['ticks']:,} samples "
                f"at 100 Hz; share of wall time; {profile['file']})"
            ),
            title_justify="left",
        )
        spy.add_column("frame")
        spy.add_column("self", justify="right")
        spy.add_column("incl.", justify="right")
        for frame, own, incl in profile["main_top_inclusive"][:18]:
            spy.add_row(frame, f"{own:.1%}", f"{incl:.1%}")
        console.print(spy)
        packages = ", ".join(f"{p} {s:.1%}" for p, s in profile["main_by_package"])
        console.print(f"self time by package (main thread): {packages}")
        threads = ", ".join(f"{t} {s:.0%}" for t, s in profile["threads_busy"].items())
        console.print(f"busy share per thread: {threads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events preloaded")
    parser.add_argument("--rate", type=int, default=10_000, help="freshness: events/s")
    parser.add_argument("--fresh-seconds", type=int, default=30)
    parser.add_argument("--naive-seconds", type=int, default=60, help="baseline's window")
    parser.add_argument(
        "--distinct", type=int, default=None, help="customers of the memory run (= --events)"
    )
    parser.add_argument("--http-seconds", type=int, default=30, help="0 skips bench_http")
    parser.add_argument(
        "--drain-budget", type=float, default=1200.0, help="s; then the rate of what landed"
    )
    parser.add_argument(
        "--fresh-wait", type=float, default=120.0, help="s to wait for the last probes/alerts"
    )
    parser.add_argument(
        "--memory-budget", type=float, default=600.0, help="s of the distinct-customer run"
    )
    parser.add_argument("--profile-seconds", type=int, default=60, help="py-spy's window")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy during the drain")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    parser.add_argument(
        "--processes", type=int, default=0, help="worker processes (0: STREAMS__PROCESSES' auto)"
    )
    parser.add_argument(
        "--outcome-cache",
        type=int,
        default=None,
        help="STREAMS__OUTCOME_CACHE_ENTRIES of the worker (default: the setting's default)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (preload always runs)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    phases = frozenset(p.strip() for p in args.phases.split(",") if p.strip())
    if unknown := phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    options = Options(
        events=args.events,
        rate=args.rate,
        fresh_seconds=args.fresh_seconds,
        naive_seconds=args.naive_seconds,
        distinct=args.events if args.distinct is None else args.distinct,
        http_seconds=args.http_seconds,
        profile=not args.no_profile,
        keep=args.keep,
        drain_budget=args.drain_budget,
        fresh_wait=args.fresh_wait,
        memory_budget=args.memory_budget,
        profile_seconds=args.profile_seconds,
        phases=phases,
        processes=args.processes,
        outcome_cache=args.outcome_cache,
    )
    console = Console()
    figures: dict[str, Any] = {"machine": machine()}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bench = Bench(options, console, progress)
        try:
            asyncio.run(bench.run())
        finally:
            figures.update(bench.figures)
            bench.close()
    if options.http_seconds and "http" in options.phases:
        figures.update(run_http_bench(console, options.http_seconds, options.rate))
    figures["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    figures["options"] = {**options.__dict__, "phases": sorted(options.phases)}
    for window, profile in bench.profiles.items():
        figures[f"worker_profile_{window}"] = profile
    report(console, figures, bench.profiles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    chart = args.out.with_name(f"{args.out.stem}-cpu.svg")
    chart.write_text(cpu_chart(figures))
    console.print(f"written to {args.out} and {chart} (CPU per event, a chart)")


if __name__ == "__main__":
    main()
