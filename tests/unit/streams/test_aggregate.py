from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from touchstream.streams.aggregate import KpiAggregator, KpiPartition
from touchstream.streams.kpis import Contribution, contributions
from touchstream.streams.state import NEXT_KEY
from touchstream.streams.windows import DAY_S, Window, buckets_of_window

T0 = int(datetime(2026, 11, 2, 9, 0, tzinfo=UTC).timestamp())
NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


def feed(agg: KpiAggregator, at: int, score: int, touchpoint: str = "delivery") -> None:
    for c in contributions("nps_response", "web", touchpoint, at, score):
        agg.add(c)


def test_hourly_windows_sum_their_buckets() -> None:
    store: dict[str, dict[str, float]] = {}
    agg = KpiAggregator(store, 3600, 300)
    feed(agg, T0 + 10, 10)  # promoter at 09:00:10
    feed(agg, T0 + 1800, 3)  # detractor at 09:30
    feed(agg, T0 + 3600, 9)  # promoter at 10:00 (next hour)

    nine = agg.update("nps|web|delivery", Window(T0, 3600), 1, NOW)
    assert (nine.numerator, nine.denominator, nine.value) == (0, 2, 0.0)
    half_past = agg.update("nps|web|delivery", Window(T0 + 1800, 3600), 1, NOW)
    assert (half_past.numerator, half_past.denominator, half_past.value) == (0, 2, 0.0)
    ten = agg.update("nps|web|delivery", Window(T0 + 3600, 3600), 1, NOW)
    assert (ten.numerator, ten.denominator, ten.value) == (1, 1, 100.0)
    day = agg.update("nps|all|all", Window(T0 - 9 * 3600, DAY_S), 1, NOW)
    assert (day.numerator, day.denominator) == (1, 3)
    assert round(day.value or 0, 4) == round(100 / 3, 4)


def test_add_reports_the_buckets_it_changed_and_their_windows() -> None:
    agg = KpiAggregator({}, 3600, 300)
    buckets = set()
    for c in contributions("nps_response", "web", "delivery", T0 + 10, 10):
        buckets.update(agg.add(c))
    assert ("nps|web|delivery", 300, T0) in buckets
    assert ("nps|web|delivery", DAY_S, T0 - 9 * 3600) in buckets
    changed = agg.windows_of(buckets)
    web = {w for g, w in changed if g == "nps|web|delivery"}
    assert len(web) == 13  # 12 hourly windows + the day
    assert Window(T0, 3600) in web and Window(T0 - 3300, 3600) in web


def test_all_windows_covers_every_window_with_state() -> None:
    agg = KpiAggregator({}, 3600, 300)
    feed(agg, T0 + 10, 10)
    windows = {w for g, w in agg.all_windows() if g == "nps|web|delivery"}
    assert len(windows) == 13


def test_state_values_are_fresh_dicts_so_tables_log_every_change() -> None:
    store: dict[str, dict[str, float]] = {}
    agg = KpiAggregator(store, 3600, 300)
    feed(agg, T0, 10)
    first = store[f"nps|web|delivery|300|{T0}"]
    feed(agg, T0, 10)
    second = store[f"nps|web|delivery|300|{T0}"]
    assert first is not second
    assert first["responses"] == 1 and second["responses"] == 2


def test_a_replayed_contribution_is_counted_once_per_bucket() -> None:
    store: dict[str, dict[str, float]] = {}
    aggregator = KpiAggregator(store, 3600, 300)
    first = Contribution("nps", "web", "checkout", 1000.0, (("responses", 1.0),), "raw:0", 7)
    assert aggregator.add(first)
    assert aggregator.add(first) == []  # the same source offset again: a replay
    earlier = Contribution("nps", "web", "checkout", 1000.0, (("responses", 1.0),), "raw:0", 6)
    assert aggregator.add(earlier) == []  # behind the mark: replayed as well
    other = Contribution("nps", "web", "checkout", 1000.0, (("responses", 1.0),), "raw:1", 6)
    assert aggregator.add(other)  # another source partition
    window = Window(900, 3600)
    assert aggregator.counts("nps|web|checkout", window) == {"responses": 2.0}
    assert aggregator.update("nps|web|checkout", window, 1, NOW).counts == {"responses": 2.0}
    untraced = Contribution("nps", "web", "checkout", 1000.0, (("responses", 1.0),))
    assert aggregator.add(untraced) and aggregator.add(untraced)  # no source: always counted


class CountingStore(dict[str, dict[str, float]]):
    reads = 0

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.reads += 1
        return super().get(key, default)


def test_one_emission_pass_reads_each_bucket_once_and_gets_the_same_values() -> None:
    store = CountingStore()
    agg = KpiAggregator(store, 3600, 300)
    for minute in range(0, 120, 7):
        feed(agg, T0 + minute * 60, minute % 11)
    windows = sorted(agg.all_windows())
    plain = [agg.update(g, w, 1, NOW) for g, w in windows]
    store.reads = 0
    with agg.reading():
        cached = [agg.update(g, w, 1, NOW) for g, w in windows]
    assert cached == plain
    # Each bucket key any window covers is read once (not once per window over it).
    keys = {
        (g, w.size_s == DAY_S, b)
        for g, w in windows
        for b in ([w.start] if w.size_s == DAY_S else buckets_of_window(w, 300))
    }
    assert store.reads == len(keys) < sum(12 if w.size_s != DAY_S else 1 for _, w in windows)
    with agg.reading():
        pass
    feed(agg, T0 + 60, 10)  # after the pass: reads see the store again
    assert agg.update("nps|web|delivery", Window(T0, 3600), 2, NOW).denominator == 10


