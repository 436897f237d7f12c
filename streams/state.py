"""State helpers for agents that keep their state in a Faust table: writes that
wait for the outputs they lead to (:class:`WriteBehind`), and one partition's
share of a table shared by many kinds of state (:class:`PartitionStore`)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

Entity = dict[str, Any]

_DELETED = object()


class WriteBehind(MutableMapping[str, Any]):
    """A mapping whose writes wait in an overlay until :meth:`apply`, which writes
    each key changed since once: an agent folding a bundle of many items into a
    Faust table logs one changelog record per changed key, not one per item."""

    def __init__(self, store: MutableMapping[str, Any]) -> None:
        self._store = store
        self._pending: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        value = self._pending[key] if key in self._pending else self._store[key]
        if value is _DELETED:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._pending[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._pending[key] = _DELETED

    def __iter__(self) -> Iterator[str]:
        pending = dict(self._pending)
        yield from (k for k in list(self._store.keys()) if k not in pending)
        yield from (k for k, v in pending.items() if v is not _DELETED)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def apply(self) -> None:
        pending, self._pending = self._pending, {}
        for key, value in pending.items():
            if value is _DELETED:
                if key in self._store:
                    del self._store[key]
            else:
                self._store[key] = value


class PartitionStore(MutableMapping[str, Entity]):
    """The entities of one partition inside a store shared by all (a Faust table
    holds every partition a worker owns, and several kinds of state): keys carry a
    prefix and values their partition, so a tracker restored after a restart
    reschedules only its own.

    Writes wait in an overlay until :meth:`apply`: the worker applies them after
    the outputs they led to (decisions) are flushed. Applied first, a decision
    could reach the table's changelog while its KPI contribution died with the
    worker; the replayed message then finds the entity decided and says nothing.
    Applied after, a replay decides again, with the same numbering (deduplicated
    downstream)."""

    def __init__(self, store: MutableMapping[str, Any], partition: int, prefix: str = "") -> None:
        self._overlay = WriteBehind(store)
        self._partition = partition
        self._prefix = f"{prefix}|" if prefix else ""

    def __getitem__(self, key: str) -> Entity:
        value = self._overlay.get(self._prefix + key)
        if value is None:
            raise KeyError(key)
        return dict(value)

    def __setitem__(self, key: str, value: Entity) -> None:
        self._overlay[self._prefix + key] = {**value, "p": self._partition}

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        del self._overlay[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        prefix, cut = self._prefix, len(self._prefix)
        for k in list(self._overlay):
            if k.startswith(prefix):
                value = self._overlay.get(k)
                if value and value.get("p") == self._partition:
                    yield k[cut:]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def apply(self) -> None:
        """Write the overlay to the underlying store."""
        self._overlay.apply()
