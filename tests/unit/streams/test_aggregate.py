from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

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


# -- retention: windows ended long before the sources' watermark are final

SOURCES = ("feedback:0", "orders:0")


def mark(at: float | None, idle: bool = False, expired: bool = False) -> dict[str, Any]:
    return {"at": at, "idle": idle, "expired": expired}


def both_at(agg: KpiAggregator, at: float) -> None:
    """Both sources report ``at`` (as ingest does once a second)."""
    agg.note_marks({source: mark(at) for source in SOURCES})


def day_of_traffic() -> list[Contribution]:
    """12 hours from T0: an NPS response every 10 minutes, a customer becoming
    active every 20 minutes and one churning every hour (the churn stock's deltas
    and its churned counts: a rate over the stock at the window start)."""
    out: list[Contribution] = []
    for minute in range(0, 12 * 60, 10):
        at = T0 + minute * 60 + 5
        out += contributions("nps_response", "web", "delivery", at, minute % 11)
        if minute % 20 == 0:
            out.append(Contribution("churn", "all", "all", at, (("active_delta", 1.0),)))
        if minute % 60 == 30:
            out.append(Contribution("churn", "all", "all", at, (("active_delta", -1.0),)))
            out.append(Contribution("churn", "all", "all", at, (("churned", 1.0),)))
    return out


def outputs(agg: KpiAggregator, windows: Any) -> dict[Any, tuple[Any, ...]]:
    out = {}
    for group, window in windows:
        u = agg.update(group, window, 1, NOW)
        out[(group, window)] = (u.numerator, u.denominator, u.value, u.counts)
    return out


def retained(store: Any = None, with_daily: bool = True) -> KpiAggregator:
    return KpiAggregator(
        {} if store is None else store, 3600, 300, with_daily, 2 * 3600, sources=SOURCES
    )


@pytest.mark.parametrize("with_daily", [True, False])
def test_buckets_past_the_retention_are_dropped_and_every_window_still_out_is_exact(
    with_daily: bool,
) -> None:
    kept: dict[str, Any] = {}
    bounded = retained(kept, with_daily)
    unbounded = KpiAggregator({}, 3600, 300, with_daily)
    for i, contribution in enumerate(day_of_traffic()):
        both_at(bounded, contribution.at)  # the sources' watermark, as events come
        bounded.add(contribution)
        unbounded.add(contribution)
        if i % 10 == 0:  # passes as the cutoff moves (the stock's base in several steps)
            bounded.evict()
    bounded.evict()
    cutoff = bounded.cutoff()
    assert cutoff == T0 + (12 * 60 - 10) * 60 + 5 - 2 * 3600
    nps = [k for k in kept if k.startswith("nps|") and "|300|" in k]
    assert nps and all(int(k.rsplit("|", 2)[2]) + 3600 > cutoff for k in nps)
    assert len(nps) < len([k for k in unbounded.store if k.startswith("nps|") and "|300|" in k]) / 3
    # The churn stock's own buckets: folded into its base once no window still out
    # starts before them (with daily windows, not before the day is over).
    assert ("#stock|active_delta" in kept) is not with_daily
    # What is still emitted: exactly the windows that end after the cutoff, with
    # the values the unbounded aggregator gives them (churn's denominator is the
    # stock level, with the dropped buckets' deltas in the base).
    out = {(g, w) for g, w in unbounded.all_windows() if w.end > cutoff}
    assert bounded.all_windows() == out
    assert any(g == "churn|all|all" and w.size_s == 3600 for g, w in out)
    assert outputs(bounded, out) == outputs(unbounded, out)
    assert bounded.expired == 0


