from __future__ import annotations

from datetime import UTC, datetime

from touchstream.streams.windows import DAY_S, Window, buckets_of_window, daily, hopping

T0 = int(datetime(2026, 11, 2, 9, 0, tzinfo=UTC).timestamp())  # aligned to 5 min and 1 h


def test_an_instant_is_in_twelve_hourly_windows_advancing_every_five_minutes() -> None:
    windows = hopping(T0 + 60, 3600, 300)
    assert len(windows) == 12
    assert windows[0] == Window(T0 - 3600 + 300, 3600)
    assert windows[-1] == Window(T0, 3600)
    assert all(w.start <= T0 + 60 < w.end for w in windows)


def test_window_edges_are_half_open() -> None:
    at_edge = hopping(T0, 3600, 300)
    assert Window(T0, 3600) in at_edge  # start is inside
    assert Window(T0 - 3600, 3600) not in at_edge  # end is outside
    just_before = hopping(T0 - 1, 3600, 300)
    assert Window(T0 - 3600, 3600) in just_before
    assert Window(T0, 3600) not in just_before


def test_a_window_is_made_of_its_buckets() -> None:
    assert list(buckets_of_window(Window(T0, 3600), 300)) == [T0 + 300 * i for i in range(12)]


def test_daily_window() -> None:
    day = daily(T0 + 5)
    assert day.size_s == DAY_S
    assert day.start_dt() == datetime(2026, 11, 2, tzinfo=UTC)
    assert day.end_dt() == datetime(2026, 11, 3, tzinfo=UTC)
