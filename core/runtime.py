"""Process-wide tuning for the long-running commands (worker, sink, ``up``)."""

from __future__ import annotations

import gc

# Tracked allocations (net of frees) between young collections; CPython's default
# is 700. A young collection walks every young object alive, and in the middle of
# a batch that is the batch's thousands of models or records: at 100,000 the
# collector took ~10 µs per event in the worker (1.0 of 15 CPU-seconds for 100k
# events through its stages, tests/perf/stages.py), at 1,000,000 ~0.5 µs; the
# sink, at the default, spent ~10 % of its process's CPU in it (2026-11-26). A
# collection frees cyclic garbage only (reference counting frees the rest at once),
# so this bounds that, and a young collection walks at most this many objects.
GC_GEN0_THRESHOLD = 1_000_000


def tune_gc() -> None:
    """Move what start-up built out of the collector's reach (it is never garbage)
    and collect the young generation far less often (docs/design/streams.md)."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
