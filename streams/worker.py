"""Run the stream worker in this process (``touchstream worker``)."""

from __future__ import annotations

import gc

import faust
from prometheus_client import CollectorRegistry, start_http_server

from touchstream.settings import Settings
from touchstream.streams.app import create_app

GC_GEN0_THRESHOLD = 100_000  # allocations between young collections (default 700)


def tune_gc() -> None:
    """The cyclic GC costs more than validation itself when a batch holds thousands
    of live models (docs/design/streams.md): move what start-up built out of its
    reach and collect the young generation far less often."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


def run_worker(settings: Settings) -> None:
    """Blocks until SIGTERM/SIGINT; exits the process (Faust's worker owns the loop)."""
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
