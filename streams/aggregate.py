"""Windowed KPI aggregation, pure, over any mutable mapping; in the worker, one
:class:`KpiPartition` per contributions partition (its buckets in a dict, and
what changed since its last checkpoint).

State is kept per step-sized bucket (and per day), so one contribution writes
two entries; a hopping window's counts are the sum of its buckets.

Retention: windows that ended more than ``retention_s`` before the partition's
clock are final: never emitted again, their buckets dropped. The clock is a
watermark over the sources (:meth:`KpiAggregator.note_marks`): every raw
partition's and outcome partition's progress report, the slowest that is not
idle bounds it (:func:`clock_of`), as for the outcome stage's
decisions. A contribution older than the cutoff is dropped and counted
(``expired``), except a stock's delta: it goes into the stock's base level,
which every window still out reads.

Replays: a bucket also records, per source ("topic:partition" of the raw event,
or "outcomes:<partition>" for abandonment decisions), the highest source offset
it has counted, in the same value as its counts (one write, so the two cannot
disagree after a crash). A contribution at or below that offset is a replay
after a worker restart and is skipped. One event contributes once to a group,
and one source's contributions reach a group in offset order, so this is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson

from touchstream.schemas import KpiUpdate
from touchstream.streams.customers import STOCK_GROUP, STOCK_KPIS
from touchstream.streams.kpis import Contribution, merge, value_of
from touchstream.streams.outcomes import MARKS_KEY, clock_of, note_marks
from touchstream.streams.state import NEXT_KEY, BatchState
from touchstream.streams.windows import DAY_S, Window, bucket_of, buckets_of_window, daily, hopping

Dirty = tuple[str, Window]
# A changed bucket: (group, granularity, start). Windows are worked out once per
# emission pass (:func:`windows_of`), not for every contribution.
DirtyBucket = tuple[str, int, int]
SOURCE_MARK = "@"  # bucket entries "@<source>": the highest offset counted from it
# Keys of the store that are not buckets (the agent's own bookkeeping, e.g. the
# next contributions offset per partition) start with this; the aggregator skips them.
META_PREFIX = "#"
# The cutoff of the last eviction ({"at": seconds}): windows that ended at or before
# it are final (some of their buckets may be gone), never emitted again.
EVICTED_KEY = "#evicted"
# A stock's deltas from dropped buckets and late deltas before them ({"level": sum,
# "through": the bucket start before which every delta is in it, "@<source>": the
# highest offset in it}). "#" sorts before every bucket key, so a checkpoint cut
# short never holds a dropped bucket's tombstone without its base.
STOCK_BASE_PREFIX = "#stock|"
NO_TIME = float("-inf")
STOCK_NAME = {group: name for name, group in STOCK_GROUP.items()}  # group → its stock


class KpiAggregator:
    def __init__(
        self,
        store: MutableMapping[str, dict[str, float]],
        size_s: int,
        step_s: int,
        with_daily: bool = True,
        retention_s: float | None = None,
        sources: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.size_s = size_s
        self.step_s = step_s
        self.with_daily = with_daily
        # Windows that ended more than this before the clock are final (:meth:`cutoff`);
        # None keeps every bucket for ever.
        self.retention_s = retention_s
        # Whose progress reports make the clock: every source of contributions.
        self.sources = tuple(sources)
        self.expired = 0  # contributions dropped as older than the cutoff
        self._cutoff = self._cutoff_of(store.get(MARKS_KEY) or {})
        # Stock KPIs (churn, upsell): per stock, bucket start → net delta, and the
        # buckets of the groups whose denominators read that stock.
        self._stock: dict[str, dict[int, float]] = {name: {} for name in STOCK_GROUP}
        self._readers: dict[str, set[tuple[str, int, int]]] = {name: set() for name in STOCK_GROUP}
        self._indexed = False
        # While emitting (:meth:`reading`): buckets and stock levels read once per
        # pass, not once per window (a bucket is in up to size/step windows).
        self._buckets: dict[str, Any] | None = None
        self._levels: dict[tuple[str, int], float] | None = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Memoise reads for one pass of :meth:`update` calls. A contribution added
        meanwhile marks its windows dirty again, so the next pass has it."""
        self._buckets, self._levels = {}, {}
        try:
            yield
        finally:
            self._buckets = self._levels = None

    def _bucket(self, key: str) -> dict[str, float] | None:
        """A bucket's counts (without its source marks), memoised while reading."""
        cache = self._buckets
        if cache is not None and key in cache:
            return cache[key]
        value = self.store.get(key)
        counts = (
            {k: v for k, v in value.items() if not k.startswith(SOURCE_MARK)} if value else None
        )
        if cache is not None:
            cache[key] = counts
        return counts

    def _index(self) -> None:
        """Build the stock indexes from the store (at start and after recovery)."""
        for name in STOCK_GROUP:
            self._stock[name].clear()
            self._readers[name].clear()
        for key in list(self.store.keys()):
            if not key.startswith(META_PREFIX):
                self._note(key, self.store.get(key) or {})
        self._indexed = True

    def _note(self, key: str, value: Mapping[str, float]) -> None:
        kpi, channel, touchpoint, granularity, start = key.split("|")
        stock = STOCK_KPIS.get(kpi)
        if stock is None:
            return
        name = stock[1]
        self._readers[name].add((f"{kpi}|{channel}|{touchpoint}", int(granularity), int(start)))
        if int(granularity) == self.step_s and f"{kpi}|{channel}|{touchpoint}" == STOCK_GROUP[name]:
            if int(start) >= self._base(name)[1]:  # else already in the base level
                self._stock[name][int(start)] = float(value.get(name, 0.0))

    def _base(self, name: str) -> tuple[float, float]:
        """A stock's (level, through) from the buckets dropped so far."""
        base = self.store.get(STOCK_BASE_PREFIX + name)
        if base is None:
            return 0.0, NO_TIME
        return float(base["level"]), float(base["through"])

    def note_marks(self, marks: Mapping[str, Any]) -> None:
        """Progress reports of some sources (the latest of each is kept)."""
        self._cutoff = self._cutoff_of(note_marks(self.store, marks))

    def _cutoff_of(self, marks: Mapping[str, Any]) -> float:
        if self.retention_s is None or not self.sources:
            return NO_TIME
        clock = clock_of(marks, self.sources)
        # Never behind what is final: the clock can step back (a source's idleness
        # is timed afresh when its partition changes owner or gets data again), and
        # a contribution folded then into a final window's bucket would change a
        # window that is never emitted again, without a word. It is expired instead.
        return max(NO_TIME if clock is None else clock - self.retention_s, self.final_before())

    def cutoff(self) -> float:
        """The clock minus the retention (-inf without a retention, or until every
        source has reported), but never before :meth:`final_before`: a contribution
        before it is dropped as expired, and the next :meth:`evict` makes the windows
        that ended at or before it final."""
        return self._cutoff

    def final_before(self) -> float:
        """Windows that ended at or before this are final: the cutoff of the last
        :meth:`evict` (-inf before any)."""
        evicted = self.store.get(EVICTED_KEY)
        return NO_TIME if evicted is None else float(evicted["at"])

    def evict(self, cutoff: float | None = None) -> int:
        """Make the windows that ended at or before ``cutoff`` (default: the cutoff
        now) final and drop the buckets only they had (a stock's deltas go into its
        base level); how many. The worker passes the cutoff of an emission pass
        whose updates are out, so a window's last change is out before it is
        final. A pass scans the store: once the cutoff has moved a step."""
        cutoff = self.cutoff() if cutoff is None else cutoff
        if cutoff == NO_TIME or cutoff - self.final_before() < self.step_s:
            return 0
        self.store[EVICTED_KEY] = {"at": cutoff}
        if not self._indexed:
            self._index()
        # A stock's own buckets hold the levels at window starts: one is folded into
        # the base only once every window still out starts after it.
        earliest_start = cutoff - (DAY_S if self.with_daily else self.size_s)
        stocks = set(STOCK_GROUP.values())
        gone: list[tuple[int, str, int, str]] = []
        for key in list(self.store.keys()):
            if key.startswith(META_PREFIX):
                continue
            group, granularity, start = key.rsplit("|", 2)
            if group in stocks and int(granularity) == self.step_s:
                if int(start) + self.step_s > earliest_start:
                    continue
            elif int(start) + (DAY_S if int(granularity) == DAY_S else self.size_s) > cutoff:
                continue
            gone.append((int(start), group, int(granularity), key))
        for at, name, size, key in sorted(gone):  # a stock's base in bucket order
            self._dropped(name, size, at, self.store.pop(key))
        return len(gone)

    def _dropped(
        self, group: str, granularity: int, start: int, value: Mapping[str, float]
    ) -> None:
        stock = STOCK_KPIS.get(group.split("|", 1)[0])
        if stock is None:
            return
        name = stock[1]
        self._readers[name].discard((group, granularity, start))
        if granularity == self.step_s and group == STOCK_GROUP[name]:
            if start < self._base(name)[1]:  # folded already (its tombstone was lost in a cut)
                return
            marks = {k: v for k, v in value.items() if k.startswith(SOURCE_MARK)}
            self._into_base(name, float(value.get(name, 0.0)), marks, start + self.step_s)
            self._stock[name].pop(start, None)

    def _into_base(
        self, name: str, delta: float, marks: Mapping[str, float], through: float
    ) -> None:
        key = STOCK_BASE_PREFIX + name
        base = dict(self.store.get(key) or {"level": 0.0, "through": NO_TIME})
        base["level"] = float(base["level"]) + delta
        base["through"] = max(float(base["through"]), through)
        for source, offset in marks.items():
            base[source] = max(base.get(source, -1), offset)
        self.store[key] = base

    def _late_stock(self, name: str, contribution: Contribution) -> list[DirtyBucket] | None:
        """A stock's delta in a bucket already folded into its base: into the base
        (unless the base has counted it: a replay), the windows it changes dirty."""
        _, through = self._base(name)
        if bucket_of(contribution.at, self.step_s) >= through:
            return None  # its bucket is live: counted as usual
        base = self.store[STOCK_BASE_PREFIX + name]
        source = SOURCE_MARK + contribution.source
        if source != SOURCE_MARK and base.get(source, -1) >= contribution.offset:
            return []
        marks = {source: contribution.offset} if source != SOURCE_MARK else {}
        delta = float(dict(contribution.counts)[name])
        self._into_base(name, delta, marks, through)
        if self._levels is not None:
            self._levels.clear()
        # Its own bucket (never emitted: its windows are final) says it counted.
        own = (contribution.group, self.step_s, bucket_of(contribution.at, self.step_s))
        return [own, *self._stock_dirty(name, contribution.at)]

    def reindex(self) -> None:
        self._indexed = False

    def stock_level(self, name: str, at: int) -> float:
        """A stock's level at ``at`` (a bucket boundary): the deltas before it."""
        if not self._indexed:
            self._index()
        levels = self._levels
        if levels is not None and (name, at) in levels:
            return levels[(name, at)]
        level = self._base(name)[0]  # folded buckets: all before any window still out
        level += sum(delta for start, delta in self._stock[name].items() if start < at)
        if levels is not None:
            levels[(name, at)] = level
        return level

    def _stock_dirty(self, name: str, at: float) -> list[DirtyBucket]:
        """Buckets with a window whose denominator a delta of ``name`` at ``at``
        changes (a window starting after ``at``; the bucket's other windows are
        emitted again unchanged)."""
        return [reader for reader in self._readers[name] if reader[2] > at]

    def _key(self, group: str, granularity: int, start: int) -> str:
        return f"{group}|{granularity}|{start}"

    def add(self, contribution: Contribution) -> list[DirtyBucket]:
        """Apply one contribution; returns the buckets whose windows changed (none
        for a replay or an expired one): :meth:`windows_of` gives the windows."""
        group = contribution.group
        counts = dict(contribution.counts)
        if not self._indexed:
            self._index()
        if contribution.at < self._cutoff:
            # Its windows are final, or nearly: dropped, unless it moves a stock
            # (every later level has it).
            name = STOCK_NAME.get(group)
            if name is None or set(counts) != {name}:
                self.expired += 1
                return []
            late = self._late_stock(name, contribution)
            if late is not None:
                return late
        mark = (SOURCE_MARK + contribution.source, contribution.offset)
        bucket = bucket_of(contribution.at, self.step_s)
        dirty: list[DirtyBucket] = []
        if self._bump(self._key(group, self.step_s, bucket), counts, mark):
            dirty.append((group, self.step_s, bucket))
            for name in STOCK_GROUP:
                if name in counts:
                    dirty += self._stock_dirty(name, contribution.at)
        if self.with_daily:
            day = daily(contribution.at)
            if day.end <= self._cutoff:  # a stock's late delta: its day is over
                return dirty
            if self._bump(self._key(group, DAY_S, day.start), counts, mark):
                dirty.append((group, DAY_S, day.start))
        return dirty

    def windows_of(self, buckets: Iterable[DirtyBucket]) -> set[Dirty]:
        """The windows of some buckets: a day bucket's day, a step bucket's hopping
        windows; not the final ones (:meth:`final_before`: some of their buckets
        may be gone, e.g. a leftover of a checkpoint cut short)."""
        out: set[Dirty] = set()
        for group, granularity, start in set(buckets):
            if granularity == DAY_S and self.with_daily:
                out.add((group, Window(start, DAY_S)))
            else:
                out.update((group, w) for w in hopping(start, self.size_s, self.step_s))
        final = self.final_before()
        if final == NO_TIME:
            return out
        return {(group, w) for group, w in out if w.end > final}

    def _bump(self, key: str, counts: dict[str, float], mark: tuple[str, int]) -> bool:
        # Read-modify-write of a fresh dict: the store records assignments only
        # (Changes: what the next checkpoint writes).
        value = dict(self.store.get(key) or {})
        name, offset = mark
        if name != SOURCE_MARK:
            if value.get(name, -1) >= offset:
                return False
            value[name] = offset
        self.store[key] = merged = merge(value, counts)
        self._note(key, merged)
        return True

    def counts(self, group: str, window: Window) -> dict[str, float]:
        if window.size_s == DAY_S and self.with_daily:
            buckets = [self._bucket(self._key(group, DAY_S, window.start))]
        else:
            buckets = [
                self._bucket(self._key(group, self.step_s, start))
                for start in buckets_of_window(window, self.step_s)
            ]
        total: dict[str, float] = {}
        for bucket in buckets:
            if bucket:
                merge(total, bucket)
        return total

    def update(self, group: str, window: Window, version: int, now: datetime) -> KpiUpdate:
        kpi, channel, touchpoint = group.split("|")
        counts = self.counts(group, window)
        stock = STOCK_KPIS.get(kpi)
        if stock is None:
            numerator, denominator, value = value_of(kpi, counts)
        else:  # a rate over the stock at the window start
            numerator = counts.get(stock[0], 0.0)
            denominator = self.stock_level(stock[1], window.start)
            value = numerator / denominator if denominator else None
        return KpiUpdate(
            kpi=kpi,
            channel=channel,
            touchpoint=touchpoint,
            window_start=window.start_dt(),
            window_end=window.end_dt(),
            window_size_s=window.size_s,
            numerator=numerator,
            denominator=denominator,
            value=value,
            counts=counts,
            version=version,
            updated_at=now,
        )

    def all_buckets(self) -> list[DirtyBucket]:
        """Every bucket with state (after a restore, to emit everything again)."""
        out: list[DirtyBucket] = []
        for key in list(self.store.keys()):
            if not key.startswith(META_PREFIX):
                group, granularity, start = key.rsplit("|", 2)
                out.append((group, int(granularity), int(start)))
        return out

    def all_windows(self) -> set[Dirty]:
        """Every window with state."""
        return self.windows_of(self.all_buckets())


