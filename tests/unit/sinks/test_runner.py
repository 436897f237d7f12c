"""The sink's Kafka loop with a stand-in consumer: what a commit refused after a
rebalance does (the broker's part is tests/integration/test_sink_runner.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry

from touchstream.settings import load_settings
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks.runner import SinkRunner

TP = TopicPartition("events", 0)


class Landed:
    """A sink whose every flush lands: offsets up to 10 of TP."""

    buffered = 0

    def flush(self) -> dict[tuple[str, int], int]:
        return {(TP.topic, TP.partition): 10}


class Refusing:
    """A consumer whose commits fail as after a rebalance."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        CommitFailedError("the group has already rebalanced"),
        IllegalStateError("not assigned"),
        KafkaError("the coordinator went away"),
    ],
)
def test_a_commit_refused_does_not_stop_the_sink(tmp_path: Path, error: Exception) -> None:
    # A revocation does not wait for a flush under way; the flush's commit then
    # fails on a real cluster. The rows landed: the sink goes on, and counts
    # nothing as committed (its lag stays what the group's offsets say).
    settings = load_settings(
        {
            "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "TOUCHSTREAM_DATA_DIR": str(tmp_path),
        }
    )
    metrics = sink_metrics.create(CollectorRegistry())
    runner = SinkRunner(settings, Landed(), [TP.topic], metrics)  # type: ignore[arg-type]
    consumer: Any = Refusing(error)
    runner._consumer = consumer

    asyncio.run(runner.flush_and_commit())
    assert runner.flushes == 1
    assert runner._landed == {}
