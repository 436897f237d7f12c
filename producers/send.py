"""Sending many events: JSON Lines (``touchstream emit``) and simulated streams
(``touchstream simulate``), paced when asked, with progress callbacks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from touchstream.producers.emitter import Emitter, EventTooLarge, InvalidEvent, UnprotectedPii
from touchstream.producers.simulator import Message
from touchstream.settings import Settings

Progress = Callable[[int], None]  # called with how many inputs are done so far


@dataclass
class EmitReport:
    sent: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)


class Pacer:
    """Holds a loop to ``rate`` iterations per second (None or 0: as fast as possible)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate or None
        self._clock = clock
        self._started = clock()

    def wait(self, done: int) -> None:
        if self._rate is None:
            return
        ahead = done / self._rate - (self._clock() - self._started)
        if ahead > 0:
            time.sleep(ahead)


def emit_lines(
    emitter: Emitter, lines: Iterable[bytes], progress: Progress | None = None
) -> EmitReport:
    """Validate and send one JSON event per line. A bad line is reported with its
    number and skipped; the others are still sent. Blank lines are ignored."""
    report = EmitReport()
    for number, line in enumerate(lines, 1):
        if progress is not None:
            progress(number)
        text = line.strip()
        if not text:
            continue
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            report.bad.append((number, f"not JSON: {exc}"))
            continue
        if not isinstance(data, dict):
            report.bad.append((number, f"not a JSON object: {type(data).__name__}"))
            continue
        try:
            emitter.emit(data)
        except (InvalidEvent, EventTooLarge, UnprotectedPii) as exc:
            report.bad.append((number, str(exc)))
            continue
        report.sent += 1
    return report


def send_messages(
    emitter: Emitter,
    settings: Settings,
    messages: Iterable[Message],
    rate: float | None = None,
    progress: Progress | None = None,
) -> int:
    """Send simulated messages as they are (malformed ones included), in order."""
    pacer = Pacer(rate)
    sent = 0
    for message in messages:
        emitter.send_raw(settings.topic(message.family), message.key, message.value)
        sent += 1
        if progress is not None and sent % 200 == 0:
            progress(sent)
        pacer.wait(sent)
    if progress is not None:
        progress(sent)
    return sent
