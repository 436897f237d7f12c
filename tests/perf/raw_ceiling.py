"""The ceiling of the benchmark: plain aiokafka consuming the raw topics and decoding
every value with json.loads, nothing else. Run as a child process by
``tests.perf.bench`` (settings from the TOUCHSTREAM_* environment); prints one JSON
line ``{"result": {...}}``.

    python -m tests.perf.raw_ceiling --records 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from touchstream.settings import load_settings


async def consume(records: int, timeout_s: float) -> dict[str, Any]:
    settings = load_settings()
    kafka = settings.kafka
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id="touchstream-bench-raw",
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **kafka.consumer_kwargs(),
    )
    started = time.perf_counter()
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in settings.raw_topics().values()
            for p in range(kafka.partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        read = decoded_bytes = 0
        first = None
        deadline = time.monotonic() + timeout_s
        while read < records and time.monotonic() < deadline:
            polled = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for batch in polled.values():
                for record in batch:
                    json.loads(record.value)
                    decoded_bytes += len(record.value)
                read += len(batch)
            if first is None and read:
                first = time.perf_counter()
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {
        "records": read,
        "bytes": decoded_bytes,
        "seconds": round(elapsed, 3),
        "eps": round(read / elapsed),
        "complete": read >= records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    result = asyncio.run(consume(args.records, args.timeout))
    sys.stdout.write(json.dumps({"result": result}) + "\n")


if __name__ == "__main__":
    main()
