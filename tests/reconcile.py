"""Reconciliation by event_id, shared by the end-to-end and reliability tests.

What was produced (simulated messages) must equal what landed: every distinct
valid event_id once in ClickHouse ``events`` (late ones flagged), every
malformed message in ``dead_letters`` with its expected reason, and every KPI
window in ``kpi_touchpoint`` equal to the simulator's ground truth
(producers/truth.py, computed from PRODUCT.md's definitions without pipeline code).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kafka import KafkaProducer

from tests.topics import read_all
from touchstream.producers.simulator import Message, SimulationConfig
from touchstream.producers.truth import Truth, truth_for
from touchstream.settings import Settings, StreamsSettings
from touchstream.stack import Stack

Key = tuple[str, str, str, int, int]


RETRACTABLE = ("churn", "churn_detractor")  # KPIs whose counts can be moved (stitching)


def settled(settings: Settings, **config: Any) -> SimulationConfig:
    """A simulation to reconcile the pipeline under ``settings`` against: its allowed
    lateness, abandonment timeout and partitions, settled at the end (every
    checkout and cart decided); ``config`` says the rest (customers, span, faults)."""
    streams = settings.streams
    return SimulationConfig(
        allowed_lateness_s=streams.allowed_lateness_s,
        abandonment_timeout_s=streams.abandonment_timeout_s,
        settle=True,
        partitions=settings.kafka.partitions,
        **config,
    )


def kpi_rows(ch: Any, db: str) -> dict[Key, tuple[float, float]]:
    """Every KPI window in ClickHouse (latest version): key → (numerator, denominator)."""
    rows = ch.query(
        f"SELECT kpi, channel, touchpoint, toUnixTimestamp(window_start), window_size, "
        f"numerator, denominator FROM {db}.kpi_touchpoint FINAL"
    ).result_rows
    return {(k, c, t, int(s), int(z)): (float(n), float(d)) for k, c, t, s, z, n, d in rows}


def landed(ch: Any, db: str) -> tuple[int, int, int]:
    """(events, late events, dead letters) in ClickHouse, duplicates collapsed."""
    events, late = ch.query(
        f"SELECT count(), countIf(late = 1) FROM {db}.events FINAL"
    ).result_rows[0]
    dead = ch.query(f"SELECT count() FROM {db}.dead_letters FINAL").result_rows[0][0]
    return int(events), int(late), int(dead)


def dead_letter_reasons(ch: Any, db: str) -> Counter[str]:
    rows = ch.query(f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason")
    return Counter({str(reason): int(n) for reason, n in rows.result_rows})


@dataclass
class Expected:
    """What must land for a list of simulated messages, per the ground truth."""

    truth: Truth
    kpis: dict[Key, tuple[float, float]]
    event_ids: set[str]  # distinct valid events: rows of `events`
    late_ids: set[str]  # ... of which beyond the allowed lateness (events.late = 1)
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason → count


def expect(messages: Sequence[Message], streams: StreamsSettings) -> Expected:
    truth = truth_for(messages, streams)
    kpis = {
        (r["kpi"], r["channel"], r["touchpoint"], r["window_start"], r["window_size"]): (
            r["numerator"],
            r["denominator"],
        )
        for r in truth.rows()
    }
    ids = {json.loads(m.value)["event_id"] for m in messages if not m.kind.startswith("malformed")}
    late = {json.loads(m.value)["event_id"] for m in messages if m.kind == "late"}
    assert len(ids) == truth.events and len(late) == truth.late  # the truth agrees
    return Expected(truth, kpis, ids, late, Counter(truth.dead_letters))


Counts = tuple[float, float]


def kpi_differences(
    ch: Any, db: str, want: Expected
) -> dict[Key, tuple[Counts | None, Counts | None]]:
    """KPI windows whose ClickHouse counts are not the truth's: key → (truth, got);
    None where there is no such window."""
    # A churn re-attributed to a stitched interaction that arrived late leaves
    # its old window at numerator 0: the same as no churn there.
    got = {
        k: v
        for k, v in kpi_rows(ch, db).items()
        if not (k[0] in RETRACTABLE and v[0] == 0 and k not in want.kpis)
    }
    differ: dict[Key, tuple[Counts | None, Counts | None]] = {
        k: (v, got.get(k)) for k, v in want.kpis.items() if got.get(k) != v
    }
    differ.update({k: (None, got[k]) for k in set(got) - set(want.kpis)})
    return differ


async def kpi_topic_latest(settings: Settings) -> dict[Key, Counts]:
    """Each KPI window's latest update on the KPI topic (highest version)."""
    kafka = settings.kafka
    records = await read_all(kafka.bootstrap_servers, settings.topic("kpis"), kafka.partitions)
    latest: dict[Key, tuple[int, Counts]] = {}
    for _, value in records:
        update = json.loads(value or b"{}")
        start = datetime.fromisoformat(update["window_start"]).timestamp()
        key = (
            update["kpi"],
            update["channel"],
            update["touchpoint"],
            int(start),
            int(update["window_size_s"]),
        )
        if key not in latest or update["version"] > latest[key][0]:
            latest[key] = (update["version"], (update["numerator"], update["denominator"]))
    return {key: counts for key, (_, counts) in latest.items()}


