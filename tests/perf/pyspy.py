"""Read py-spy's raw (collapsed) output and summarise where a process spent its time.

``py-spy record --format raw --threads --function`` writes one line per distinct
stack: ``thread (TID): NAME;frame;frame;... COUNT``, root first, where a frame is
``function (file:line)``. Without ``--idle`` only samples of a thread that was
running (not waiting in a system call) are kept, so a thread's samples divided by
the sampling ticks is the share of the time it was busy; the rest it waited, e.g. in
the event loop's epoll.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = re.compile(r"Samples: (\d+)")


def ticks_of(py_spy_output: str) -> int | None:
    """The number of sampling ticks py-spy reports when it stops."""
    found = _TICKS.findall(py_spy_output)
    return int(found[-1]) if found else None


@dataclass
class Profile:
    ticks: int
    stacks: list[tuple[str, tuple[str, ...], int]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, ticks: int | None) -> Profile:
        stacks: list[tuple[str, tuple[str, ...], int]] = []
        # Non-blocking sampling can read torn names: never fail on their bytes.
        for line in path.read_text(errors="replace").splitlines():
            body, _, count = line.rpartition(" ")
            if not body or not count.isdigit():
                continue
            thread, *frames = body.split(";")
            name = thread.split(": ", 1)[-1]
            stacks.append((name, tuple(frames), int(count)))
        total = sum(count for *_, count in stacks)
        return cls(ticks or total, stacks)

    def threads(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for thread, _, count in self.stacks:
            out[thread] += count
        return out

    def top(self, thread: str | None = None, n: int = 12) -> list[tuple[str, float, float]]:
        """(frame, self share, inclusive share) of the sampling ticks, by inclusive
        share; ``thread`` limits to one thread's samples."""
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for name, frames, count in self.stacks:
            if thread is not None and name != thread or not frames:
                continue
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        ranked = sorted(inclusive, key=lambda f: (-inclusive[f], -own[f]))
        return [(f, own[f] / self.ticks, inclusive[f] / self.ticks) for f in ranked[:n]]

    def top_self(self, thread: str | None = None, n: int = 12) -> list[tuple[str, float]]:
        own: Counter[str] = Counter()
        for name, frames, count in self.stacks:
            if (thread is None or name == thread) and frames:
                own[frames[-1]] += count
        return [(f, c / self.ticks) for f, c in own.most_common(n)]

    def by_package(self, thread: str | None = None) -> list[tuple[str, float]]:
        """Self time grouped by the top-level package of the leaf frame's file."""
        out: Counter[str] = Counter()
        for name, frames, count in self.stacks:
            if (thread is None or name == thread) and frames:
                out[package_of(frames[-1])] += count
        return [(p, c / self.ticks) for p, c in out.most_common()]


def package_of(frame: str) -> str:
    """``emit (faust/topics.py:12)`` → ``faust``; a stdlib module → its name."""
    match = re.search(r"\(([^():]+)(?::\d+)?\)$", frame)
    if match is None:
        return "?"
    path = match.group(1)
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")
