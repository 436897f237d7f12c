"""A partition's state beyond a number of entities in memory: the rest in a local
SQLite file (:class:`SpillStore`), with their due times (:class:`SpilledSchedule`).

The checkpoint topic stays the state's only durable copy: the file is a cache of
what is checkpointed already, made on restore and gone with the state. It is
unlinked as soon as it is open, so neither a stop nor a SIGKILL leaves it behind
(SQLite with no journal never opens the file by its name again; the directory
only holds the name until then). What is in memory:

- the entities written or read since the last checkpoint, and then the most
  recently written or read up to ``cache_entries`` (evicted oldest first, right
  after a checkpoint, when every entity in memory is written to the topic);
- the due times of the entities in memory. An evicted entity's due time rests
  in its row (the ``due`` column, indexed) and comes back with it.

A customer or anonymous id is read again at its next interaction or due time,
often hours or days of event time later: those are what the file holds."""

from __future__ import annotations

import heapq
import os
import sqlite3
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from itertools import islice
from pathlib import Path
from typing import Any

_GONE: Any = object()  # a deleted entity whose row (if any) goes at the next eviction
_MISSING: Any = object()
FLUSH_DUE_UPDATES = 10_000  # due times of entities on disk, written at most this many late
SCAN_CHUNK = 2_000


class SpillError(RuntimeError):
    """The local file of a spilling store cannot be made."""


