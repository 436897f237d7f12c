"""How many processes `touchstream worker` runs, and its supervisor (real child
processes: small Python scripts standing in for workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.parser import text_string_to_metric_families

from touchstream.localbroker import free_port
from touchstream.settings import load_settings
from touchstream.streams.processes import (
    EXIT_CHILD_ENDED,
    ProcessMetrics,
    available_cpus,
    child_env,
    supervise,
    worker_processes,
)

BASE = {"TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}


def settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings({**BASE, **{f"TOUCHSTREAM_{k}": v for k, v in env.items()}})


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_supervisor_does_not_import_faust_or_the_app() -> None:
    # It starts the processes that run them: importing them first cost ~0.9 s of
    # every worker start.
    probe = (
        "import sys, touchstream.streams.worker, touchstream.cli; "
        "print(sorted(m for m in sys.modules if m == 'faust' or m.startswith('faust.') "
        "or m == 'touchstream.streams.app'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_cpus_are_the_affinity_without_a_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(cgroup(tmp_path, {"cpu.max": "max 100000\n"})) == affinity
    assert available_cpus(tmp_path / "none") == affinity


def test_a_cgroup_quota_lowers_the_cpus_rounded_up(tmp_path: Path) -> None:
    # A container given 0.5 CPU still runs one process; 1.5 CPUs run two.
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(cgroup(tmp_path / "a", {"cpu.max": "50000 100000\n"})) == 1
    v1 = {"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert available_cpus(cgroup(tmp_path / "b", v1)) == min(affinity, 2)
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert available_cpus(cgroup(tmp_path / "c", unlimited)) == affinity


def test_processes_are_the_setting_or_one_per_cpu_at_most_one_per_partition() -> None:
    assert worker_processes(settings(STREAMS__PROCESSES="3"), cpus=8) == 3
    assert worker_processes(settings(STREAMS__PROCESSES="1"), cpus=8) == 1
    assert worker_processes(settings(KAFKA__PARTITIONS="12"), cpus=2) == 2
    assert worker_processes(settings(KAFKA__PARTITIONS="4"), cpus=16) == 4
    assert worker_processes(settings(), cpus=1) == 1


def test_each_process_runs_alone_with_metrics_on_the_loopback_for_the_supervisor() -> None:
    base = settings(METRICS__HOST="0.0.0.0", METRICS__WORKER_PORT="9465", STREAMS__WEB_PORT="6066")  # noqa: S104
    env = child_env(base, 2, metrics_port=40123)
    assert env["TOUCHSTREAM_STREAMS__PROCESSES"] == "1"
    assert env["TOUCHSTREAM_METRICS__HOST"] == "127.0.0.1"
    assert env["TOUCHSTREAM_METRICS__WORKER_PORT"] == "40123"
    assert env["TOUCHSTREAM_STREAMS__WEB_PORT"] == "6068"  # Faust's web: port + index
    assert env["TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:9"
    assert child_env(settings(), 1)["TOUCHSTREAM_STREAMS__WEB_PORT"] == "0"  # stays off


def serve(registry: CollectorRegistry) -> tuple[Any, int]:
    server, _ = start_http_server(0, "127.0.0.1", registry)
    return server, int(server.server_port)


def test_the_workers_metrics_are_its_processes_labelled_with_their_index() -> None:
    servers, ports = [], []
    for index in range(2):
        registry = CollectorRegistry()
        Counter("messages", "in", ["topic"], namespace="ts", registry=registry).labels("a").inc(
            index + 1
        )
        Gauge("worker_up", "up", namespace="ts", registry=registry).set(1)
        Histogram("batch_seconds", "s", namespace="ts", registry=registry, buckets=[1]).observe(
            0.7 * (index + 1)
        )
        server, port = serve(registry)
        servers.append(server)
        ports.append(port)
    down = free_port()  # a process that does not answer (starting, or gone)
    try:
        registry = CollectorRegistry()
        registry.register(ProcessMetrics([*ports, down], "ts", timeout_s=1))
        text = generate_latest(registry).decode()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    # One family per name (Prometheus refuses a second TYPE line), a series per process.
    assert text.count("# TYPE ts_messages_total counter") == 1
    assert text.count("# TYPE ts_batch_seconds histogram") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    values = {
        (s.name, s.labels.get("process"), s.labels.get("le")): s.value
        for f in families.values()
        for s in f.samples
    }
    assert values[("ts_messages_total", "0", None)] == 1
    assert values[("ts_messages_total", "1", None)] == 2
    assert values[("ts_worker_up", "1", None)] == 1
    assert values[("ts_batch_seconds_bucket", "0", "1.0")] == 1
    assert values[("ts_batch_seconds_bucket", "1", "1.0")] == 0
    assert values[("ts_batch_seconds_sum", "1", None)] == 1.4
    up = {s.labels["process"]: s.value for s in families["ts_worker_process_up"].samples}
    assert up == {"0": 1, "1": 1, "2": 0}
    labels = {s.labels.get("topic") for s in families["ts_messages"].samples}
    assert labels == {"a"}  # the processes' own labels kept


def script(code: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-c", code], dict(os.environ)


SLEEPER = script("import time; time.sleep(60)")


class Clean:
    """Children that stop cleanly on SIGTERM, as the Faust worker does, and say when
    their handler is set (a signal before that would kill them: not the point)."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.made: list[Path] = []

    def __call__(self) -> tuple[list[str], dict[str, str]]:
        ready = self.dir / f"ready-{len(self.made)}"
        self.made.append(ready)
        return script(
            "import pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            f"pathlib.Path({str(ready)!r}).touch()\n"
            "time.sleep(60)"
        )

    def wait(self) -> None:
        deadline = time.monotonic() + 30
        while not all(path.exists() for path in self.made):
            assert time.monotonic() < deadline, "the children never started"
            time.sleep(0.02)


