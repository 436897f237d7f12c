from __future__ import annotations

from touchstream.streams.eventtime import Deduplicator, Watermark


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