def test_the_clock_is_the_slowest_source_so_a_source_ahead_drops_nothing() -> None:
    # One source's backlog is read hours ahead of the other's (a batch holds hours
    # of one raw partition): the latest contribution time would run ahead; the
    # watermark of the slowest source does not, and nothing on time is dropped.
    agg = retained()
    late_hours = contributions("nps_response", "web", "delivery", T0 + 8 * 3600, 10)
    for c in late_hours:
        agg.add(c)
    agg.note_marks({"feedback:0": mark(T0 + 8 * 3600), "orders:0": mark(T0 + 60)})
    assert agg.cutoff() == T0 + 60 - 2 * 3600 and agg.evict() == 0
    behind = contributions("nps_response", "web", "checkout", T0 + 120, 3)
    assert all(agg.add(c) for c in behind) and agg.expired == 0
    # Until every source has reported there is no clock at all.
    fresh = retained()
    fresh.note_marks({"feedback:0": mark(T0 + 8 * 3600)})
    assert fresh.cutoff() == float("-inf")
    # A source idle past STREAMS__IDLE_SOURCE_S no longer holds it back; one only
    # just idle still does, and an empty one that never had an event does not.
    fresh.note_marks({"orders:0": mark(T0, idle=True)})
    assert fresh.cutoff() == T0 - 2 * 3600
    fresh.note_marks({"orders:0": mark(T0, idle=True, expired=True)})
    assert fresh.cutoff() == T0 + 6 * 3600
    fresh.note_marks({"orders:0": mark(None, idle=True)})
    assert fresh.cutoff() == T0 + 6 * 3600


def test_a_contribution_older_than_the_cutoff_is_expired_and_changes_nothing() -> None:
    agg = retained()
    for contribution in day_of_traffic():
        agg.add(contribution)
    both_at(agg, T0 + 12 * 3600)
    agg.evict()
    before = dict(agg.store)
    old = contributions("nps_response", "web", "delivery", T0 + 600, 0)
    assert all(agg.add(c) == [] for c in old)
    assert agg.expired == len(old) and agg.store == before
    # Within the retention it counts as before.
    recent = contributions("nps_response", "web", "delivery", int(agg.cutoff()) + 60, 0)
    assert all(agg.add(c) for c in recent)


def test_the_cutoff_never_steps_back_behind_what_is_final() -> None:
    # A source's idleness is timed afresh when its partition changes owner, so the
    # clock can step back. A contribution between that lower cutoff and what is
    # already final would change the bucket of final windows, never emitted again:
    # it is expired instead, like any before the cutoff, also after a restore.
    agg = retained()
    for c in contributions("nps_response", "web", "delivery", T0 + 10, 10):
        agg.add(c)
    both_at(agg, T0 + 6 * 3600)
    assert agg.evict() > 0 and agg.final_before() == T0 + 4 * 3600
    agg.note_marks({"orders:0": mark(T0 + 3 * 3600)})  # the clock steps back 3 h
    assert agg.cutoff() == agg.final_before()
    before = dict(agg.store)
    between = contributions("nps_response", "web", "delivery", T0 + 2 * 3600, 0)
    assert all(agg.add(c) == [] for c in between)
    assert agg.expired == len(between) and agg.store == before
    assert retained(dict(agg.store)).cutoff() == T0 + 4 * 3600
    # A source that has not reported yet leaves no clock: still nothing before it.
    assert retained({"#evicted": {"at": T0}}).cutoff() == T0
    # Past what is final, it counts as before.
    after = contributions("nps_response", "web", "delivery", T0 + 4 * 3600 + 60, 0)
    assert all(agg.add(c) for c in after)


def test_a_late_stock_delta_goes_into_the_base_once_and_changes_every_window_still_out() -> None:
    agg = retained(with_daily=False)
    for contribution in day_of_traffic():
        both_at(agg, contribution.at)
        agg.add(contribution)
        agg.evict()
    base = dict(agg.store["#stock|active_delta"])
    hour = Window(T0 + 11 * 3600, 3600)
    before = agg.update("churn|all|all", hour, 1, NOW).denominator
    # A customer active since 09:00 (re-attributed from a stitched touch, say):
    # its bucket was folded long ago; the level of every later window has it.
    late = Contribution("churn", "all", "all", T0 + 60, (("active_delta", 1.0),), "outcomes:0", 9)
    dirty = agg.add(late)
    assert ("churn|all|all", hour) in agg.windows_of(dirty)
    assert agg.update("churn|all|all", hour, 1, NOW).denominator == before + 1
    assert agg.store["#stock|active_delta"]["level"] == base["level"] + 1
    assert agg.add(late) == [] and agg.expired == 0  # a replay of it: counted once
    assert agg.update("churn|all|all", hour, 1, NOW).denominator == before + 1
    # A late churned count (a numerator of final windows) is expired.
    assert agg.add(Contribution("churn", "all", "all", T0 + 60, (("churned", 1.0),))) == []
    assert agg.expired == 1


