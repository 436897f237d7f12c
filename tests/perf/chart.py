"""Where a drained event's CPU goes, as a chart: ``make bench`` writes it next to
build/bench.json (``--out`` with ``.svg``), from that run's figures.

One bar per measured path, in µs of CPU per event, split by process: the raw
ceiling (one consumer process), the floor (the contract's path alone:
tests/perf/floor.py), the drain (the pipeline, to KPIs final) and the freshness
phase's steady rate (the load generator's share too); a line at what the ≥
1/3-of-raw target allows on the machine's cores, and on the steady rate's bar a
mark at all the cores (the machine is full there). Plain SVG, no plotting
library.

    python -m tests.perf.chart build/bench.json build/bench-cpu.svg
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path
from typing import Any

import orjson

PARTS = (("worker", "#4c78a8"), ("sink", "#f58518"), ("broker", "#54a24b"), ("load", "#9d9d9d"))
LABELS = {
    "worker": "worker / forwarder / consumer",
    "sink": "sink process",
    "broker": "broker",
    "load": "load generator",
}
WIDTH, BAR_H, GAP, LEFT, TOP = 760, 34, 18, 150, 56
Bar = tuple[str, dict[str, float], float | None]  # label, µs by process, all-cores mark


def bars(figures: dict[str, Any]) -> list[Bar]:
    """(label, µs per event by process, the mark) of each path the run measured."""
    out: list[Bar] = []
    if raw := figures.get("raw_eps"):
        out.append(("raw ceiling", {"worker": 1e6 / raw}, None))
    for key, label in (("floor_cpu_us", "floor"), ("drain_cpu_us", "drain")):
        if split := figures.get(key):
            out.append((label, _parts(split), None))
    rate = figures.get("freshness_rate_eps")
    if (split := figures.get("freshness_cpu_us_per_event")) and rate:
        cores = figures.get("machine", {}).get("cores")
        out.append((f"at {rate:,}/s", _parts(split), cores * 1e6 / rate if cores else None))
    return out


def _parts(split: dict[str, float]) -> dict[str, float]:
    return {name: float(split.get(name, 0.0)) for name, _ in PARTS}


def budget(figures: dict[str, Any]) -> float | None:
    """µs of CPU per event, all cores together, at a third of the raw ceiling."""
    raw, cores = figures.get("raw_eps"), figures.get("machine", {}).get("cores")
    return cores * 1e6 / (raw / 3) if raw and cores else None


def svg(figures: dict[str, Any]) -> str:
    rows = bars(figures)
    limit = budget(figures)
    top = max(
        [sum(parts.values()) for _, parts, _ in rows]
        + [mark or 0.0 for _, _, mark in rows]
        + [limit or 0.0, 1.0]
    )
    scale = (WIDTH - LEFT - 70) / top
    height = TOP + len(rows) * (BAR_H + GAP) + 60
    machine = figures.get("machine", {})
    title = (
        f"CPU per event, µs ({machine.get('date', '')}, {machine.get('cores', '?')} cores, "
        f"commit {machine.get('commit', '?')})"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (label, parts, mark) in enumerate(rows):
        y = TOP + i * (BAR_H + GAP)
        out.append(f'<text x="10" y="{y + BAR_H / 2 + 5}">{escape(label)}</text>')
        x = float(LEFT)
        for name, colour in PARTS:
            width = parts.get(name, 0.0) * scale
            if width > 0:
                out.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{BAR_H}" '
                    f'fill="{colour}"><title>{name}: {parts[name]:.1f} µs</title></rect>'
                )
                x += width
        if mark is not None:
            at = LEFT + mark * scale
            out.append(
                f'<line x1="{at:.1f}" y1="{y - 4}" x2="{at:.1f}" y2="{y + BAR_H + 4}" '
                'stroke="black" stroke-width="2" stroke-dasharray="3 3"/>'
            )
            out.append(
                f'<text x="{at:.1f}" y="{y + BAR_H + 15}" font-size="11" text-anchor="end">'
                f"all {machine.get('cores', '?')} cores: {mark:.0f}</text>"
            )
            x = max(x, at)
        total = sum(parts.values())
        out.append(f'<text x="{x + 6:.1f}" y="{y + BAR_H / 2 + 5}">{total:.0f}</text>')
    if limit is not None:
        x = LEFT + limit * scale
        bottom = TOP + len(rows) * (BAR_H + GAP) - GAP + 8
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{bottom}" '
            'stroke="#d62728" stroke-width="2" stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<text x="{x + 4:.1f}" y="{TOP - 12}" fill="#d62728">'
            f"drain ≥ 1/3 of raw: ≤ {limit:.0f} µs over all cores</text>"
        )
    legend_y = height - 22
    x = 10.0
    for name, colour in PARTS:
        out.append(f'<rect x="{x}" y="{legend_y - 11}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 17}" y="{legend_y}">{escape(LABELS[name])}</text>')
        x += 30 + 7.0 * len(LABELS[name])
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m tests.perf.chart BENCH_JSON OUT_SVG")
    figures = orjson.loads(Path(args[0]).read_bytes())
    Path(args[1]).write_text(svg(figures))


if __name__ == "__main__":
    main()
