"""Event-time windows, pure: which windows an instant falls in. Epoch seconds in, out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

DAY_S = 86_400


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """[start, start + size_s) in epoch seconds, UTC."""

    start: int
    size_s: int

    @property
    def end(self) -> int:
        return self.start + self.size_s

    def start_dt(self) -> datetime:
        return datetime.fromtimestamp(self.start, UTC)

    def end_dt(self) -> datetime:
        return datetime.fromtimestamp(self.end, UTC)


def bucket_of(ts: float, step_s: int) -> int:
    """Start of the step-aligned bucket holding ts."""
    return int(ts // step_s) * step_s


def hopping(ts: float, size_s: int, step_s: int) -> list[Window]:
    """The hopping windows (size, advancing every step) that contain ts, oldest first."""
    last = bucket_of(ts, step_s)
    first = last - size_s + step_s
    return [Window(start, size_s) for start in range(first, last + step_s, step_s)]


def windows_of_bucket(bucket_start: int, size_s: int, step_s: int) -> list[Window]:
    """Hopping windows that contain the whole bucket [bucket_start, bucket_start + step)."""
    return hopping(bucket_start, size_s, step_s)


def buckets_of_window(window: Window, step_s: int) -> range:
    """Bucket starts that make up a hopping window."""
    return range(window.start, window.end, step_s)


def daily(ts: float) -> Window:
    return Window(bucket_of(ts, DAY_S), DAY_S)
