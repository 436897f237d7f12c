"""The baseline of the benchmark: a naive Faust agent that takes one raw event at a
time, validates it (the same pydantic models and PII pseudonymisation as the real
worker) and writes it as one row to ClickHouse with a synchronous INSERT. No
batching, no KPIs: what one would write first. Run as a child process by
``tests.perf.bench`` (settings from the TOUCHSTREAM_* environment):

    python -m tests.perf.naive_worker --clickhouse DIR --report FILE

It owns its own embedded ClickHouse (chDB allows one engine directory per process)
and rewrites FILE every 0.5 s with ``{"rows", "rejected", "first_at", "last_at"}``
(epoch seconds of the first and latest row written), which the bench reads.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
import faust

from touchstream.schemas.events import utcnow
from touchstream.schemas.parse import Invalid, parse_event, parse_object
from touchstream.schemas.pii import Pseudonymiser
from touchstream.settings import Settings, load_settings
from touchstream.sinks.migrate import migrate
from touchstream.sinks.rows import EVENT_COLUMNS, event_row


def create_naive_app(settings: Settings, client: Any, report: Path) -> faust.App:
    database = settings.clickhouse.database
    bootstrap = settings.kafka.bootstrap_servers
    assert bootstrap, "the bench passes the broker's address"
    app = faust.App(
        settings.streams.app_id + "-naive",
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / f"{settings.streams.app_id}-naive-data"),
        autodiscover=False,
        topic_partitions=settings.kafka.partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    raw_in = app.topic(
        settings.topic("clickstream"),
        settings.topic("orders"),
        settings.topic("feedback"),
        key_serializer="raw",
        value_serializer="raw",
    )
    pii = Pseudonymiser(settings.pii_key_bytes())
    # Resolved once (clickhouse-connect would otherwise DESCRIBE the table per insert).
    context = client.create_insert_context("events", list(EVENT_COLUMNS), database=database)
    counts: dict[str, Any] = {"rows": 0, "rejected": 0, "first_at": None, "last_at": None}

    @app.agent(raw_in, name="naive.events")
    async def naive(stream: faust.StreamT) -> None:
        async for value in stream:  # one event at a time
            event = parse_event(value)
            if not isinstance(event, Invalid) and event.properties.model_extra:
                data, found = pii.event(event.wire())
                event = parse_object(data) if found else event
            if isinstance(event, Invalid):
                counts["rejected"] += 1
                continue
            event = event.model_copy(update={"received_at": utcnow()})
            context.data = [event_row(event.model_dump_json(exclude_none=True).encode())]
            client.insert(context=context)  # one row, synchronously
            counts["rows"] += 1
            counts["last_at"] = time.time()
            if counts["first_at"] is None:
                counts["first_at"] = counts["last_at"]

    @app.timer(0.5, name="naive.report")
    async def write_report() -> None:
        partial = report.with_suffix(".tmp")
        partial.write_text(json.dumps(counts))
        os.replace(partial, report)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clickhouse", type=Path, required=True, help="its own chDB directory")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    settings = load_settings()
    client = clickhouse_connect.get_client(dsn=f"chdb://{args.clickhouse.resolve()}")
    migrate(client, settings.clickhouse.database)
    app = create_naive_app(settings, client, args.report)
    faust.Worker(
        app, loglevel="warning", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