def test_no_retention_keeps_every_bucket() -> None:
    agg = KpiAggregator({}, 3600, 300, sources=SOURCES)
    for contribution in day_of_traffic():
        both_at(agg, contribution.at)
        agg.add(contribution)
    assert agg.evict() == 0 and agg.cutoff() == float("-inf")
    assert len(agg.all_windows()) == len(agg.windows_of(agg.all_buckets()))


def traffic_bundles() -> list[bytes]:
    """day_of_traffic() as bundles of 12 contributions, each from one source, and
    the sources' progress after each."""
    traffic = day_of_traffic()
    items = [
        {"at": c.at, "counts": dict(c.counts), "src": "feedback:0", "off": i, "group": c.group}
        for i, c in enumerate(traffic)
    ]
    out = []
    for i in range(0, len(items), 12):
        out.append(json.dumps({"contributions": items[i : i + 12]}).encode())
        at = max(c.at for c in traffic[i : i + 12])
        out.append(json.dumps({"marks": {source: mark(at) for source in SOURCES}}).encode())
    return out


def test_a_restored_partition_past_its_retention_is_the_same_and_a_cut_checkpoint_too() -> None:
    # No daily windows: the churn stock's buckets are folded into its base within
    # the 12 hours (with them, only once the day is over).
    bundles = traffic_bundles()

    def partition(records: Any = None) -> KpiPartition:
        return KpiPartition(3600, 300, False, records, retention_s=2 * 3600, sources=SOURCES)

    whole = partition()
    log: dict[str, bytes | None] = {}
    cut_log: dict[str, bytes | None] | None = None
    for offset, value in enumerate(bundles):
        whole.fold(offset, value)
        whole.aggregator.evict()  # as an emission pass does, its updates out
        records = whole.checkpoint()
        keys = [k for k, _ in records]
        if cut_log is None and "#stock|active_delta" in keys and None in dict(records).values():
            # The worker dies right after the stock's base went out, before the
            # dropped buckets' tombstones: they come back on restore.
            cut_log = {**log, **dict(records[: keys.index("#stock|active_delta") + 1])}
            cut_at = offset
        log.update(records)
    assert cut_log is not None
    restored = partition(log)
    assert restored.aggregator.cutoff() == whole.aggregator.cutoff() > float("-inf")
    assert values(restored) == values(whole)
    # The successor of the cut checkpoint reads the batches from its next offset.
    successor = partition(cut_log)
    assert successor.next_offset == cut_at
    for offset in range(cut_at, len(bundles)):
        successor.fold(offset, bundles[offset])
        successor.aggregator.evict()
    assert values(successor) == values(whole)
    assert successor.aggregator.expired == 0


def test_a_window_past_the_cutoff_is_final_only_once_evicted() -> None:
    # The worker evicts at the start of an emission pass, up to the cutoff of the
    # previous pass (whose updates are out): a window whose last contribution came
    # just before the report that moved the cutoff past its end is still emitted.
    agg = retained()
    dirty = []
    for c in contributions("nps_response", "web", "delivery", T0 + 10, 10):
        dirty += agg.add(c)
    both_at(agg, T0 + 4 * 3600)
    hour = ("nps|web|delivery", Window(T0, 3600))
    assert agg.cutoff() == T0 + 2 * 3600 > Window(T0, 3600).end
    assert hour in agg.windows_of(dirty)  # not final yet: emitted with its response
    assert agg.update(*hour, 1, NOW).numerator == 1
    assert agg.evict() > 0
    assert hour not in agg.windows_of(dirty) and agg.final_before() == T0 + 2 * 3600
