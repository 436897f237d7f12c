"""The outcome stage's memory against distinct customers, in memory and spilling.

One outcome partition (streams/outcome_stage.py) takes N distinct customers as the
outcome stage does: each one's order (a customer touch), an anonymous id linked
to it and a checkout started and completed, with a decision pass and a checkpoint
every 5,000 customers. Each mode runs in a fresh process; printed: the process's
RSS growth at each fifth of N, per 100k customers over each half, the CPU per
customer, and for the spilling mode the entities in memory and the file's size.

    python -m tests.perf.outcome_memory --customers 300000 --cache 20000

``make bench`` runs it after the pipeline's phases: the pipeline's own memory
phase mixes in what grows with events rather than customers (deduplication ids
back to the watermark, fetch buffers, caches filling), this isolates the state
that grows with customers and what STREAMS__OUTCOME_CACHE_ENTRIES does to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

CHECKPOINT_EVERY = 5_000
T0 = 1_767_225_600.0  # 2026-01-01


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(customers: int, cache: int) -> None:
    """One mode, in this process: JSON lines (progress, then the result)."""
    from touchstream.streams.checkpoints import Records
    from touchstream.streams.outcome_stage import OutcomePartition
    from touchstream.streams.spill import SpillStore

    with tempfile.TemporaryDirectory() as tmp:
        records = SpillStore(Path(tmp), "outcomes-0", cache) if cache else Records()
        part = OutcomePartition(0, 1800, 90 * 86_400, records)
        checkouts = part.trackers["checkout"]
        before, started = rss_mb(), time.process_time()
        samples: list[tuple[int, float]] = [(0, 0.0)]
        for i in range(customers):
            at = T0 + i * 0.01
            customer = f"c-{i:09d}"
            part.book.add(customer, [[at, "order", "web", "checkout", False, ""]])
            part.anonymous.link(f"a-{i:09d}", customer, at)
            checkouts.start(f"k-{i:09d}", "web", "checkout", at)
            checkouts.complete(f"k-{i:09d}", at + 1)
            if (i + 1) % CHECKPOINT_EVERY == 0:
                settled = at - 600
                for tracker in part.trackers.values():
                    tracker.decide(settled)
                part.book.decide(settled)
                part.anonymous.expire(settled)
                part.next_offset = i + 1
                part.checkpoint()
            if (i + 1) % max(1, customers // 10) == 0:
                samples.append((i + 1, rss_mb() - before))
                print(json.dumps({"done": i + 1}), flush=True)
        cpu = time.process_time() - started
        store = part.store
        result: dict[str, Any] = {
            "samples": samples,
            "us_per_customer": cpu / customers * 1e6,
            "entities": len(store),
        }
        if isinstance(store, SpillStore):
            result["in_memory"] = store.in_memory()
            result["file_mb"] = store.file_bytes() / 1e6
        print(json.dumps({"result": result}), flush=True)


def run_mode(customers: int, cache: int, progress: Progress) -> dict[str, Any]:
    label = f"cache {cache:,} per partition" if cache else "all in memory"
    task = progress.add_task(label, total=customers)
    cmd = [sys.executable, "-m", "tests.perf.outcome_memory", "--child"]
    cmd += ["--customers", str(customers), "--cache", str(cache)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # noqa: S603 - ours
    assert proc.stdout is not None
    result: dict[str, Any] = {}
    for line in proc.stdout:
        message = json.loads(line)
        if "done" in message:
            progress.update(task, completed=message["done"])
        else:
            result = message["result"]
    if proc.wait() != 0 or not result:
        raise SystemExit(f"{label}: the child process failed ({proc.returncode})")
    result["label"] = label
    return result


def halves(samples: list[list[float]]) -> tuple[float, float]:
    """RSS growth per 100k customers over the first and the second half."""
    (n_half, half), (n_end, end) = samples[len(samples) // 2], samples[-1]
    return half / n_half * 100_000, (end - half) / (n_end - n_half) * 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=300_000)
    parser.add_argument(
        "--cache", type=int, default=20_000, help="entities in memory in the spilling mode"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.customers, args.cache)
        return
    console = Console()
    with Progress(console=console) as progress:
        results = [run_mode(args.customers, c, progress) for c in (0, args.cache)]
    table = Table(title=f"One outcome partition, {args.customers:,} distinct customers")
    table.add_column("mode")
    table.add_column("RSS growth, MB, at each fifth")
    table.add_column("MB per 100k: 1st half / 2nd half", justify="right")
    table.add_column("CPU µs per customer", justify="right")
    table.add_column("entities (in memory, file MB)", justify="right")
    for r in results:
        first, second = halves(r["samples"])
        held = f"{r['entities']:,}"
        if "in_memory" in r:
            held += f" ({r['in_memory']:,}, {r['file_mb']:.0f} MB)"
        table.add_row(
            r["label"],
            " ".join(f"{mb:.0f}" for _, mb in r["samples"][2::2]),
            f"{first:.1f} / {second:.1f}",
            f"{r['us_per_customer']:.1f}",
            held,
        )
    console.print(table)


if __name__ == "__main__":
    main()
