from __future__ import annotations

from aiokafka import TopicPartition

from touchstream.streams.intake import ahead

CLICKS = [TopicPartition("clickstream", p) for p in range(3)]
ORDERS = TopicPartition("orders", 0)


def test_partitions_too_far_ahead_of_the_slowest_wait() -> None:
    progress = {
        CLICKS[0]: (1_000.0, False),  # the slowest with records left
        CLICKS[1]: (1_300.0, False),  # exactly the skew ahead: goes on
        CLICKS[2]: (1_301.0, False),
        ORDERS: (9_000.0, False),
    }
    assert ahead(progress, 300) == {CLICKS[2], ORDERS}


def test_a_fully_read_partition_holds_nobody_back_and_is_never_paused_for_nothing() -> None:
    progress = {
        CLICKS[0]: (1_000.0, True),  # read to its end: its time says nothing
        CLICKS[1]: (5_000.0, False),
        ORDERS: (5_200.0, False),
    }
    assert ahead(progress, 300) == set()
    # Everything read: nothing to pause, whatever the times.
    assert ahead({CLICKS[0]: (0.0, True), ORDERS: (9e9, True)}, 300) == set()


def test_a_partition_with_no_event_yet_is_read_first() -> None:
    progress = {CLICKS[0]: (float("-inf"), False), ORDERS: (1_000.0, False)}
    assert ahead(progress, 300) == {ORDERS}
