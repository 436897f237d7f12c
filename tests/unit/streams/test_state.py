from __future__ import annotations

import json
import tracemalloc
from typing import Any

import orjson
import pytest

from touchstream.streams import state as state_module
from touchstream.streams.state import (
    NEXT_KEY,
    PENDING_PREFIX,
    BatchState,
    Changes,
    PrefixedStore,
    Schedule,
    encoded,
)


def test_changes_remember_every_way_a_key_is_written_or_deleted() -> None:
    changes = Changes()
    changes["a"] = 1
    changes.update(b=2)
    changes.setdefault("c", 3)
    assert changes.taken() == ["a", "b", "c"]
    assert changes.taken() == []
    del changes["a"]
    changes.pop("b")
    changes.pop("absent", None)  # nothing was there: not a change
    assert changes.taken() == ["a", "b"]
    changes.clear()
    assert changes.taken() == ["c"] and dict(changes) == {}


def test_encoded_values_take_their_own_size_not_orjsons_buffer() -> None:
    """orjson.dumps hands back its (>= 4 KiB) buffer with the length set; what a
    checkpoint holds until it is sent, and what the outcome stage keeps, is copied
    to its size."""
    entity = {"active": True, "last_touch": [1795700000.123, "web", "checkout"], "churns": []}
    assert encoded(entity) == orjson.dumps(entity)
    tracemalloc.start()
    try:
        held = [encoded(entity) for _ in range(1000)]
        per_value = tracemalloc.get_traced_memory()[0] / len(held)
    finally:
        tracemalloc.stop()
    assert per_value < 256  # ~100 bytes of JSON and a bytes header; orjson's own: ~4 KiB


def batches() -> list[dict[str, object]]:
    """Three batches of writes (None deletes), each ending at a next offset."""
    return [
        {"next": 3, "writes": {"cart|1": {"n": 1}, "cart|2": {"n": 1}}},
        {"next": 5, "writes": {"cart|1": {"n": 2}, "cart|2": None, "cart|3": {"n": 1}}},
        {"next": 9, "writes": {"cart|3": {"n": 2}, "cart|4": {"n": 1}}},
    ]


def run(state: BatchState, batch: dict[str, object]) -> list[tuple[str, bytes | None]]:
    writes = batch["writes"]
    assert isinstance(writes, dict)
    for key, value in writes.items():
        if value is None:
            del state.store[key]
        else:
            state.store[key] = value
    next_offset = batch["next"]
    assert isinstance(next_offset, int)
    state.next_offset = next_offset
    return state.checkpoint()


def compacted(records: list[tuple[str, bytes | None]]) -> dict[str, bytes | None]:
    """A compacted topic read back: the latest value per key."""
    return dict(records)


def test_a_checkpoint_is_the_write_set_then_each_key_then_the_next_offset() -> None:
    state = BatchState()
    run(state, batches()[0])
    records = run(state, batches()[1])
    assert records[0][0] == f"{PENDING_PREFIX}0"
    part = json.loads(records[0][1] or b"")
    assert part == {
        "next": 5,
        "part": 0,
        "parts": 1,
        "writes": {"cart|1": {"n": 2}, "cart|2": None, "cart|3": {"n": 1}},
    }
    assert records[1:] == [
        ("cart|1", b'{"n":2}'),
        ("cart|2", None),  # a tombstone: compaction deletes the key
        ("cart|3", b'{"n":1}'),
        (NEXT_KEY, b"5"),
    ]
    assert state.checkpoint() == [(NEXT_KEY, b"5")]  # nothing changed since


def test_a_restored_state_is_the_state_after_the_last_whole_batch() -> None:
    whole = BatchState()
    log: list[tuple[str, bytes | None]] = []
    for batch in batches():
        log += run(whole, batch)
    restored = BatchState(compacted(log))
    assert (
        dict(restored.store)
        == dict(whole.store)
        == {
            "cart|1": {"n": 2},
            "cart|3": {"n": 2},
            "cart|4": {"n": 1},
        }
    )
    assert restored.next_offset == 9
    assert restored.checkpoint() == [(NEXT_KEY, b"9")]  # restoring is not a change


def test_keys_of_a_stages_own_bookkeeping_are_state_but_the_checkpoints_are_not() -> None:
    # "#" keys other than the next offset and the write set are a stage's state
    # kept apart from its entities (the KPI stage's clock and retention).
    whole = BatchState()
    whole.store["#marks"] = {"raw:0": 5}
    whole.store["cart|1"] = {"n": 1}
    whole.next_offset = 3
    restored = BatchState(compacted(whole.checkpoint()))
    assert dict(restored.store) == {"#marks": {"raw:0": 5}, "cart|1": {"n": 1}}
    assert restored.next_offset == 3