async def where_kpis_went_wrong(stack: Stack, ch: Any, db: str, want: Expected) -> str:
    """For a failed reconciliation: whether the differing KPI windows' latest
    updates on the KPI topic were the truth (lost on the way to ClickHouse), other
    counts (the worker's), or none (never emitted)."""
    differ = await asyncio.to_thread(kpi_differences, ch, db, want)
    if not differ:
        return ""
    try:
        emitted = await asyncio.wait_for(kpi_topic_latest(stack.settings), 30)
    except Exception as exc:  # noqa: BLE001 - a diagnosis only: say why there is none
        return f"; the KPI topic was not read ({exc!r})"
    kinds: Counter[str] = Counter()
    for key, (truth, _) in differ.items():
        if key not in emitted:
            kinds["never emitted"] += 1
        elif emitted[key] == truth:
            kinds["emitted as the truth"] += 1
        else:
            kinds["emitted otherwise"] += 1
    sample = {key: (truth, got, emitted.get(key)) for key, (truth, got) in list(differ.items())[:3]}
    return (
        f"; on the KPI topic: {dict(kinds)} (key: (truth, ClickHouse, latest emitted), "
        f"e.g. {sample})"
    )


def mismatches(ch: Any, db: str, want: Expected) -> list[str]:
    """Every way ClickHouse differs from ``want`` (empty: reconciled)."""
    problems: list[str] = []
    rows = ch.query(
        f"SELECT toString(event_id), count(), max(late) FROM {db}.events FINAL GROUP BY event_id"
    ).result_rows
    ids = {str(i) for i, _, _ in rows}
    doubled = [i for i, n, _ in rows if n > 1]
    late = {str(i) for i, _, flag in rows if flag}
    if ids != want.event_ids:
        missing, extra = want.event_ids - ids, ids - want.event_ids
        problems.append(
            f"events: {len(missing)} of {len(want.event_ids)} missing (e.g. "
            f"{sorted(missing)[:3]}), {len(extra)} unexpected (e.g. {sorted(extra)[:3]})"
        )
    if doubled:
        problems.append(f"{len(doubled)} event_ids twice in events FINAL, e.g. {doubled[:3]}")
    if late != want.late_ids:
        problems.append(f"late events: {len(late)} flagged, {len(want.late_ids)} expected")
    reasons = dead_letter_reasons(ch, db)
    if reasons != want.dead_letters:
        problems.append(f"dead letters {dict(reasons)} != expected {dict(want.dead_letters)}")
    differ = kpi_differences(ch, db, want)
    if differ:
        extra_windows = {k: v for k, (truth, v) in differ.items() if truth is None}
        wrong = {k: v for k, v in differ.items() if v[0] is not None}
        problems.append(
            f"{len(wrong)} KPI windows differ in {sorted({k[0] for k in wrong})}, e.g. "
            f"{list(wrong.items())[:3]}; {len(extra_windows)} extra, e.g. "
            f"{list(extra_windows.items())[:3]}"
        )
    return problems


async def until_reconciled(
    stack: Stack, ch: Any, db: str, want: Expected, timeout_s: float = 120
) -> float:
    """Poll until ClickHouse equals ``want`` (raising as soon as a part of the stack
    dies); returns the seconds it took. Fails with every remaining difference."""
    started = time.monotonic()
    problems = ["not checked yet"]
    while time.monotonic() - started < timeout_s:
        stack.check()
        problems = await asyncio.to_thread(mismatches, ch, db, want)
        if not problems:
            return time.monotonic() - started
        await asyncio.sleep(1)
    why = await where_kpis_went_wrong(stack, ch, db, want)
    raise AssertionError(f"not reconciled after {timeout_s:.0f}s: " + "; ".join(problems) + why)


def send(producer: KafkaProducer, settings: Settings, messages: Iterable[Message]) -> None:
    """Send simulated messages as they are, to their family's raw topic; wait for acks."""
    for m in messages:
        producer.send(settings.topic(m.family), key=m.key, value=m.value)
    producer.flush()


def latest_kpi_version(ch: Any, db: str) -> int:
    """The newest KPI version in ClickHouse (nanoseconds of its emission)."""
    return int(ch.query(f"SELECT max(version) FROM {db}.kpi_touchpoint").result_rows[0][0])


async def kpis_evicted(stack: Stack, timeout_s: float = 60) -> None:
    """Wait until the KPI stage has made windows final and dropped their buckets
    (``#evicted`` and tombstones in its checkpoint topic); fails after ``timeout_s``."""
    settings = stack.settings
    deadline = time.monotonic() + timeout_s
    while True:
        records = await read_all(
            settings.kafka.bootstrap_servers, settings.topic("kpi_state"), settings.kafka.partitions
        )
        if any(k == b"#evicted" for k, _ in records) and any(v is None for _, v in records):
            return
        stack.check()
        assert time.monotonic() < deadline, "no KPI window was ever made final"
        await asyncio.sleep(0.5)
