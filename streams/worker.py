"""Run the stream worker (``touchstream worker``): in this process, or as several
processes of one consumer group under a supervisor (streams.processes)."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, start_http_server

from touchstream.localbroker import free_port
from touchstream.runtime import tune_gc
from touchstream.settings import Settings
from touchstream.streams.processes import (
    LOOPBACK,
    ProcessMetrics,
    child_env,
    supervise,
    worker_processes,
)


def run(settings: Settings, processes: int | None = None) -> int:
    """``touchstream worker``: one worker in this process, or a supervisor of
    ``processes`` (default: :func:`worker_processes`). Returns the exit code (a
    single worker exits the process itself)."""
    processes = worker_processes(settings) if processes is None else processes
    if processes == 1:
        run_worker(settings)
        return 0
    command = [sys.executable, "-m", "touchstream.cli", "worker"]
    ports = [0] * processes
    if settings.metrics.enabled:
        # The worker's /metrics: its processes', each on a loopback port of its own.
        ports = []
        while len(ports) < processes:
            if (port := free_port(LOOPBACK)) not in ports:
                ports.append(port)
        registry = CollectorRegistry()
        registry.register(ProcessMetrics(ports, settings.metrics.namespace))
        start_http_server(settings.metrics.worker_port, settings.metrics.host, registry)
    return supervise([(command, child_env(settings, i, ports[i])) for i in range(processes)])


def run_worker(settings: Settings) -> None:
    """Blocks until SIGTERM/SIGINT; exits the process (Faust's worker owns the loop)."""
    # Imported here: a supervisor of several processes needs none of it, and it
    # took ~0.9 s before the supervisor started them.
    import faust

    from touchstream.streams.app import create_app

    registry = CollectorRegistry()
    if settings.metrics.enabled:
        start_http_server(settings.metrics.worker_port, settings.metrics.host, registry)
    app = create_app(settings, registry)
    # Faust creates its data directory but not the parents (under our data dir).
    app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    tune_gc()
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    )
    worker.execute_from_commandline()
