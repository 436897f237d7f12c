from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from tests.conftest import SettingsFactory
from touchstream.streams.intake import Batch, Intake, Pacer, Turns, ahead, source_of

CLICKS = [TopicPartition("clickstream", p) for p in range(3)]
ORDERS = TopicPartition("orders", 0)


def test_partitions_too_far_ahead_of_the_slowest_wait() -> None:
    progress = {
        CLICKS[0]: (1_000.0, False),  # the slowest with records left
        CLICKS[1]: (1_300.0, False),  # exactly the skew ahead: goes on
        CLICKS[2]: (1_301.0, False),
        ORDERS: (9_000.0, False),
    }
    assert ahead(progress, 300) == {CLICKS[2], ORDERS}


def test_a_fully_read_partition_holds_nobody_back_and_is_never_paused_for_nothing() -> None:
    progress = {
        CLICKS[0]: (1_000.0, True),  # read to its end: its time says nothing
        CLICKS[1]: (5_000.0, False),
        ORDERS: (5_200.0, False),
    }
    assert ahead(progress, 300) == set()
    # Everything read: nothing to pause, whatever the times.
    assert ahead({CLICKS[0]: (0.0, True), ORDERS: (9e9, True)}, 300) == set()


def test_a_partition_with_no_event_yet_is_read_first() -> None:
    progress = {CLICKS[0]: (float("-inf"), False), ORDERS: (1_000.0, False)}
    assert ahead(progress, 300) == {ORDERS}


# --- Turns: ingest first when it falls behind ---------------------------------------


@dataclass
class Offset:
    next_offset: int = 0


@dataclass
class Fetched:
    offset: int
    key: bytes | None = None
    value: bytes | None = b"{}"
    timestamp: int = 0


class FakeConsumer:
    """The few consumer calls an intake's loop makes (a unit test's stand-in: the
    loop against a real broker is in the integration tests). ``batches``: what each
    getmany returns, then nothing; ``highwater``: the partition's end, or a
    function of the batches fetched so far."""

    def __init__(self, tp: TopicPartition, batches: list[int], highwater: Any) -> None:
        self.tp = tp
        self.batches = list(batches)
        self.next = 0
        self.fetches = 0
        self._highwater = highwater

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Fetched]]:
        await asyncio.sleep(0)
        if not self.batches:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        count = self.batches.pop(0)
        records = [Fetched(self.next + i) for i in range(count)]
        self.next += count
        self.fetches += 1
        return {self.tp: records}

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def paused(self) -> set[TopicPartition]:
        return set()

    def highwater(self, tp: TopicPartition) -> int:
        end = self._highwater
        return int(end(self.fetches) if callable(end) else end)

    async def commit(self, offsets: Any) -> None:
        return None


def stage(
    name: str,
    consumer: FakeConsumer,
    turns: Turns,
    first: bool,
    log: list[tuple[str, int, float]],
    settings: Any,
) -> Intake[Offset]:
    async def handle(batch: Batch) -> None:
        log.append((name, len(batch.messages), time.monotonic()))
        intake.states[source_of(consumer.tp)].next_offset = batch.messages[-1].offset + 1
        await asyncio.sleep(0.01)  # a flush: the event loop runs the other stages

    intake: Intake[Offset] = Intake(
        settings,
        name,
        [consumer.tp.topic],
        handle,
        "state",
        lambda tp, r: Offset(),
        turns=turns,
        first=first,
    )
    intake._consumer = consumer
    intake.owned = {consumer.tp}
    intake.states[source_of(consumer.tp)] = Offset()
    return intake


def run_stages(
    make_settings: SettingsFactory,
    wait_s: float,
    raw: FakeConsumer,
    kpis: FakeConsumer,
    seconds: float,
) -> tuple[list[tuple[str, int, float]], Turns]:
    """Ingest (first) and a KPI stage on one event loop for ``seconds``, sharing
    turns that wait at most ``wait_s``: (stage, batch size, when) per batch."""
    settings = make_settings(streams={"batch_size": 10, "ingest_first_wait_s": wait_s})
    log: list[tuple[str, int, float]] = []
    turns = Turns(wait_s, behind_records=2)

    async def scenario() -> None:
        stages = [stage("ingest", raw, turns, True, log, settings)]
        stages.append(stage("kpis", kpis, turns, False, log, settings))
        tasks = [asyncio.create_task(s.run()) for s in stages]
        await asyncio.sleep(seconds)
        for s in stages:
            s._stopping.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    return log, turns


def test_the_other_stages_wait_for_ingest_to_catch_up(make_settings: SettingsFactory) -> None:
    raw = FakeConsumer(TopicPartition("raw", 0), [10, 10, 10], highwater=30)
    kpis = FakeConsumer(TopicPartition("kpis", 0), [4], highwater=4)
    log, turns = run_stages(make_settings, 5.0, raw, kpis, 0.5)
    # Behind by 20, then 10 records: the KPI stage's batch (fetched at once) waits
    # until ingest has read all 30.
    assert [(name, n) for name, n, _ in log] == [
        ("ingest", 10),
        ("ingest", 10),
        ("ingest", 10),
        ("kpis", 4),
    ]
    assert turns.first_caught_up


def test_without_a_wait_each_stage_goes_in_turn(make_settings: SettingsFactory) -> None:
    raw = FakeConsumer(TopicPartition("raw", 0), [10, 10, 10], highwater=30)
    kpis = FakeConsumer(TopicPartition("kpis", 0), [4], highwater=4)
    log, _ = run_stages(make_settings, 0.0, raw, kpis, 0.5)
    names = [name for name, _, _ in log]
    assert names.index("kpis") < 3  # not after every ingest batch
    assert names.count("ingest") == 3