@pytest.fixture
def clean(tmp_path: Path) -> Clean:
    return Clean(tmp_path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_process_that_fails_stops_the_others_and_its_code_is_the_workers(
    clean: Clean,
) -> None:
    started: list[subprocess.Popen[bytes]] = []
    ready = clean.dir / "ready-0"  # the first child's: it is running, then this fails
    failing = script(
        "import pathlib, sys, time\n"
        f"while not pathlib.Path({str(ready)!r}).exists(): time.sleep(0.02)\n"
        "sys.exit(3)"
    )
    t0 = time.monotonic()
    code = supervise([clean(), failing, SLEEPER], poll_s=0.05, on_start=started.extend)
    assert code == 3
    assert time.monotonic() - t0 < 10  # not the sleepers' 60 s
    assert [p.returncode for p in started] == [0, 3, -signal.SIGTERM]


def test_a_process_ending_with_0_on_its_own_is_not_a_clean_stop(clean: Clean) -> None:
    code = supervise([clean(), script("pass")], poll_s=0.05)
    assert code == EXIT_CHILD_ENDED


def test_a_killed_process_gives_128_plus_the_signal(clean: Clean) -> None:
    code = supervise([clean(), script("import os; os.kill(os.getpid(), 9)")], poll_s=0.05)
    assert code == 128 + signal.SIGKILL


def test_sigterm_is_passed_on_and_a_clean_stop_exits_0(clean: Clean) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def terminate_me(procs: list[subprocess.Popen[bytes]]) -> None:
        started.extend(procs)
        clean.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # what the orchestrator sends

    before = signal.getsignal(signal.SIGTERM)
    children = [clean(), clean(), SLEEPER]
    assert supervise(children, poll_s=0.05, on_start=terminate_me) == 0
    assert [p.returncode for p in started] == [0, 0, -signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(clean: Clean) -> None:
    ready = clean.dir / "stubborn"
    stubborn = script(
        "import pathlib, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)"
    )
    clean.made.append(ready)
    started: list[subprocess.Popen[bytes]] = []

    def terminate_me(procs: list[subprocess.Popen[bytes]]) -> None:
        started.extend(procs)
        clean.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    t0 = time.monotonic()
    code = supervise([clean(), stubborn], grace_s=0.5, poll_s=0.05, on_start=terminate_me)
    assert time.monotonic() - t0 < 10
    assert code == 128 + signal.SIGKILL  # not a clean stop: it had to be killed
    assert not any(alive(p.pid) for p in started)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_both_stop_signals_stop_every_process(sig: int, clean: Clean) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def signal_me(procs: list[subprocess.Popen[bytes]]) -> None:
        started.extend(procs)
        clean.wait()
        os.kill(os.getpid(), sig)

    assert supervise([clean(), clean()], poll_s=0.05, on_start=signal_me) == 0
    assert [p.returncode for p in started] == [0, 0]