def test_keys_of_the_agents_own_bookkeeping_are_not_buckets() -> None:
    # A store may hold bookkeeping next to the buckets (keys starting with "#"):
    # reindexing and re-emitting skip it.
    store: dict[str, Any] = {"#next|3": 12}
    agg = KpiAggregator(store, 3600, 300)
    feed(agg, T0 + 10, 10)
    agg.reindex()
    windows = set(agg.all_windows())
    assert windows and all(not group.startswith("#") for group, _ in windows)
    assert agg.update("nps|web|delivery", Window(T0, 3600), 1, NOW).denominator == 1


def bundle(source: str, first_offset: int, *responses: tuple[int, int, str]) -> bytes:
    """A contributions bundle as ingest sends it: NPS responses (at, score,
    touchpoint) read from ``source`` at consecutive offsets."""
    items = []
    for i, (at, score, touchpoint) in enumerate(responses):
        for c in contributions("nps_response", "web", touchpoint, at, score):
            items.append(
                {
                    "at": c.at,
                    "counts": dict(c.counts),
                    "src": source,
                    "off": first_offset + i,
                    "group": c.group,
                }
            )
    return json.dumps({"contributions": items}).encode()


BUNDLES = [
    bundle("feedback:0", 0, (T0 + 10, 10, "delivery"), (T0 + 20, 3, "checkout")),
    bundle("feedback:0", 2, (T0 + 400, 9, "delivery")),
    bundle("feedback:1", 0, (T0 + 3700, 6, "delivery"), (T0 + 50, 8, "checkout")),
    bundle("feedback:0", 3, (T0 + 4000, 0, "checkout")),
]


def values(part: KpiPartition) -> dict[tuple[str, Window], tuple[float, float, float | None]]:
    out = {}
    for group, window in sorted(part.aggregator.all_windows()):
        update = part.aggregator.update(group, window, 1, NOW)
        out[(group, window)] = (update.numerator, update.denominator, update.value)
    return out


def test_a_partition_folds_bundles_in_offset_order_and_checkpoints_what_changed() -> None:
    part = KpiPartition(3600, 300)
    dirty, replays = part.fold(0, BUNDLES[0])
    assert replays == 0 and part.next_offset == 1
    assert {g for g, _, _ in dirty} == {"nps|web|delivery", "nps|web|checkout", "nps|all|all"}
    records = part.checkpoint()
    assert records[-1] == (NEXT_KEY, b"1")  # the next offset last
    keys = [key for key, _ in records[:-1]]
    # Per group, the 09:00 bucket and the day (both responses are in them).
    assert f"nps|web|delivery|300|{T0}" in keys and len(keys) == len(set(keys)) == 6
    assert part.checkpoint() == [(NEXT_KEY, b"1")]  # nothing changed since
    part.fold(1, BUNDLES[1])
    changed = [key for key, _ in part.checkpoint()[:-1]]
    # One response in the 09:05 bucket: its 5-minute bucket and the day, per group.
    assert len(changed) == 4 and all(f"|300|{T0 + 300}" in k or "|86400|" in k for k in changed)
    assert part.fold(1, BUNDLES[1]) == ([], 0)  # before the next offset: folded already
    assert part.next_offset == 2


def test_a_restored_partition_has_the_same_windows_and_resumes_after_its_checkpoint() -> None:
    whole = KpiPartition(3600, 300)
    log: dict[str, bytes | None] = {}  # the compacted topic: latest value per key
    for offset, value in enumerate(BUNDLES[:2]):
        whole.fold(offset, value)
        log.update(whole.checkpoint())
    restored = KpiPartition(3600, 300, records=log)
    assert restored.next_offset == 2
    assert values(restored) == values(whole)
    assert restored.checkpoint() == [(NEXT_KEY, b"2")]  # restored is not changed
    for offset, value in enumerate(BUNDLES[2:], start=2):
        assert whole.fold(offset, value)[0] == restored.fold(offset, value)[0]
    assert values(restored) == values(whole)


def test_a_checkpoint_cut_short_is_exact_after_the_replay() -> None:
    # The worker dies while its checkpoint is being written: some buckets of the
    # last batch reached the topic, its next offset did not. The successor reads
    # that batch again: buckets that have it skip it (their source offsets).
    whole = KpiPartition(3600, 300)
    for offset, value in enumerate(BUNDLES):
        whole.fold(offset, value)
    dying = KpiPartition(3600, 300)
    log: dict[str, bytes | None] = {}
    for offset, value in enumerate(BUNDLES[:2]):
        dying.fold(offset, value)
        log.update(dying.checkpoint())
    dying.fold(2, BUNDLES[2])
    dying.fold(3, BUNDLES[3])
    cut = dying.checkpoint()[:-1]
    log.update(cut[: len(cut) // 2])
    successor = KpiPartition(3600, 300, records=log)
    assert successor.next_offset == 2
    replayed = sum(successor.fold(offset, BUNDLES[offset])[1] for offset in (2, 3))
    assert replayed > 0  # some contributions were in the buckets written before the kill
    assert values(successor) == values(whole)
