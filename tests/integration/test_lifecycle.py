"""Process lifecycle helpers shared by the integration tests."""

from __future__ import annotations

import os
import time
from pathlib import Path


def alive(pid: int, grace_s: float = 5.0) -> bool:
    """True if pid still runs (not a zombie) after up to grace_s."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat")
            running = stat.exists() and stat.read_text().split()[2] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            running = False
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.1)
