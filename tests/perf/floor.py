"""The floor of the benchmark: what any pipeline under Touchstream's contract does per
event, and nothing else. Each raw message is validated against the event schemas
(the pydantic union ingest uses), forwarded with ``received_at`` to the events
topic (the same record batches, lz4 and flush before commit as the worker's
outputs), and landed in ClickHouse by the real sink. No dedup, lateness, PII step,
KPI, outcome, alert or checkpoint: the drain's rate against this one is what the
stream logic costs, and this one against the raw ceiling is what the contract's
path costs on this machine before any of it (README "Performance").

Run by ``tests.perf.bench`` (settings from the TOUCHSTREAM_* environment) as the
stack's worker: ``--processes`` children in one consumer group, like the worker's.

    python -m tests.perf.floor --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiokafka import AIOKafkaConsumer

from touchstream.schemas.events import utcnow
from touchstream.schemas.parse import Invalid, parse_event
from touchstream.settings import Settings, load_settings
from touchstream.streams.ingest import forwarded
from touchstream.streams.intake import group_consumer_kwargs
from touchstream.streams.outputs import Outputs
from touchstream.streams.processes import supervise


class ForwardFailed(RuntimeError):
    """A raw message the floor cannot forward: the preload is clean, so the floor
    has no dead-letter path and says which message instead."""


async def forward(settings: Settings, stop: asyncio.Event) -> int:
    """Until ``stop``: raw batches validated and forwarded, flushed, then committed.
    Returns the events forwarded."""
    streams = settings.streams
    # As the worker's ingest consumer: the same session, fetch sizes and assignment.
    consumer = AIOKafkaConsumer(
        *settings.raw_topics().values(),
        client_id=f"{streams.app_id}-floor",
        group_id=f"{streams.app_id}.floor",
        **group_consumer_kwargs(settings),
    )
    outputs = Outputs(settings)
    events_topic = settings.topic("events")
    forwarded_count = 0
    committing: asyncio.Future[None] | None = None
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(
                timeout_ms=int(streams.batch_interval_s * 1000), max_records=streams.batch_size
            )
            if not fetched:
                continue
            now = utcnow()
            records: list[tuple[bytes, bytes, int]] = []
            for tp, batch in fetched.items():
                for record in batch:
                    event = parse_event(record.value, streams.max_event_bytes)
                    if isinstance(event, Invalid):
                        where = f"{tp.topic}:{tp.partition}@{record.offset}"
                        raise ForwardFailed(f"{where}: {event.describe()}")
                    body = forwarded(event, now, late=False)
                    records.append((event.identity.encode(), body, tp.partition))
            await outputs.send_many(events_topic, records)
            await outputs.flush()
            # As ingest: the commit runs while the next batch is fetched, one at a time.
            offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items()}
            if committing is not None:
                await committing
            committing = asyncio.ensure_future(consumer.commit(offsets))
            forwarded_count += len(records)
        if committing is not None:
            await committing
    finally:
        await consumer.stop()
        await outputs.stop()
    return forwarded_count


def run_child() -> None:
    settings = load_settings()
    stop = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        count = await forward(settings, stop)
        sys.stderr.write(f"floor: forwarded {count} events\n")

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child()
        return
    command = [sys.executable, "-m", "tests.perf.floor", "--child"]
    sys.exit(supervise([(command, dict(os.environ)) for _ in range(args.processes)]))


if __name__ == "__main__":
    main()
