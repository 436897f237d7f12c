"""The local stack: broker (unless one is configured), the stream worker (a process,
and its own processes: STREAMS__PROCESSES), the ClickHouse sink and /metrics in this
process. Used by `up`, `demo` and tests.

This is the only place, with the CLI, that wires the stages together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from touchstream.chhttp import EngineHTTP
from touchstream.kafka_admin import ensure_topics
from touchstream.localbroker import LocalBroker, die_with_parent
from touchstream.settings import Settings
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks.clickhouse import ROLES, ClickHouseSink, default_routes
from touchstream.sinks.client import connect
from touchstream.sinks.migrate import migrate
from touchstream.sinks.runner import SinkRunner
from touchstream.streams.processes import worker_processes

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A part of the stack failed; the message names it and points at its log."""


@dataclass
class RuntimeInfo:
    """What a running stack publishes in <data_dir>/run/stack.json for other commands."""

    pid: int
    bootstrap_servers: str
    metrics_port: int
    worker_metrics_port: int
    embedded_clickhouse: bool
    http_port: int = 0
    worker_processes: int = 1

    @staticmethod
    def path(settings: Settings) -> Path:
        return settings.data_dir / "run" / "stack.json"

    @classmethod
    def read(cls, settings: Settings) -> RuntimeInfo | None:
        """The running stack of this data dir, or None (a stale file is ignored)."""
        try:
            info = cls(**json.loads(cls.path(settings).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return info


@dataclass
class Stack:
    settings: Settings
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    broker: LocalBroker | None = None
    worker: subprocess.Popen[bytes] | None = None
    sink_runner: SinkRunner | None = None
    sink_task: asyncio.Task[None] | None = None
    metrics_port: int = 0
    http: EngineHTTP | None = None
    http_port: int = 0
    with_pipeline: bool = True  # False: `serve` (the engine's HTTP interface only)

    @property
    def logs(self) -> Path:
        return self.settings.data_dir / "logs"

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.with_pipeline:
            await self._migrate()
            await self._start_http()
            self._publish()
            return
        # Emitters and workers of this stack pseudonymise PII with the same key.
        self.settings.ensure_local_pii_key()
        if self.settings.local_broker:
            self.broker = LocalBroker(
                port=self.settings.kafka.local_port, log_path=self.logs / "broker.log"
            )
            # From this (main) thread: PR_SET_PDEATHSIG fires when the creating
            # *thread* exits, so a pool thread would take the broker down with it.
            bootstrap = self.broker.start()
            self.settings = self.settings.with_bootstrap(bootstrap)
        await ensure_topics(self.settings)
        await self._migrate()
        self._start_metrics()
        self._start_worker()
        self._start_sink()
        await self._start_http()
        self._publish()

    async def _migrate(self) -> None:
        client = await asyncio.to_thread(connect, self.settings)
        try:
            await asyncio.to_thread(migrate, client, self.settings.clickhouse.database)
        finally:
            client.close()

    async def _start_http(self) -> None:
        """The owner of the embedded engine serves ClickHouse's HTTP interface, and
        the CX page on it (/ui)."""
        if not self.settings.embedded_clickhouse:
            return
        live = self.live_status if self.with_pipeline else None
        self.http = EngineHTTP(self.settings, lambda: connect(self.settings), live=live)
        self.http_port = await self.http.start()

    async def live_status(self) -> dict[str, Any]:
        """What the CX page shows of this process: the sink's consumer lag (its
        metric: records not landed yet), rows buffered, and whether the worker runs."""
        lag_metric = f"{self.settings.metrics.namespace}_sink_consumer_lag"
        lag = None
        for metric in self.registry.collect():
            if metric.name == lag_metric and metric.samples:
                lag = sum(sample.value for sample in metric.samples)
        runner = self.sink_runner
        return {
            "sink_lag": lag,
            "sink_buffered": runner.sink.buffered if runner is not None else None,
            "worker_running": self.worker is not None and self.worker.poll() is None,
            "worker_metrics_port": self.settings.metrics.worker_port,
            "worker_processes": self.worker_process_count,
        }

    @functools.cached_property
    def worker_process_count(self) -> int:
        """The processes the worker runs, as `touchstream worker` works it out (once:
        the CX page asks at every poll, and it reads the cgroup's CPU quota)."""
        return worker_processes(self.settings)

    def _start_metrics(self) -> None:
        metrics = self.settings.metrics
        if not metrics.enabled:
            return
        server, _ = start_http_server(metrics.port, metrics.host, self.registry)
        self.metrics_port = int(server.server_port)
        self._metrics_server = server

    def _start_worker(self) -> None:
        self.worker = self.spawn_worker()

    def spawn_worker(self, log_name: str = "worker.log") -> subprocess.Popen[bytes]:
        """A stream worker of this stack's consumer group (more of them share the
        partitions; each may run several processes); it dies with this process."""
        env = {**os.environ, **self.settings.as_env()}
        log_file = open(self.logs / log_name, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "touchstream.cli", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        finally:
            log_file.close()

    def kill_worker(self, restart: bool = True) -> None:
        """SIGKILL the stream worker, all of its processes, mid-whatever, and start a
        new one (fault injection: nothing is flushed, committed or said goodbye to)."""
        if self.worker is not None and self.worker.poll() is None:
            _kill_group(self.worker)
            self.worker.wait(timeout=10)
        if restart:
            self._start_worker()

    def _start_sink(self) -> None:
        metrics = sink_metrics.create(self.registry, self.settings.metrics.namespace)
        topics = {role: self.settings.topic(role) for role in ROLES}
        sink = ClickHouseSink(
            lambda: connect(self.settings),
            self.settings.clickhouse.database,
            default_routes(topics),
            metrics,
            max_buffered=self.settings.sink.max_buffered,
        )
        self.sink_runner = SinkRunner(self.settings, sink, list(topics.values()), metrics)
        self.sink_task = asyncio.create_task(self.sink_runner.run(), name="touchstream-sink")

    def _publish(self) -> None:
        info = RuntimeInfo(
            pid=os.getpid(),
            bootstrap_servers=self.settings.kafka.bootstrap_servers or "",
            metrics_port=self.metrics_port,
            worker_metrics_port=self.settings.metrics.worker_port,
            worker_processes=self.worker_process_count,
            embedded_clickhouse=self.settings.embedded_clickhouse,
            http_port=self.http_port,
        )
        path = RuntimeInfo.path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info.__dict__))

    def check(self) -> None:
        """Raise StackError when a part has died."""
        if self.worker is not None and self.worker.poll() is not None:
            raise StackError(
                f"the stream worker exited with code {self.worker.returncode}; "
                f"see {self.logs / 'worker.log'}"
            )
        if self.sink_task is not None and self.sink_task.done():
            exc = self.sink_task.exception()
            raise StackError(f"the ClickHouse sink stopped: {exc!r}")
        if self.broker is not None and not self.broker.running():
            raise StackError(f"the local broker died; see {self.logs / 'broker.log'}")

    async def watch(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        """Run until ``stop`` is set, raising StackError as soon as a part dies."""
        while not stop.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def stop(self) -> None:
        """Stop in dependency order: sink (final flush), worker, broker.

        Everything is stopped even when a part failed; that failure is raised last.
        """
        with contextlib.suppress(OSError):
            RuntimeInfo.path(self.settings).unlink()
        failure: BaseException | None = None
        if self.http is not None:
            await self.http.stop()
        if self.sink_runner is not None and self.sink_task is not None:
            self.sink_runner.stop()
            try:
                await asyncio.wait_for(self.sink_task, 30)
            except Exception as exc:  # re-raised below, after the rest has stopped
                failure = exc
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.worker.wait, 20)
            except subprocess.TimeoutExpired:
                _kill_group(self.worker)
                await asyncio.to_thread(self.worker.wait, 5)
        server: Any = getattr(self, "_metrics_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if failure is not None:
            raise StackError(f"the ClickHouse sink failed: {failure!r}") from failure


def connect_running(settings: Settings, info: RuntimeInfo, writer: bool = False) -> Any:
    """A clickhouse-connect HTTP client to a running stack's engine: as the BI user
    (read-only), or as the writer."""
    import clickhouse_connect

    ch = settings.clickhouse
    user, password = (ch.username, ch.password) if writer else (ch.bi_user, ch.bi_password)
    host = ch.serve_host if ch.serve_host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    return clickhouse_connect.get_client(
        host=host,
        port=info.http_port,
        username=user,
        password=password.get_secret_value(),
        database=ch.database,
        autogenerate_session_id=False,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and the processes it started (its own session's group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.kill()
