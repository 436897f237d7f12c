from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.samples import wire
from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.schemas import Invalid, parse_object
from touchstream.schemas.events import AnyEvent
from touchstream.streams.customers import anonymous_touch_of, link_of, touch_of
from touchstream.streams.outcome_stage import OutcomePartition
from touchstream.streams.outcomes import (
    KINDS,
    Decision,
    OutcomeTracker,
    apply,
    combined_watermark,
    decision_contributions,
    ops_of,
)
from touchstream.streams.state import Changes, PrefixedStore

MIN = 60.0
T = 1_000_000.0


def tracker() -> OutcomeTracker:
    return OutcomeTracker(timeout_s=30 * MIN)


def test_completed_within_the_timeout_at_its_last_step() -> None:
    t = tracker()
    t.start("c1", "web", "checkout", T)
    t.touch("c1", "payment", T + 5 * MIN)
    t.complete("c1", T + 10 * MIN)
    assert t.decide(T + 9 * MIN) == []  # the watermark has not reached the order yet
    assert t.decide(T + 10 * MIN) == [Decision("c1", "web", "payment", T, abandoned=False)]
    assert t.decide(T + 99 * MIN) == []  # decided once
    assert len(t) == 0


def test_no_order_is_abandoned_when_the_timeout_is_exactly_reached() -> None:
    t = tracker()
    t.start("c2", "mobile_app", "checkout", T)
    t.touch("c2", "checkout", T + 2 * MIN)
    assert t.decide(T + 30 * MIN - 1) == []
    assert t.decide(T + 30 * MIN) == [Decision("c2", "mobile_app", "checkout", T, abandoned=True)]


def test_an_order_after_the_timeout_does_not_save_it() -> None:
    t = tracker()
    t.start("c3", "web", "checkout", T)
    t.touch("c3", "payment", T + 20 * MIN)
    t.touch("c3", "review", T + 31 * MIN)  # after the deadline: not its outcome touchpoint
    t.complete("c3", T + 31 * MIN)
    assert t.decide(T + 31 * MIN) == [Decision("c3", "web", "payment", T, abandoned=True)]


def test_an_order_exactly_at_the_timeout_completes() -> None:
    t = tracker()
    t.start("c4", "web", "checkout", T)
    t.complete("c4", T + 30 * MIN)
    assert t.decide(T + 30 * MIN) == [Decision("c4", "web", "checkout", T, abandoned=False)]


def test_out_of_order_input_gives_the_same_decision() -> None:
    t = tracker()
    t.complete("c5", T + 8 * MIN)  # the order is read before the start
    t.touch("c5", "payment", T + 6 * MIN)
    t.start("c5", "whatsapp", "checkout", T)
    assert t.decide(T + 8 * MIN) == [Decision("c5", "whatsapp", "payment", T, abandoned=False)]


def test_stragglers_of_a_decided_entity_change_nothing() -> None:
    t = tracker()
    t.start("c6", "web", "checkout", T)
    [decision] = t.decide(T + 30 * MIN)
    assert decision.abandoned
    t.complete("c6", T + 5 * MIN)  # a late order: the outcome was settled
    t.start("c6", "app", "checkout", T + 40 * MIN)  # a straggling start: nothing new
    assert t.decide(T + 59 * MIN) == [] and set(t.store) == {"c6"}


def test_a_decided_entity_is_forgotten_one_timeout_after_its_decision() -> None:
    # The state holds open checkouts, not every checkout ever decided: a decided
    # one is kept for stragglers for one more timeout, then dropped.
    t = tracker()
    t.start("c7", "web", "checkout", T)
    t.start("c8", "web", "checkout", T + 10 * MIN)
    t.complete("c8", T + 12 * MIN)
    assert [d.entity_id for d in t.decide(T + 30 * MIN)] == ["c8", "c7"]
    assert t.decide(T + 42 * MIN - 1) == [] and set(t.store) == {"c7", "c8"}
    assert t.decide(T + 42 * MIN) == [] and set(t.store) == {"c7"}  # c8: 12 + 30 min
    again = OutcomeTracker(30 * MIN, store=dict(t.store))  # after a restart
    again.rebuild()
    assert again.decide(T + 60 * MIN) == [] and dict(again.store) == {}


def test_progress_without_a_start_is_forgotten() -> None:
    t = tracker()
    t.touch("c7", "payment", T)
    assert t.decide(T + 29 * MIN) == [] and len(t) == 1
    assert t.decide(T + 30 * MIN) == [] and len(t) == 0