def test_a_stage_waits_at_most_its_bound_behind_an_ingest_that_never_catches_up(
    make_settings: SettingsFactory,
) -> None:
    # Always 100 records more than fetched: ingest stays behind for the whole run.
    raw = FakeConsumer(TopicPartition("raw", 0), [10] * 1000, highwater=lambda n: 10 * n + 100)
    kpis = FakeConsumer(TopicPartition("kpis", 0), [4, 4, 4], highwater=12)
    log, turns = run_stages(make_settings, 0.2, raw, kpis, 1.0)
    started = log[0][2]
    kpi_times = [at - started for name, _, at in log if name == "kpis"]
    assert len(kpi_times) == 3  # none starved
    assert 0.15 <= kpi_times[0] <= 0.8  # about the bound after the first ingest batch
    assert not turns.first_caught_up
    ingest_batches = sum(1 for name, _, _ in log if name == "ingest")
    assert ingest_batches > 3 * len(kpi_times)  # ingest ran far more often


def test_a_stopping_stage_does_not_wait_for_its_turn() -> None:
    async def scenario() -> float:
        turns = Turns(30.0, behind_records=2)
        turns.first_behind(100)  # ingest far behind: a turn would take 30 s
        stopping = asyncio.Event()
        started = time.monotonic()
        waiting = asyncio.create_task(turns.wait(stopping))
        await asyncio.sleep(0.05)
        stopping.set()
        await waiting
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0


# --- the cycle: commits in flight, settling before partitions go ---------------------


class SlowCommits(FakeConsumer):
    """Commits that take ``commit_s`` each: when each began and ended, and when
    each batch was fetched."""

    def __init__(self, tp: TopicPartition, batches: list[int], commit_s: float) -> None:
        super().__init__(tp, batches, highwater=sum(batches))
        self.commit_s = commit_s
        self.commits: list[tuple[float, float, Any]] = []
        self.fetched_at: list[float] = []
        self.stopped = False

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Fetched]]:
        fetched = await super().getmany(timeout_ms, max_records)
        if fetched:
            self.fetched_at.append(time.monotonic())
        return fetched

    async def commit(self, offsets: Any) -> None:
        began = time.monotonic()
        await asyncio.sleep(self.commit_s)
        self.commits.append((began, time.monotonic(), dict(offsets)))

    async def stop(self) -> None:
        self.stopped = True


def test_the_next_batch_is_fetched_while_the_last_commit_is_under_way(
    make_settings: SettingsFactory,
) -> None:
    consumer = SlowCommits(TopicPartition("raw", 0), [5, 5, 5], commit_s=0.05)
    settings = make_settings(streams={"batch_size": 10})
    log: list[tuple[str, int, float]] = []

    async def scenario() -> Intake[Offset]:
        intake = stage("ingest", consumer, Turns(0, 1), True, log, settings)
        task = asyncio.create_task(intake.run())
        await asyncio.sleep(0.5)
        await intake.stop()
        await task
        return intake

    asyncio.run(scenario())
    assert [n for _, n, _ in log] == [5, 5, 5]
    # Batch k+1 was fetched before batch k's commit came back: not a round trip more.
    for (_, ended, _), fetched in zip(consumer.commits, consumer.fetched_at[1:], strict=False):
        assert fetched < ended
    # One commit at a time, in order, the last one finished before the consumer stopped.
    assert [offsets for _, _, offsets in consumer.commits] == [
        {consumer.tp: 5},
        {consumer.tp: 10},
        {consumer.tp: 15},
    ]
    for (_, ended, _), (began, _, _) in zip(consumer.commits, consumer.commits[1:], strict=False):
        assert began >= ended
    assert consumer.stopped


def test_settle_runs_before_partitions_are_given_away_and_at_stop(
    make_settings: SettingsFactory,
) -> None:
    consumer = SlowCommits(TopicPartition("raw", 0), [], commit_s=0)
    settled: list[set[TopicPartition]] = []

    async def scenario() -> None:
        intake: Intake[Offset]

        async def settle() -> None:
            settled.append(set(intake.owned))

        intake = Intake(
            make_settings(),
            "ingest",
            ["raw"],
            lambda batch: asyncio.sleep(0),
            "state",
            lambda tp, r: Offset(),
            settle=settle,
        )
        intake._consumer = consumer
        intake.owned = {consumer.tp}
        await intake.on_partitions_revoked([])  # nothing goes: nothing to settle
        await intake.on_partitions_revoked([consumer.tp])
        await intake.stop()

    asyncio.run(scenario())
    assert settled == [set(), set()]  # after the revocation, and at stop
    assert consumer.stopped


def test_a_long_stretch_of_work_lets_another_stage_run_every_slice() -> None:
    async def scenario(paced: bool) -> float:
        """How long a stage whose fetch came back waited behind 0.2 s of another
        stage's work in 2 ms steps."""
        fetched = asyncio.Event()
        woke_at: list[float] = []

        async def other_stage() -> None:
            await fetched.wait()
            woke_at.append(time.perf_counter())

        waiting = asyncio.create_task(other_stage())
        await asyncio.sleep(0)  # it waits for its fetch
        pacer = Pacer(slice_s=0.02)
        fetched.set()
        ready_at = time.perf_counter()
        for _ in range(100):
            if paced:
                await pacer.pace()
            busy_until = time.perf_counter() + 0.002
            while time.perf_counter() < busy_until:
                pass
        await waiting
        return woke_at[0] - ready_at

    assert asyncio.run(scenario(paced=False)) > 0.15  # behind the whole batch
    assert asyncio.run(scenario(paced=True)) < 0.06  # about one slice