@pytest.mark.parametrize("cut", range(0, 5))
def test_a_checkpoint_cut_short_restores_a_whole_batch(cut: int) -> None:
    # Killed after `cut` records of the last checkpoint (write set, 2 keys, next):
    # before the write set is whole, the state is the one before the batch; after,
    # the batch is rolled forward from the write set.
    state = BatchState()
    log = run(state, batches()[0]) + run(state, batches()[1])
    last = run(state, batches()[2])
    assert len(last) == 4
    restored = BatchState(compacted(log + last[:cut]))
    if cut == 0:
        assert restored.next_offset == 5
        assert dict(restored.store) == {"cart|1": {"n": 2}, "cart|3": {"n": 1}}
    else:
        assert restored.next_offset == 9
        assert dict(restored.store) == dict(state.store)


@pytest.mark.parametrize("cut", range(1, 3))
def test_a_batch_rolled_forward_is_written_again_by_the_next_checkpoint(cut: int) -> None:
    """The keys a successor rolled forward from a write set may have no record of
    their own (the kill came first), and the next checkpoint's write set replaces
    that one: the next checkpoint writes them, so a second restore still has them."""
    state = BatchState()
    log = run(state, batches()[0]) + run(state, batches()[1])
    last = run(state, batches()[2])
    successor = BatchState(compacted(log + last[:cut]))
    more = run(successor, {"next": 11, "writes": {"cart|5": {"n": 1}}})
    again = BatchState(compacted(log + last[:cut] + more))
    assert again.next_offset == 11
    assert dict(again.store) == {**dict(state.store), "cart|5": {"n": 1}}
    quiet = BatchState(compacted(log + last[:cut]))
    quiet.next_offset = 10
    assert dict(BatchState(compacted(log + last[:cut] + quiet.checkpoint())).store) == dict(
        state.store
    )


def test_a_write_set_in_several_parts_counts_only_when_every_part_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_module, "PENDING_CHUNK_BYTES", 20)
    state = BatchState()
    log = run(state, batches()[0])
    last = run(state, batches()[2])
    parts = [r for r in last if r[0].startswith(PENDING_PREFIX)]
    assert len(parts) == 2
    half = BatchState(compacted(log + parts[:1]))
    assert half.next_offset == 3 and "cart|4" not in half.store
    whole = BatchState(compacted(log + parts))
    assert whole.next_offset == 9 and whole.store["cart|4"] == {"n": 1}
    # An older batch's parts left under the same keys are not mistaken for it.
    assert BatchState(compacted(log + last)).store == state.store


def test_a_schedule_keeps_one_time_per_key_and_gives_keys_when_due() -> None:
    schedule = Schedule()
    schedule.set("c1", 100.0)
    schedule.set("c2", 50.0)
    schedule.set("c1", 300.0)  # replaces 100: c1 is not due at 100 any more
    schedule.set("c3", 80.0)
    schedule.set("c3", None)  # not due at all
    assert len(schedule) == 2
    assert schedule.due(200.0) == ["c2"]
    assert schedule.due(200.0) == []  # handed out once
    assert schedule.due(1_000.0) == ["c1"]
    assert len(schedule) == 0


def test_a_schedule_does_not_grow_with_each_new_time_of_the_same_keys() -> None:
    # A customer touched again and again moves its churn horizon each time; the
    # heap of pushed times once grew by one entry per touch.
    schedule = Schedule()
    for step in range(100_000):
        schedule.set(f"c{step % 10}", 1e9 + step)
    assert len(schedule) == 10
    assert len(schedule._heap) <= 2 * 10 + 1024
    assert schedule.due(2e9) == [f"c{k}" for k in range(10)]


class KeptEncoded(BatchState):
    keep_encoded = True


def test_entities_kept_encoded_read_and_checkpoint_as_decoded_ones() -> None:
    """keep_encoded (the outcome stage): what a checkpoint wrote or a restore read
    rests as its bytes until written again; through PrefixedStore nothing tells
    the two apart, and both write the same checkpoints."""
    plain, kept = BatchState(), KeptEncoded()
    topic: dict[str, bytes | None] = {}  # the compacted topic: the latest per key
    steps: list[tuple[dict[str, Any], int]] = [
        ({"a": {"n": 1}, "b": {"n": [1, 2]}}, 3),
        ({"a": lambda old: {**old, "n": old["n"] + 1}, "b": None, "c": {"n": 0}}, 5),
    ]
    for writes, next_offset in steps:
        records: list[list[tuple[str, bytes | None]]] = []
        for state in (plain, kept):
            view = PrefixedStore(state.store, "customer")
            for key, change in writes.items():
                if change is None:
                    del view[key]
                else:
                    view[key] = change(view[key]) if callable(change) else change
            state.next_offset = next_offset
            records.append(state.checkpoint())
        assert records[0] == records[1]
        topic.update(records[1])
        assert all(type(kept.store[key]) is bytes for key in kept.store)  # at rest
        assert dict(PrefixedStore(kept.store, "customer").items()) == dict(
            PrefixedStore(plain.store, "customer").items()
        )
    restored = KeptEncoded(topic)
    assert type(restored.store["customer|a"]) is bytes and restored.next_offset == 5
    view = PrefixedStore(restored.store, "customer")
    assert dict(view.items()) == {"a": {"n": 2}, "c": {"n": 0}}
    assert view.get("a") == {"n": 2} and view.get("b", "gone") == "gone"
    assert restored.checkpoint() == [(NEXT_KEY, b"5")]  # reading is not a change
