from __future__ import annotations

from touchstream.streams.outcomes import Decision, OutcomeTracker

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
    assert t.decide(T + 99 * MIN) == []
    t.forget_decided_before(T + 99 * MIN)
    assert t._decided == {}


def test_progress_without_a_start_is_forgotten() -> None:
    t = tracker()
    t.touch("c7", "payment", T)
    assert t.decide(T + 29 * MIN) == [] and len(t) == 1
    assert t.decide(T + 30 * MIN) == [] and len(t) == 0