def _upper(prefix: str) -> str:
    """The least string above every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _prefix_of(key: str) -> str:
    return key[: key.index("|") + 1] if "|" in key else ""


class SpillStore(MutableMapping[str, Any]):
    """A :class:`~touchstream.streams.state.BatchState` store (values: JSON bytes
    at rest, dicts once written) that keeps at most ``cache_entries`` entities in
    memory after each checkpoint (:meth:`spill`) and the rest in a SQLite file.
    It records what changed since :meth:`taken`, like
    :class:`~touchstream.streams.state.Changes`; a restore fills it with
    :meth:`load`. Single-threaded: the stage's event loop."""

    def __init__(self, directory: Path, name: str, cache_entries: int) -> None:
        path = directory / f"{name}-{os.getpid()}-{id(self):x}.sqlite"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA user_version")  # opens (creates) the file
            path.unlink()
        except (OSError, sqlite3.Error) as exc:
            raise SpillError(
                f"cannot keep the outcome state's file in {directory} ({exc}): make "
                "TOUCHSTREAM_DATA_DIR writable, or set STREAMS__OUTCOME_CACHE_ENTRIES=0 "
                "to keep all of it in memory"
            ) from exc
        for pragma in (
            "journal_mode=OFF",  # a cache of the checkpoint topic: nothing to recover
            "synchronous=OFF",
            "locking_mode=EXCLUSIVE",  # no lock and change check per statement
            "cache_size=-8000",  # KiB: SQLite's own page cache, bounded
            "temp_store=MEMORY",
        ):
            db.execute(f"PRAGMA {pragma}")
        db.execute(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, due REAL) WITHOUT ROWID"
        )
        db.execute("CREATE INDEX kv_due ON kv (due) WHERE due IS NOT NULL")
        self._db = db
        weakref.finalize(self, db.close)
        self.cache_entries = cache_entries
        self.changed: set[str] = set()
        self._hot: dict[str, Any] = {}  # key → value (bytes at rest, dict written, _GONE)
        self._due: dict[str, float] = {}  # due times of keys in memory
        self._heaps: dict[str, list[tuple[float, str]]] = {}  # by schedule prefix
        self._disk_due: dict[str, float | None] = {}  # set for keys on disk, not yet written
        self._count = 0  # entities, wherever they are (the worker's state-keys gauge)
        self._gone: set[str] = set()  # keys deleted since the last spill
        # Rows come only with load() and spill(): until then a key looked up and not
        # found is not looked up again, and an empty file not at all.
        self._absent: set[str] = set()
        self._filled = False

    # -- the mapping -------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        value = self._hot.get(key, _MISSING)
        if value is _MISSING:
            value = self._promote(key)
        return default if value is _GONE or value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        if value is None:  # as in a checkpoint: no value is no entity
            self.pop(key, None)
            return
        hot = self._hot
        if key not in hot and self._promote(key) is None:  # new: due times set before
            self._count += 1
            at = self._disk_due.pop(key, None)
            if at is not None:
                self._schedule_hot(key, at, self._heaps.get(_prefix_of(key)))
        elif hot.pop(key) is _GONE:
            self._count += 1
            self._gone.discard(key)
        hot[key] = value  # the most recently written evicted last
        self.changed.add(key)

    def __delitem__(self, key: str) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        self._hot[key] = _GONE
        self._gone.add(key)
        self._count -= 1
        self._due.pop(key, None)
        self.changed.add(key)

    def __iter__(self) -> Iterator[str]:
        for key, _ in self.scan(""):
            yield key

    def __len__(self) -> int:
        return self._count

    def taken(self) -> list[str]:
        keys, self.changed = sorted(self.changed), set()
        return keys

    def rest(self, key: str, data: bytes) -> None:
        """``key``'s value as its checkpointed bytes (not a change)."""
        self._hot[key] = data

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every key starting with ``prefix`` and its value, those in memory first,
        without bringing any into memory (a restore's rebuild reads them all)."""
        hot = [(k, v) for k, v in self._hot.items() if k.startswith(prefix) and v is not _GONE]
        yield from hot
        after, upper = prefix, _upper(prefix) if prefix else "\U0010ffff"
        while True:
            rows = self._db.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?",
                (after, upper, SCAN_CHUNK),
            ).fetchall()
            for key, value in rows:
                if key not in self._hot:
                    yield key, value
            if len(rows) < SCAN_CHUNK:
                return
            after = rows[-1][0] + "\x00"

    # -- restore -----------------------------------------------------------------

    def load(self, records: Mapping[str, bytes | None]) -> None:
        """Checkpoint records as read (None: a tombstone), straight to the file."""
        db = self._db
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
            [(k, bytes(v)) for k, v in records.items() if v is not None],
        )
        gone = [(k,) for k, v in records.items() if v is None]
        db.executemany("DELETE FROM kv WHERE key = ?", gone)
        db.execute("COMMIT")
        self._absent.clear()
        self._filled = True

    def take(self, prefix: str, exact: bool = False) -> dict[str, bytes]:
        """Remove the records under ``prefix`` (or that one key) from the file and
        return them: the checkpoint's bookkeeping, not state. After the restore's
        :meth:`load` calls, before any write: what the file holds is then counted."""
        found = {k: v for k, v in self.scan(prefix) if not exact or k == prefix}
        self._db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in found])
        (self._count,) = self._db.execute("SELECT count(*) FROM kv").fetchone()
        return found

    # -- memory bound --------------------------------------------------------------

    def spill(self) -> None:
        """After a checkpoint (nothing changed since): deleted entities out of the
        file, and the oldest in memory beyond ``cache_entries`` into it."""
        if self.changed:
            raise RuntimeError("spill() after a checkpoint only: changes not written yet")
        self._absent.clear()  # a batch's lookups at most
        hot, gone = self._hot, self._gone
        for key in gone:
            del hot[key]
        excess = max(0, len(hot) - self.cache_entries)
        # At rest as their checkpointed bytes (BatchState.keep_encoded) or as read.
        rows = [(key, hot.pop(key), self._due.pop(key, None)) for key in list(islice(hot, excess))]
        if not gone and not rows:
            return
        db = self._db
        db.execute("BEGIN")
        db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in gone])
        db.executemany("INSERT OR REPLACE INTO kv (key, value, due) VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
        self._gone = set()
        self._filled = self._filled or bool(rows)

    def in_memory(self) -> int:
        """Entities in memory (deleted ones until the next spill included)."""
        return len(self._hot)

    def file_bytes(self) -> int:
        (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        (size,) = self._db.execute("PRAGMA page_size").fetchone()
        return int(pages) * int(size)

    def _promote(self, key: str) -> Any:
        """``key``'s value from the file, now in memory with its due time; None
        (and nothing kept) if it is not there. Its row's due time is stale from
        now on (:meth:`due` skips and clears it)."""
        if not self._filled or key in self._absent:
            return None
        row = self._db.execute("SELECT value, due FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            self._absent.add(key)
            return None
        value, due = row
        due = self._disk_due.pop(key, due)  # set while on disk, not written yet
        self._hot[key] = value
        if due is not None:
            self._schedule_hot(key, due, self._heaps.get(_prefix_of(key)))
        return value

    # -- due times (SpilledSchedule) --------------------------------------------

    def _schedule_hot(self, key: str, at: float, heap: list[tuple[float, str]] | None) -> None:
        """``key`` (in memory) due at ``at``, in the heap of its schedule."""
        if self._due.get(key) == at:
            return
        self._due[key] = at
        if heap is None:
            return
        heapq.heappush(heap, (at, key))
        if len(heap) > 2 * len(self._due) + 1024:  # mostly replaced or evicted entries
            prefix = _prefix_of(key)
            heap[:] = [(due, k) for k, due in self._due.items() if k.startswith(prefix)]
            heapq.heapify(heap)

    def set_due(self, key: str, at: float | None, heap: list[tuple[float, str]]) -> None:
        if key in self._hot:
            if at is None:
                self._due.pop(key, None)
            else:
                self._schedule_hot(key, at, heap)
            return
        self._disk_due[key] = at  # taken by _promote if the key is written first
        if len(self._disk_due) >= FLUSH_DUE_UPDATES:
            self._flush_due()

    def _flush_due(self) -> None:
        """Due times set for keys on disk, into their rows."""
        if not self._disk_due:
            return
        pending, self._disk_due = self._disk_due, {}
        self._db.executemany(
            "UPDATE kv SET due = ? WHERE key = ?", [(at, key) for key, at in pending.items()]
        )

    def due(self, prefix: str, watermark: float) -> list[str]:
        """The keys under ``prefix`` due at or before ``watermark``, earliest first
        (no longer scheduled)."""
        self._flush_due()
        found: list[tuple[float, str]] = []
        heap = self._heaps[prefix]
        while heap and heap[0][0] <= watermark:
            at, key = heapq.heappop(heap)
            if self._due.get(key) == at and key in self._hot:
                del self._due[key]
                found.append((at, key))
        rows = self._db.execute(
            "SELECT key, due FROM kv WHERE due <= ? AND key >= ? AND key < ?",
            (watermark, prefix, _upper(prefix)),
        ).fetchall()
        if rows:  # no longer scheduled; rows of keys in memory had a stale due time
            self._db.executemany("UPDATE kv SET due = NULL WHERE key = ?", [(k,) for k, _ in rows])
            found += [(at, key) for key, at in rows if key not in self._hot]
        found.sort()
        return [key for _, key in found]

    def scheduled(self, prefix: str) -> int:
        """How many keys under ``prefix`` have a due time (rows of keys in memory
        may still carry a stale one)."""
        self._flush_due()
        rows = self._db.execute(
            "SELECT key FROM kv WHERE due IS NOT NULL AND key >= ? AND key < ?",
            (prefix, _upper(prefix)),
        ).fetchall()
        on_disk = sum(1 for (key,) in rows if key not in self._hot)
        return on_disk + sum(1 for k in self._due if k.startswith(prefix))

    def unschedule(self, prefix: str) -> None:
        self._disk_due = {k: v for k, v in self._disk_due.items() if not k.startswith(prefix)}
        for key in [k for k in self._due if k.startswith(prefix)]:
            del self._due[key]
        self._heaps[prefix].clear()
        self._db.execute(
            "UPDATE kv SET due = NULL WHERE due IS NOT NULL AND key >= ? AND key < ?",
            (prefix, _upper(prefix)),
        )

    def schedule_under(self, prefix: str) -> SpilledSchedule:
        return SpilledSchedule(self, prefix, self._heaps.setdefault(prefix, []))


class SpilledSchedule:
    """:class:`~touchstream.streams.state.Schedule` for one kind of entity of a
    :class:`SpillStore` (keys without their prefix): an entity's due time is in
    memory while the entity is, in its row while it is not."""

    def __init__(self, store: SpillStore, prefix: str, heap: list[tuple[float, str]]) -> None:
        self._store = store
        self._prefix = prefix
        self._heap = heap  # of the due times in memory

    def __len__(self) -> int:
        return self._store.scheduled(self._prefix)

    def set(self, key: str, at: float | None) -> None:
        self._store.set_due(self._prefix + key, at, self._heap)

    def due(self, watermark: float) -> list[str]:
        cut = len(self._prefix)
        return [key[cut:] for key in self._store.due(self._prefix, watermark)]

    def clear(self) -> None:
        self._store.unschedule(self._prefix)
