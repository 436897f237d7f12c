"""The simulator: deterministic, realistic enough, and honest about lateness."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from kafka.partitioner.default import murmur2

from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.producers.truth import ground_truth
from touchstream.schemas import Invalid, parse_event
from touchstream.schemas.events import EVENT_TYPES, family

NOISY = SimulationConfig(
    customers=120, seed=5, duplicates=0.1, out_of_order=0.1, late=0.05, malformed=0.01, settle=True
)


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    first = Simulator(NOISY).messages()
    assert first == Simulator(NOISY).messages()
    other = Simulator(SimulationConfig(**{**NOISY.__dict__, "seed": 6})).messages()
    assert [m.value for m in other] != [m.value for m in first]


def test_every_clean_event_validates_keyed_and_routed_like_the_emitter() -> None:
    config = SimulationConfig(customers=150, duration_s=2 * 86_400, seed=3)
    types: Counter[str] = Counter()
    for message in Simulator(config).messages():
        event = parse_event(message.value)
        assert not isinstance(event, Invalid), event
        assert message.key == event.identity.encode()
        assert message.family == family(event.event_type)
        types[event.event_type] += 1
    assert set(types) == set(EVENT_TYPES)
    # Rates a storefront would recognise: most sessions browse, fewer buy.
    assert types["product_view"] > types["add_to_cart"] > types["order_placed"]
    assert types["checkout_started"] > types["order_placed"] > types["nps_response"]


def test_events_are_ordered_and_within_the_simulated_span() -> None:
    config = SimulationConfig(customers=40, seed=9)
    times = [
        datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00"))
        for e in Simulator(config).events()
    ]
    assert times == sorted(times)
    assert config.start <= times[0] and times[-1] <= config.end


def test_noise_is_what_was_asked_and_the_truth_accounts_for_every_message() -> None:
    messages = Simulator(NOISY).messages()
    kinds = Counter(m.kind.split(":")[0] for m in messages)
    truth = ground_truth(messages)  # raises if any message's lateness were ambiguous
    clean = sum(1 for _ in Simulator(NOISY).events())
    assert kinds["event"] + kinds["out_of_order"] + kinds["late"] == clean == truth.events
    assert truth.duplicates == kinds["duplicate"] == pytest.approx(0.1 * clean, rel=0.25)
    assert kinds["out_of_order"] == pytest.approx(0.1 * clean, rel=0.25)
    assert truth.late == kinds["late"] > 0
    assert sum(truth.dead_letters.values()) == kinds["malformed"] == round(0.01 * clean)
    assert truth.messages == len(messages)
    assert truth.undecided == {"checkout_abandonment": 0, "cart_abandonment": 0}  # settled


def test_malformed_messages_are_what_they_claim() -> None:
    config = SimulationConfig(customers=30, seed=2, malformed=0.05)
    for message in Simulator(config).messages():
        if message.kind.startswith("malformed:"):
            parsed = parse_event(message.value)
            assert isinstance(parsed, Invalid)
            assert parsed.reason == message.kind.split(":")[1]


def test_identify_carries_an_email_for_the_stream_to_pseudonymise() -> None:
    config = SimulationConfig(customers=20, seed=1, start=datetime(2026, 1, 1, tzinfo=UTC))
    identifies = [e for e in Simulator(config).events() if e["event_type"] == "identify"]
    assert identifies and all("@" in e["properties"]["email"] for e in identifies)
    assert json.loads(json.dumps(identifies[0]))["customer_id"]


def test_with_a_partition_count_the_settling_tail_reaches_every_partition() -> None:
    config = SimulationConfig(customers=5, seed=4, settle=True, partitions=7)
    tail = [m for m in Simulator(config).messages() if m.key.startswith(b"settle-")]
    reached = {(m.family, (murmur2(m.key) & 0x7FFFFFFF) % 7) for m in tail}
    assert reached == {(f, p) for f in ("clickstream", "orders") for p in range(7)}
    for message in tail:  # valid, anonymous, and at the settling time
        event = parse_event(message.value)
        assert not isinstance(event, Invalid), event
        assert event.customer_id is None and event.occurred_at == config.settle_at
    truth = ground_truth(Simulator(config).messages())
    assert truth.undecided == {"checkout_abandonment": 0, "cart_abandonment": 0}