class KpiPartition(BatchState):
    """One contributions partition: its buckets (the state's store), the offset of
    the next bundle to fold, and its checkpoint: each bucket changed since the
    last one, then the next offset (the latest value per key of a compacted topic
    is the state).

    No write set ahead of the buckets (:class:`BatchState`'s ``#pending``): a
    successor that restores part of a batch's buckets and the next offset before
    it folds the batch's contributions again, and the buckets that already have
    them skip them (each bucket keeps the highest offset it counted per source)."""

    def __init__(
        self,
        size_s: int,
        step_s: int,
        with_daily: bool = True,
        records: Mapping[str, bytes | None] | None = None,
        retention_s: float | None = None,
        sources: Iterable[str] = (),
    ) -> None:
        super().__init__(records)
        self.aggregator = KpiAggregator(
            self.store, size_s, step_s, with_daily, retention_s, sources
        )

    def fold(self, offset: int, value: bytes | None) -> tuple[list[DirtyBucket], int]:
        """A message at ``offset``: a bundle of contributions (the buckets it
        changed, and how many of its contributions were replays, already counted;
        those older than the cutoff are counted in ``aggregator.expired``), or
        progress reports of sources (the clock). A message before the next offset
        was folded already: nothing."""
        if offset < self.next_offset:
            return [], 0
        body = orjson.loads(value or b"{}")
        dirty: list[DirtyBucket] = []
        replays = 0
        if "marks" in body:
            self.aggregator.note_marks(body["marks"])
        expired = self.aggregator.expired
        for item in body.get("contributions", ()):  # written by ingest only: a bad one is a bug
            kpi, channel, touchpoint = item["group"].split("|")
            contribution = Contribution(
                kpi,
                channel,
                touchpoint,
                float(item["at"]),
                tuple(item["counts"].items()),
                item.get("src", ""),
                int(item.get("off", -1)),
            )
            changed = self.aggregator.add(contribution)
            if changed:
                dirty += changed
            else:
                replays += 1
        self.next_offset = offset + 1
        return dirty, replays - (self.aggregator.expired - expired)

    def checkpoint(self) -> list[tuple[str, bytes | None]]:
        """Records for what changed since the last checkpoint, the next offset last."""
        return [*self._encoded_writes(), (NEXT_KEY, orjson.dumps(self.next_offset))]
