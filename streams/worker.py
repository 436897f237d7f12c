"""Run the stream worker in this process (``touchstream worker``)."""

from __future__ import annotations

import faust
from prometheus_client import CollectorRegistry, start_http_server

from touchstream.settings import Settings
from touchstream.streams.app import create_app


def run_worker(settings: Settings) -> None:
    """Blocks until SIGTERM/SIGINT; exits the process (Faust's worker owns the loop)."""
    registry = CollectorRegistry()
    if settings.metrics.enabled:
        start_http_server(settings.metrics.worker_port, settings.metrics.host, registry)
    app = create_app(settings, registry)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    )
    worker.execute_from_commandline()
