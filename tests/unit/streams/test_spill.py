"""The outcome state beyond memory (streams/spill.py): a partition spilling all but
a few entities to its file decides exactly what one in memory decides, through
checkpoints and a restore, and keeps no more than it should in memory."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.streams.test_outcomes import day_of_steps, run
from tests.unit.streams.test_state import compacted
from touchstream.streams.outcome_stage import OutcomePartition
from touchstream.streams.spill import SpillError, SpillStore
from touchstream.streams.state import BatchState, Changes, PrefixedStore, Schedule, entries

MIN = 60.0
T = 1_000_000.0


def spilled(directory: Path, records: dict[str, bytes | None], cache: int) -> SpillStore:
    store = SpillStore(directory, "outcomes-0", cache)
    store.load(records)
    return store


def partitions(directory: Path, cache: int) -> tuple[OutcomePartition, OutcomePartition]:
    memory = OutcomePartition(0, 30 * MIN, 6 * 3600)
    return memory, OutcomePartition(0, 30 * MIN, 6 * 3600, spilled(directory, {}, cache))


@pytest.mark.parametrize(("seed", "cache"), [(5, 3), (11, 0), (17, 40)])
def test_a_spilling_partition_decides_and_checkpoints_as_one_in_memory(
    tmp_path: Path, seed: int, cache: int
) -> None:
    memory, spilling = partitions(tmp_path, cache)
    log: list[tuple[str, bytes | None]] = []
    checkpoints = said = 0  # said: steps that returned something (decisions, forwards)
    for offset, (step, args) in enumerate(day_of_steps(seed, customers=150, every=40)):
        if step == "checkpoint":
            memory.next_offset = spilling.next_offset = offset
            records = memory.checkpoint()
            assert spilling.checkpoint() == records
            assert isinstance(spilling.store, SpillStore)
            assert spilling.store.in_memory() <= cache
            log += records
            checkpoints += 1
            if checkpoints % 10 == 0:  # a restart: both restored from the topic
                memory = OutcomePartition(0, 30 * MIN, 6 * 3600, compacted(log))
                spilling = OutcomePartition(
                    0, 30 * MIN, 6 * 3600, spilled(tmp_path, compacted(log), cache)
                )
            continue
        result = run(spilling, step, args)
        assert result == run(memory, step, args)
        said += bool(result) and result != ([], [], 0)
    assert checkpoints > 20 and said > 50
    assert len(spilling.store) == len(memory.store) > 10
    assert dict(entries(spilling.book.store)) == dict(entries(memory.book.store))


def test_the_file_is_gone_once_open_and_holds_what_memory_does_not(tmp_path: Path) -> None:
    store = SpillStore(tmp_path, "outcomes-3", cache_entries=2)
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing left behind, even by a kill
    customers = PrefixedStore(store, "customer")
    for name in "abcde":
        customers[name] = {"n": name}
    store.taken()
    for name in "abcde":
        store.rest(f"customer|{name}", f'{{"n":"{name}"}}'.encode())
    store.spill()
    assert store.in_memory() == 2 and len(store) == 5 and len(customers) == 5
    assert customers["a"] == {"n": "a"} and store.in_memory() == 3  # read back into memory
    del customers["b"]
    store.taken()
    store.spill()
    assert sorted(customers) == ["a", "c", "d", "e"] and len(store) == 4
    assert customers.get("b") is None and "customer|b" not in store


def test_due_times_follow_their_entity_to_the_file_and_back(tmp_path: Path) -> None:
    store = SpillStore(tmp_path, "outcomes-0", cache_entries=0)
    customers = PrefixedStore(store, "customer")
    due = customers.schedule()
    due.set("new", T + 5)  # before the entity's first write (AnonymousBook does so)
    customers["new"] = {"x": 1}
    customers["old"] = {"x": 2}
    due.set("old", T + 1)
    for key in store.taken():
        store.rest(key, b'{"x":0}')
    store.spill()
    assert store.in_memory() == 0 and len(due) == 2
    due.set("old", T + 3)  # on disk: its row's due time
    assert due.due(T + 2) == []
    assert customers["new"] == {"x": 0}  # back in memory, due time with it
    assert due.due(T + 10) == ["old", "new"]
    assert due.due(T + 10) == [] and len(due) == 0


def test_a_rebuild_reads_every_entity_without_keeping_them(tmp_path: Path) -> None:
    memory = OutcomePartition(0, 30 * MIN, 6 * 3600)
    for i in range(50):
        memory.book.add(f"c{i}", [[T + i, "order", "web", "checkout", False, ""]])
    records = compacted(memory.checkpoint())
    part = OutcomePartition(0, 30 * MIN, 6 * 3600, spilled(tmp_path, records, 5))
    assert isinstance(part.store, SpillStore)
    assert part.store.in_memory() == 0 and len(part.book.store) == 50
    assert len(part.book.decide(T + 100)) == len(memory.book.decide(T + 100)) > 0


def test_only_a_state_kept_encoded_can_spill(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="keep_encoded"):
        BatchState(spilled(tmp_path, {}, 1))


# A model: the same operations on a SpillStore (small memory) and on a dict with
# an in-memory Schedule give the same reads and the same due keys. A spilled
# entity's due time lives with it: set for an entity not written yet, it waits
# for that write (as AnonymousBook does), and a deleted entity is not due.
KEYS = st.sampled_from(["a", "b", "c"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers(0, 99)),
        st.tuples(st.just("del"), KEYS, st.just(0)),
        st.tuples(st.just("get"), KEYS, st.just(0)),
        st.tuples(st.just("due_at"), KEYS, st.integers(0, 60)),
        st.tuples(st.just("new_due"), KEYS, st.integers(0, 60)),
        st.tuples(st.just("undue"), KEYS, st.just(0)),
        st.tuples(st.just("due"), st.just(""), st.integers(0, 60)),
        st.tuples(st.just("checkpoint"), st.just(""), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(ops=OPS, cache=st.integers(0, 3))
def test_spill_store_behaves_as_a_dict_with_a_schedule(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]], cache: int
) -> None:
    store = SpillStore(tmp_path_factory.mktemp("spill"), "model", cache)
    spill_view = PrefixedStore(store, "e")
    spill_due = spill_view.schedule()
    model_store = Changes()
    model, model_due = PrefixedStore(model_store, "e"), Schedule()
    clock = 0
    for op, key, n in ops:
        if op == "set":
            spill_view[key] = model[key] = {"n": n}
        elif op == "del":
            assert (key in spill_view) == (key in model)
            if key in model:
                del spill_view[key], model[key]
                model_due.set(key, None)
        elif op == "get":
            assert spill_view.get(key) == model.get(key)
        elif op == "due_at" and key in model:
            spill_due.set(key, float(clock + n))
            model_due.set(key, float(clock + n))
        elif op == "new_due" and key not in model:
            spill_due.set(key, float(clock + n))
            model_due.set(key, float(clock + n))
            spill_view[key] = model[key] = {"n": n}
        elif op == "undue":
            spill_due.set(key, None)
            model_due.set(key, None)
        elif op == "due":
            clock += n
            assert spill_due.due(float(clock)) == model_due.due(float(clock))
        elif op == "checkpoint":
            for written in store.taken():
                value = store.get(written)
                if value is not None:
                    store.rest(written, orjson.dumps(value))
            store.spill()
            assert store.in_memory() <= cache
        assert len(store) == len(model_store)
    assert sorted(spill_view) == sorted(model) and len(spill_due) == len(model_due)
    assert len(store) == len(model_store)


def test_a_checkpoint_cut_short_rolls_forward_into_the_file(tmp_path: Path) -> None:
    """Restored from a checkpoint whose write set went out and only some of its
    keys did, the rolled-forward entities (decoded from the write set, not from
    their own records) spill and read back like any other."""
    memory = OutcomePartition(0, 30 * MIN, 6 * 3600)
    memory.next_offset = 1
    log = memory.checkpoint()
    for i in range(5):
        memory.book.add(f"c{i}", [[T + i, "order", "web", "checkout", False, ""]])
    memory.next_offset = 2
    batch = memory.checkpoint()
    cut = [r for r in batch if r[0].startswith("#pending|")] + batch[-3:-2]  # one key, no #next
    part = OutcomePartition(0, 30 * MIN, 6 * 3600, spilled(tmp_path, compacted(log + cut), 0))
    assert part.next_offset == 2
    part.next_offset = 3
    part.checkpoint()  # every entity to the file, those rolled forward included
    assert isinstance(part.store, SpillStore) and part.store.in_memory() == 0
    assert dict(entries(part.book.store)) == dict(entries(memory.book.store))


def test_a_data_dir_that_cannot_hold_the_file_says_what_to_do(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with pytest.raises(SpillError, match="OUTCOME_CACHE_ENTRIES=0"):
        SpillStore(blocked / "state", "outcomes-0", 10)