def test_state_survives_a_restart_through_its_store() -> None:
    store: dict[str, dict] = {}
    first = OutcomeTracker(timeout_s=30 * MIN, store=store)
    first.start("c8", "web", "checkout", T)
    first.touch("c8", "payment", T + 3 * MIN)
    restarted = OutcomeTracker(timeout_s=30 * MIN, store=store)  # same (restored) store
    restarted.rebuild()
    restarted.complete("c8", T + 4 * MIN)
    assert restarted.decide(T + 4 * MIN) == [Decision("c8", "web", "payment", T, abandoned=False)]


def test_store_values_are_replaced_not_mutated() -> None:
    t = tracker()
    t.start("c9", "web", "checkout", T)
    before = t.store["c9"]
    t.touch("c9", "payment", T + 1)
    assert t.store["c9"] is not before and len(before["touches"]) == 1


def parsed(event_type: str, **properties: object) -> AnyEvent:
    data = wire(event_type)
    data["properties"].update(properties)
    event = parse_object(data)
    assert not isinstance(event, Invalid), event
    return event


def test_events_become_checkout_and_cart_steps() -> None:
    started = ops_of(parsed("checkout_started", checkout_id="K", cart_id="R"))
    assert [(o.kind, o.entity_id, o.action) for o in started] == [
        ("checkout", "K", "start"),
        ("cart", "R", "complete"),
    ]
    assert started[0].channel == "web" and started[0].touchpoint == "checkout"
    assert [o.action for o in ops_of(parsed("checkout_step", checkout_id="K"))] == ["touch"]
    assert [o.action for o in ops_of(parsed("order_placed", checkout_id="K"))] == ["complete"]
    assert ops_of(parsed("order_placed", checkout_id=None)) == []  # no checkout to complete
    assert [(o.kind, o.action) for o in ops_of(parsed("add_to_cart"))] == [("cart", "start")]
    assert [(o.kind, o.action) for o in ops_of(parsed("remove_from_cart"))] == [("cart", "touch")]
    assert ops_of(parsed("payment_failed")) == []


def test_a_decision_counts_once_at_its_start_under_its_group_and_overall() -> None:
    decision = Decision("K", "web", "payment", T, abandoned=True)
    out = decision_contributions("checkout", decision)
    assert {(c.kpi, c.group.split("|", 1)[1], c.at) for c in out} == {
        ("checkout_abandonment", "web|payment", T),
        ("checkout_abandonment", "all|all", T),
    }
    assert dict(out[0].counts) == {"abandoned": 1.0, "decided": 1.0}


def test_prefixed_stores_share_a_store_without_seeing_each_other() -> None:
    table = Changes()
    carts, marks = PrefixedStore(table, "cart"), PrefixedStore(table, "mark|3")
    carts["x"] = {"first_seen": T, "touches": []}
    marks["clicks:0"] = {"at": T, "idle": False}
    assert set(table) == {"cart|x", "mark|3|clicks:0"} and table.taken() == sorted(table)
    assert set(PrefixedStore(table, "cart")) == {"x"} and len(marks) == 1
    assert PrefixedStore(table, "mark|3")["clicks:0"]["at"] == T
    # An entity changes when written back (and is then in the next checkpoint's
    # write set); callers never change one in place (next test).
    carts["x"] = {**carts["x"], "touches": ["kept"]}
    assert table["cart|x"]["touches"] == ["kept"] and table.taken() == ["cart|x"]
    del carts["x"]
    assert set(carts) == set() and table.taken() == ["cart|x"]
    with pytest.raises(KeyError):
        del carts["x"]


def test_every_change_to_a_stored_entity_is_a_write_back() -> None:
    """The stores hand out their entities as they are (no copy): a tracker or book
    that changed one in place would change the state without the checkpoint
    knowing. A day of simulated traffic through one partition, every step checked
    against a deep copy of the state before it."""
    part = OutcomePartition(0, abandonment_timeout_s=30 * MIN, churn_horizon_s=6 * 3600)
    table = part.store
    steps = 0
    for step, args in day_of_steps(5, customers=100, every=50):
        if step == "checkpoint":
            continue
        before = {key: orjson.dumps(value) for key, value in table.items()}
        run(part, step, args)
        written = set(table.taken())
        after = {key: orjson.dumps(value) for key, value in table.items()}
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert changed <= written, f"changed in place: {sorted(changed - written)[:3]}"
        steps += 1
    assert steps > 1000 and len(table) > 0


