from __future__ import annotations

from touchstream.streams.eventtime import Deduplicator, SourceState, Watermark


def test_lateness_boundaries() -> None:
    mark = Watermark(allowed_lateness_s=600)
    assert not mark.is_late(0)  # nothing seen yet: nothing is late
    mark.observe(10_000)
    assert mark.value == 9_400
    assert not mark.is_late(9_400)  # exactly at the lateness: still on time
    assert not mark.is_late(9_401)  # late by lateness - 1 s
    assert mark.is_late(9_399)  # late by lateness + 1 s
    mark.observe(9_000)  # an older event does not move the watermark back
    assert mark.value == 9_400


def test_duplicates_are_seen_once() -> None:
    dedup = Deduplicator()
    assert dedup.first_time("a", 100)
    assert not dedup.first_time("a", 100)
    assert dedup.first_time("b", 100)
    assert len(dedup) == 2


def test_ids_older_than_the_watermark_are_forgotten() -> None:
    dedup = Deduplicator()
    for n, at in enumerate([100, 200, 300, 400]):
        dedup.first_time(f"e{n}", at)
    assert dedup.forget_before(300) == 2
    assert len(dedup) == 2
    assert not dedup.first_time("e2", 300)  # still remembered
    assert dedup.first_time("e0", 100)  # forgotten: but an event at 100 is late by now


def test_source_state_dedup_lateness_boundaries_and_replay() -> None:
    state = SourceState("raw:0", allowed_lateness_s=600)
    assert state.observe(0, "a", 1000.0) == "on_time"
    assert state.observe(1, "b", 2000.0) == "on_time"  # watermark 1400
    assert state.observe(2, "a", 1000.0) == "duplicate"  # seen, even if now behind
    assert state.observe(3, "c", 1400.0) == "on_time"  # exactly at the watermark
    assert state.observe(4, "d", 1399.0) == "late"  # 1 s beyond the lateness
    assert state.observe(5, "d", 1401.0) == "on_time"  # 1 s within (same id, not seen)
    state.skip(6)  # a dead letter moves the offset
    assert state.next_offset == 7
    assert state.applied(6) and not state.applied(7)


def test_source_state_checkpoints_restore_the_same_state() -> None:
    state = SourceState("raw:1", allowed_lateness_s=600)
    for offset, (event_id, at) in enumerate([("a", 1000.0), ("b", 1100.0)]):
        state.observe(offset, event_id, at)
    log: dict[str, bytes | None] = dict(state.checkpoint())
    state.observe(2, "c", 1701.0)  # watermark 1101: the first batch's ids expire
    second = state.checkpoint()
    log.update(second)
    assert (next(k for k, _ in second if k.endswith("00000000000000000000")), None) in second
    restored = SourceState.restore("raw:1", 600, log)
    assert (restored.next_offset, restored.max_event_time) == (3, 1701.0)
    assert len(restored) == len(state) == 1
    assert restored.applied(2) and not restored.applied(3)
    assert restored.observe(3, "c", 1701.0) == "duplicate"
    assert restored.observe(4, "a", 1000.0) == "late"  # forgotten, and behind anyway
    # Another source's records in the same partition are not mixed in.
    assert len(SourceState.restore("raw2:1", 600, log)) == 0
