"""State helpers: one kind of state inside a partition's store
(:class:`PrefixedStore`), and a partition's state checkpointed to a compacted
topic after each batch so that a successor restores it after exactly one batch
(:class:`BatchState`)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson

from touchstream.streams.spill import SpilledSchedule, SpillStore

Entity = dict[str, Any]


class PrefixedStore(MutableMapping[str, Entity]):
    """One kind of state (checkouts, carts, customers, anonymous ids, progress
    marks) inside a partition's store, under keys prefixed by the kind.

    Entities are values: a caller never changes one it read in place, it writes
    a new one back (every caller copies what it changes: ``dict(found)``, new
    lists), which the store records (:class:`Changes`: what the next checkpoint
    writes). Not copied in and out here: those copies were ~12 % of the outcome
    stage.
    Writes go straight to the store: nothing is checkpointed before the batch's
    outputs are flushed, so a crash in between restores the state from before the
    batch and the batch is handled again, decisions and all (the same numbering:
    deduplicated downstream). Entities checkpointed by earlier builds carry their
    partition in ``"p"`` (when one store held every partition); it is ignored. An
    entity the store holds encoded (:attr:`BatchState.keep_encoded`) is decoded
    on every read."""

    def __init__(self, store: MutableMapping[str, Any], prefix: str) -> None:
        self._store = store
        self._prefix = f"{prefix}|"

    def __getitem__(self, key: str) -> Entity:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._store.get(self._prefix + key)
        return default if value is None else _decoded(value)

    def __setitem__(self, key: str, value: Entity) -> None:
        self._store[self._prefix + key] = value

    def __delitem__(self, key: str) -> None:
        if self._prefix + key not in self._store:
            raise KeyError(key)
        del self._store[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        cut = len(self._prefix)
        for key, _ in self._scan():
            yield key[cut:]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def entries(self) -> Iterator[tuple[str, Entity]]:
        """Every entity and its key, decoded, not brought into memory if spilled."""
        cut = len(self._prefix)
        for key, value in self._scan():
            yield key[cut:], _decoded(value)

    def _scan(self) -> Iterable[tuple[str, Any]]:
        store, prefix = self._store, self._prefix
        if isinstance(store, SpillStore):
            return store.scan(prefix)
        return [(k, v) for k, v in list(store.items()) if k.startswith(prefix)]

    def schedule(self) -> Schedule | SpilledSchedule:
        """Due times for these entities, kept where they are."""
        if isinstance(self._store, SpillStore):
            return self._store.schedule_under(self._prefix)
        return Schedule()


def _decoded(value: Any) -> Entity:
    """An entity as stored: its checkpointed bytes (kept encoded) or a dict."""
    return orjson.loads(value) if type(value) is bytes else value


def entries(store: Mapping[str, Entity]) -> Iterator[tuple[str, Entity]]:
    """Every entity of a store, without bringing those spilled into memory."""
    return store.entries() if isinstance(store, PrefixedStore) else iter(list(store.items()))


def schedule_for(store: Mapping[str, Entity]) -> Schedule | SpilledSchedule:
    return store.schedule() if isinstance(store, PrefixedStore) else Schedule()


# Checkpoint keys that are not state (other "#" keys are state a stage keeps apart
# from its entities, e.g. the KPI stage's clock and retention).
NEXT_KEY = "#next"  # the next offset to read: every message before it is in the state
PENDING_PREFIX = "#pending|"  # a batch's whole write set, before its key records
PENDING_CHUNK_BYTES = 256_000  # a part of that write set per record (brokers take 1 MB)


class Changes(dict[str, Any]):
    """A dict that remembers the keys written or deleted since :meth:`taken`."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.changed.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.changed.add(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.changed.add(key)
        return super().pop(key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self.changed.add(key)
        return key, value

    def clear(self) -> None:
        self.changed.update(self)
        super().clear()

    def taken(self) -> list[str]:
        keys, self.changed = sorted(self.changed), set()
        return keys

    def rest(self, key: str, data: bytes) -> None:
        """``key``'s value as its checkpointed bytes (not a change)."""
        dict.__setitem__(self, key, data)


class BatchState:
    """A partition's state (JSON values under string keys) and the offset of the
    next message to read, checkpointed after each batch to the partition of a
    compacted topic, so that a successor resumes from the state after exactly one
    batch, never from part of one.

    A checkpoint is: the batch's whole write set in ``#pending|<i>`` records (one
    record, or a few of at most PENDING_CHUNK_BYTES, each naming the batch's next
    offset and how many parts there are), then one record per key written (a
    tombstone for a deleted one) so the topic compacts to the state, then
    ``#next``. Records of one partition are kept in order, so a worker killed while
    writing it leaves either an incomplete ``#pending`` set and no key of the batch
    (ignored), or all of ``#pending`` and some keys (rolled forward from
    ``#pending``). Restored ahead of its next offset, a state would take the
    batch's messages again on top of their own effects.
    The keys rolled forward are changes for the next checkpoint: those the kill
    cut off have no record of their own, and that checkpoint's write set replaces
    the one that held them.

    With :attr:`keep_encoded`, what a checkpoint wrote (and what a restore read)
    stays in the store as its JSON bytes until it is written again, for a state
    read only through :class:`PrefixedStore`, which decodes it: the outcome
    stage's customers and anonymous ids, mostly untouched between their
    interactions, take less memory so (design note). Such a state may also be
    restored into a :class:`SpillStore` (``records``), which keeps only so many
    entities in memory after each checkpoint."""

    keep_encoded = False

    def __init__(self, records: Mapping[str, bytes | None] | SpillStore | None = None) -> None:
        self.store: Changes | SpillStore
        self.next_offset = 0
        if isinstance(records, SpillStore):
            if not self.keep_encoded:
                raise TypeError("a SpillStore holds states kept encoded (keep_encoded)")
            self.store = records
            head = records.take(NEXT_KEY, exact=True).get(NEXT_KEY)
            found = records.take(PENDING_PREFIX)
        else:
            self.store = Changes()
            found = {k: v for k, v in (records or {}).items() if v is not None}
            head = found.pop(NEXT_KEY, None)
            for key, value in found.items():
                if not key.startswith(PENDING_PREFIX):
                    self.store[key] = bytes(value) if self.keep_encoded else orjson.loads(value)
            self.store.taken()  # as read: on the topic already
        if head is not None:
            self.next_offset = int(orjson.loads(head))
        pending = self._pending(found)
        if pending is not None:
            # Rolled forward: changes, which the next checkpoint writes as records of
            # their own (some never went out, and its write set replaces this one).
            self.next_offset, writes = pending
            for key, value in writes.items():
                if value is None:
                    self.store.pop(key, None)
                else:
                    self.store[key] = value

    def _pending(self, found: Mapping[str, bytes]) -> tuple[int, dict[str, Any]] | None:
        """The write set of a batch whose checkpoint was cut short, if complete."""
        parts = [orjson.loads(v) for k, v in found.items() if k.startswith(PENDING_PREFIX)]
        ahead = [part for part in parts if int(part["next"]) > self.next_offset]
        if not ahead:
            return None
        target = max(int(part["next"]) for part in ahead)
        mine = {int(p["part"]): p for p in ahead if int(p["next"]) == target}
        total = int(next(iter(mine.values()))["parts"])
        if sorted(mine) != list(range(total)):
            return None  # cut short while writing the write set: none of its keys went out
        writes: dict[str, Any] = {}
        for index in range(total):
            writes.update(mine[index]["writes"])
        return target, writes

    def checkpoint(self) -> list[tuple[str, bytes | None]]:
        """The records for what changed since the last checkpoint (see the class).
        Each value is encoded once; the write set is spliced from those bytes. A
        :class:`SpillStore` then moves what is beyond its memory to its file."""
        writes = self._encoded_writes()
        if isinstance(self.store, SpillStore):
            self.store.spill()
        next_record = (NEXT_KEY, orjson.dumps(self.next_offset))
        if not writes:
            return [next_record]
        chunks = _chunks(writes)
        out: list[tuple[str, bytes | None]] = []
        for index, items in enumerate(chunks):
            head = f'{{"next":{self.next_offset},"part":{index},"parts":{len(chunks)},"writes":{{'
            out.append((f"{PENDING_PREFIX}{index}", head.encode() + b",".join(items) + b"}}"))
        out += writes
        out.append(next_record)
        return out

    def _encoded_writes(self) -> list[tuple[str, bytes | None]]:
        """Each key written or deleted since the last checkpoint, with its value
        encoded (None: a tombstone)."""
        writes: list[tuple[str, bytes | None]] = []
        store = self.store
        for key in store.taken():
            value = store.get(key)
            if value is None:
                writes.append((key, None))
                continue
            data = encoded(value)  # callers write what they decoded, never stored bytes
            if self.keep_encoded:  # at rest as its bytes (not a change)
                store.rest(key, data)
            writes.append((key, data))
        return writes


def encoded(value: Any) -> bytes:
    """``value`` as JSON, in a bytes object of its own size. orjson returns the
    buffer it wrote into, at least 4 KiB, with only the length set (ijl/orjson#483):
    a checkpoint of 13k small entities held ~53 MB until it was sent, and 100k
    kept 412 MB of RSS against 24 MB copied (2026-11-26). The copy costs ~0.2 µs."""
    return bytes(memoryview(orjson.dumps(value)))


def _chunks(writes: Iterable[tuple[str, bytes | None]]) -> list[list[bytes]]:
    """The ``"key":value`` members of the write set, in parts of at most about
    PENDING_CHUNK_BYTES each."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for key, value in writes:
        item = orjson.dumps(key) + b":" + (b"null" if value is None else value)
        if chunks[-1] and size + len(item) > PENDING_CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item) + 1
    return chunks


class Schedule:
    """When each key is next due, in a heap with one live entry per key: setting a
    key's time again replaces it (the old entry is skipped when it comes up).
    A heap of every time ever pushed grew with every touch of a customer whose
    next due time is the churn horizon, 90 days of event time away."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._at: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._at)

    def set(self, key: str, at: float | None) -> None:
        """Due at ``at`` (None: not due at all)."""
        if at is None:
            self._at.pop(key, None)
            return
        if self._at.get(key) == at:
            return
        self._at[key] = at
        heapq.heappush(self._heap, (at, key))
        if len(self._heap) > 2 * len(self._at) + 1024:  # mostly replaced entries
            self._heap = [(due, k) for k, due in self._at.items()]
            heapq.heapify(self._heap)

    def due(self, watermark: float) -> list[str]:
        """The keys due at or before ``watermark``, earliest first (no longer
        scheduled: set them again if they are due later)."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= watermark:
            at, key = heapq.heappop(self._heap)
            if self._at.get(key) == at:
                del self._at[key]
                out.append(key)
        return out

    def clear(self) -> None:
        self._heap, self._at = [], {}