def test_entities_checkpointed_with_their_partition_still_restore() -> None:
    # Builds that kept every partition in one table stamped entities with "p".
    table = Changes()
    table["checkout|a"] = {
        "first_seen": T,
        "started_at": T,
        "channel": "web",
        "touches": [[T, "checkout"]],
        "p": 0,
    }
    again = OutcomeTracker(30 * MIN, store=PrefixedStore(table, "checkout"))
    again.rebuild()
    assert [d.entity_id for d in again.decide(T + 30 * MIN)] == ["a"]


def test_a_batch_not_checkpointed_is_decided_again_after_a_restart() -> None:
    """Writes go straight to the partition's state, which is checkpointed only
    after the batch's outputs are flushed: a crash in between restores the state
    from before the batch, and the replay decides the same entities again."""
    part = OutcomePartition(0, 30 * MIN, 90 * 86_400.0)
    checkouts = part.trackers["checkout"]
    checkouts.start("a", "web", "checkout", T)
    checkouts.start("b", "web", "checkout", T)
    part.next_offset = 1
    before = dict(part.checkpoint())
    assert [d.entity_id for d in checkouts.decide(T + 30 * MIN)] == ["a", "b"]
    # ...the worker dies before this batch's checkpoint:
    again = OutcomePartition(0, 30 * MIN, 90 * 86_400.0, before)
    decided = again.trackers["checkout"].decide(T + 30 * MIN)
    assert [d.entity_id for d in decided] == ["a", "b"] and again.next_offset == 1
    part.next_offset = 2
    after = OutcomePartition(0, 30 * MIN, 90 * 86_400.0, {**before, **dict(part.checkpoint())})
    assert after.trackers["checkout"].decide(T + 60 * MIN) == []  # decided: said once


def test_combined_watermark_waits_for_the_slowest_source_idle_or_not() -> None:
    a = {"at": 100.0, "idle": False}
    b = {"at": 40.0, "idle": False}
    empty_idle = {"at": None, "idle": True}
    backlog = {"at": None, "idle": False}  # read nothing yet, messages waiting
    quiet = {"at": 30.0, "idle": True, "expired": False}  # fully read a moment ago
    gone_quiet = {"at": 30.0, "idle": True, "expired": True}  # for IDLE_SOURCE_S
    done = {"at": 500.0, "idle": True, "expired": True}
    assert combined_watermark([a, b]) == 40.0
    assert combined_watermark([a, b, None]) is None  # a source not heard from yet blocks
    assert combined_watermark([a, backlog]) is None  # so does one with nothing read yet
    assert combined_watermark([a, empty_idle]) == 100.0  # an empty partition does not block
    # Fully read a moment ago still bounds the others: new messages may wait on it
    # that nobody has read (its owner may be gone: the bug after a worker kill).
    assert combined_watermark([a, quiet]) == 30.0
    assert combined_watermark([a, {**quiet, "expired": None}]) == 30.0  # older reports
    assert combined_watermark([a, gone_quiet]) == 100.0  # quiet long enough: left out
    assert combined_watermark([b, done]) == 40.0
    assert combined_watermark([done, gone_quiet]) == 500.0  # all quiet: the latest reached
    assert combined_watermark([done, quiet]) == 30.0
    assert combined_watermark([done, empty_idle]) == 500.0
    assert combined_watermark([empty_idle]) is None


def day_of_steps(seed: int, customers: int, every: int) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """A day of simulated traffic through one partition as the outcome stage
    applies it (see :func:`run`), with a decision pass (the watermark 10 min
    behind the event) and a checkpoint every ``every`` events."""
    config = SimulationConfig(customers=customers, duration_s=86_400, seed=seed)
    for index, wire_event in enumerate(Simulator(config).events()):
        event = parse_object(wire_event)
        assert not isinstance(event, Invalid)
        for op in ops_of(event):
            yield "op", (op,)
        if (touched := touch_of(event)) is not None:
            yield "touch", touched
        if (linked := link_of(event)) is not None:
            yield "link", linked
        if (held := anonymous_touch_of(event)) is not None:
            yield "anonymous", held
        if index % every == 0:
            yield "decide", (event.occurred_at.timestamp() - 600,)
            yield "checkpoint", ()


def run(part: OutcomePartition, step: str, args: tuple[Any, ...]) -> Any:
    if step == "op":
        return apply(part.trackers[args[0].kind], args[0])
    if step == "touch":
        return part.book.add(args[0], [args[1]])
    if step == "link":
        return part.anonymous.link(*args)
    if step == "anonymous":
        return part.anonymous.add(args[0], [args[1]])
    settled = args[0]
    decisions = [d for kind in KINDS for d in part.trackers[kind].decide(settled)]
    return decisions, part.book.decide(settled), part.anonymous.expire(settled)
