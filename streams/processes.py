"""How many processes ``touchstream worker`` runs, and the supervisor that runs them
as one unit (STREAMS__PROCESSES). Light: the local stack imports it too."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from touchstream.localbroker import die_with_parent
from touchstream.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # a process still running this long after SIGTERM is killed
EXIT_CHILD_ENDED = 70  # a process ended with 0 on its own: not a clean stop either
CGROUP = Path("/sys/fs/cgroup")
LOOPBACK = "127.0.0.1"  # where the processes serve /metrics to their supervisor


def available_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on: its affinity, lowered by a cgroup CPU quota (a
    container's ``--cpus`` or a pod's CPU limit; v2 ``cpu.max``, or v1's CFS files)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota(cgroup: Path) -> float | None:
    """The CPU quota in CPUs, or None when there is none (or no cgroup to read)."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (cgroup / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


def worker_processes(settings: Settings, cpus: int | None = None) -> int:
    """How many processes ``touchstream worker`` runs: the setting, or (0) one per
    available CPU, at most one per partition of the created topics (a process more
    would get no partition of a stage)."""
    if settings.streams.processes:
        return settings.streams.processes
    return max(1, min(available_cpus() if cpus is None else cpus, settings.kafka.partitions))


def child_env(settings: Settings, index: int, metrics_port: int = 0) -> dict[str, str]:
    """Process ``index``'s environment: one process, its /metrics on ``metrics_port``
    on the loopback (the supervisor serves them all on the configured port), and
    Faust's web port, when on, at the configured one + index."""
    env = {**os.environ, **settings.as_env(), "TOUCHSTREAM_STREAMS__PROCESSES": "1"}
    env["TOUCHSTREAM_METRICS__HOST"] = LOOPBACK
    env["TOUCHSTREAM_METRICS__WORKER_PORT"] = str(metrics_port)
    if port := settings.streams.web_port:
        env["TOUCHSTREAM_STREAMS__WEB_PORT"] = str(port + index)
    return env


class ProcessMetrics:
    """The worker's /metrics when it runs several processes: every process's metrics,
    fetched at each scrape from its loopback port, each sample labelled with its
    ``process`` index (families merged by name), and ``<ns>_worker_process_up``
    per process. One scrape target per worker, however many processes it runs;
    sums over the worker's series (the alert rules, the dashboard) are unchanged."""

    def __init__(self, ports: Sequence[int], namespace: str, timeout_s: float = 2.0) -> None:
        self.ports = list(ports)
        self.namespace = namespace
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            f"{self.namespace}_worker_process_up",
            "1 if the worker process answered this scrape",
            labels=["process"],
        )
        for index, port in enumerate(self.ports):
            url = f"http://{LOOPBACK}:{port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as response:  # noqa: S310 - our loopback
                    text = response.read().decode()
            except OSError:
                up.add_metric([str(index)], 0)
                continue
            up.add_metric([str(index)], 1)
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name,
                    Metric(family.name, family.documentation, family.type, family.unit),
                )
                for sample in family.samples:
                    merged.add_sample(
                        sample.name,
                        {**sample.labels, "process": str(index)},
                        sample.value,
                        sample.timestamp,
                        sample.exemplar,
                    )
        yield from families.values()
        yield up


def supervise(
    children: Sequence[tuple[list[str], dict[str, str]]],
    grace_s: float = STOP_GRACE_S,
    poll_s: float = 0.2,
    on_start: Callable[[list[subprocess.Popen[bytes]]], None] | None = None,
) -> int:
    """Start the child processes and wait for them; returns the exit code.

    The worker is one unit to whoever runs it. SIGTERM/SIGINT are passed on to every
    child (exit 0 when they all stop cleanly). When one ends on its own (a crash, or
    exit 70: an output not acknowledged), the others are stopped and its code is
    the supervisor's (70 if it was 0), so the orchestrator restarts the whole worker
    and every process resumes from its checkpoints. A child still running
    ``grace_s`` after SIGTERM is killed. Children get SIGTERM if the supervisor dies;
    they share its process group (kill the group to kill them all at once)."""
    procs: list[subprocess.Popen[bytes]] = []
    stopping_since: float | None = None
    signalled = False
    failed: subprocess.Popen[bytes] | None = None

    def stop() -> None:
        nonlocal stopping_since
        if stopping_since is None:
            stopping_since = time.monotonic()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signalled
        signalled = True
        log.info("worker: signal %d, stopping %d processes", signum, len(procs))
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for command, env in children:
            if signalled:  # stopped while starting: start no more
                break
            procs.append(
                subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    command, env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
                )
            )
        log.info("worker: %d processes: %s", len(procs), ", ".join(str(p.pid) for p in procs))
        if on_start is not None:
            on_start(procs)
        while [proc.poll() for proc in procs].count(None):  # every one looked at
            if failed is None and not signalled:
                failed = next((p for p in procs if p.returncode is not None), None)
                if failed is not None:
                    log.error(
                        "worker: process %d ended (code %d); stopping the others",
                        failed.pid,
                        failed.returncode,
                    )
                    stop()
            if stopping_since is not None and time.monotonic() - stopping_since > grace_s:
                for proc in procs:
                    if proc.poll() is None:
                        log.error("worker: process %d ignored SIGTERM; killing it", proc.pid)
                        proc.kill()
            time.sleep(poll_s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is None and not signalled:  # they all ended between two looks
        failed = next((p for p in procs if p.returncode), procs[0] if procs else None)
    if failed is not None:
        code = failed.returncode or EXIT_CHILD_ENDED
    else:  # a clean stop, unless a child failed on its way out
        code = next((p.returncode for p in procs if p.returncode not in (0, -signal.SIGTERM)), 0)
    return code if code >= 0 else 128 - code
