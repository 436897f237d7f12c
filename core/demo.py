"""`touchstream demo`: the local stack, simulated storefront traffic, and the KPIs.

It reconciles before it prints: it waits until every produced event is in
ClickHouse (or in dead letters) and the KPI windows count every response.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from touchstream.producers.emitter import Emitter
from touchstream.producers.simulator import SimulationConfig, Simulator
from touchstream.settings import Settings
from touchstream.sinks.client import connect
from touchstream.stack import Stack, StackError


def malformed(run: int) -> list[tuple[str, bytes]]:
    """Messages that are not events, sent with the traffic to show the dead-letter path."""
    event_id = uuid.UUID(int=run, version=4)
    return [
        ("not_json", b'{"event_type": "page_view", "run": %d, ' % run),
        ("unknown_event_type", b'{"event_type": "teleport", "customer_id": "c-%d"}' % run),
        (
            "schema_violation",
            (
                f'{{"event_id": "{event_id}", "event_type": "nps_response", "occurred_at": '
                '"2026-11-02T09:00:00Z", "customer_id": "c-bad", "channel": "web", '
                '"touchpoint": "delivery", "properties": {"score": 11}}'
            ).encode(),
        ),
    ]


SCORE_KPIS = {"nps_response": "nps", "csat_response": "csat", "ces_response": "ces"}


@dataclass(frozen=True)
class Produced:
    events: int
    malformed: int
    responses: dict[str, int]  # kpi → responses produced
    by_type: dict[str, int]


def produce(settings: Settings, config: SimulationConfig, console: Console) -> Produced:
    """Simulate and send; blocks until the broker acknowledged everything."""
    simulated = list(Simulator(config).events())
    bad = malformed(config.seed)
    by_type = Counter(e["event_type"] for e in simulated)
    with Emitter(settings, client_id="touchstream-demo") as emitter:
        columns = (
            TextColumn("[bold]sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("events", total=len(simulated) + len(bad))
            for n, event in enumerate(simulated, 1):
                emitter.emit(event)
                if n % 500 == 0:
                    progress.update(task, completed=n)
            for _, raw in bad:
                emitter.send_raw(settings.topic("feedback"), b"demo-malformed", raw)
            emitter.flush(timeout_s=60)
            progress.update(task, completed=len(simulated) + len(bad))
        if emitter.failures:
            raise StackError(f"{len(emitter.failures)} events were not acknowledged by Kafka")
    responses = {kpi: by_type.get(event_type, 0) for event_type, kpi in SCORE_KPIS.items()}
    return Produced(len(simulated), len(bad), responses, dict(by_type))


def landed(
    client: Any, database: str, since: datetime
) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """(distinct events, dead letters, and per KPI the denominators of the daily
    windows written since ``since``: overall, and summed over (channel, touchpoint))."""
    bind = {"db": database}
    events = client.query(
        "SELECT uniqExact(event_id) FROM {db:Identifier}.events", parameters=bind
    ).result_rows[0][0]
    dead = client.query(
        "SELECT count() FROM {db:Identifier}.dead_letters FINAL", parameters=bind
    ).result_rows[0][0]
    rows = client.query(
        "SELECT kpi, channel = 'all', sum(denominator) FROM {db:Identifier}.kpi_touchpoint FINAL "
        "WHERE window_size = 86400 AND updated_at >= {since:DateTime64(3, 'UTC')} "
        "GROUP BY kpi, channel = 'all'",
        parameters={**bind, "since": since},
    ).result_rows
    overall = {str(k): int(v) for k, is_all, v in rows if is_all}
    by_group = {str(k): int(v) for k, is_all, v in rows if not is_all}
    return int(events), int(dead), overall, by_group


async def wait_drained(
    stack: Stack,
    produced: Produced,
    baseline: tuple[int, int],
    since: datetime,
    console: Console,
    timeout_s: float = 180,
) -> None:
    """Wait until this run's events and dead letters are in ClickHouse and the KPI
    windows this run's worker wrote count every response it produced.

    The KPI check assumes the worker started from empty state, which the local
    (memory-only) broker guarantees; on a configured broker only events and dead
    letters are reconciled (README, "Demo").
    """
    client = await asyncio.to_thread(connect, stack.settings)
    database = stack.settings.clickhouse.database
    deadline = time.monotonic() + timeout_s
    want_events = baseline[0] + produced.events
    want_dead = baseline[1] + produced.malformed
    check_kpis = stack.broker is not None
    # Abandonment has no expected count here (decisions wait for event time), so
    # it counts as settled once overall and per touchpoint agree and hold for 3 s.
    settled: tuple[int, float] = (-1, time.monotonic())
    try:
        with console.status("waiting for the pipeline to drain into ClickHouse") as status:
            while True:
                stack.check()
                events, dead, responses, by_group = await asyncio.to_thread(
                    landed, client, database, since
                )
                # Every response counted overall and per touchpoint, and the
                # abandonment decided so far agreeing between the two.
                decided = responses.get("checkout_abandonment", 0)
                if decided != settled[0] or decided != by_group.get("checkout_abandonment", 0):
                    settled = (decided, time.monotonic())
                kpis_done = not check_kpis or (
                    all(responses.get(k, 0) == n for k, n in produced.responses.items())
                    and all(by_group.get(k, 0) == n for k, n in produced.responses.items())
                    and time.monotonic() - settled[1] >= 3
                )
                status.update(
                    f"in ClickHouse: {events - baseline[0]}/{produced.events} events, "
                    f"{dead - baseline[1]}/{produced.malformed} dead letters, KPIs "
                    + ("final" if kpis_done else "updating")
                )
                if events == want_events and dead == want_dead and kpis_done:
                    return
                if time.monotonic() > deadline:
                    raise StackError(
                        f"not drained after {timeout_s:.0f}s: {events - baseline[0]}/"
                        f"{produced.events} events, {dead - baseline[1]}/{produced.malformed} "
                        f"dead letters, responses {responses} of {produced.responses}; "
                        f"see {stack.logs}"
                    )
                await asyncio.sleep(0.5)
    finally:
        client.close()


KPI_SQL = """
SELECT touchpoint,
       sumIf(numerator, kpi = 'nps') / nullIf(sumIf(denominator, kpi = 'nps'), 0) * 100 AS nps,
       sumIf(denominator, kpi = 'nps') AS nps_n,
       sumIf(numerator, kpi = 'csat') / nullIf(sumIf(denominator, kpi = 'csat'), 0) AS csat,
       sumIf(denominator, kpi = 'csat') AS csat_n,
       sumIf(numerator, kpi = 'ces') / nullIf(sumIf(denominator, kpi = 'ces'), 0) AS ces,
       sumIf(denominator, kpi = 'ces') AS ces_n,
       sumIf(numerator, kpi = 'checkout_abandonment')
         / nullIf(sumIf(denominator, kpi = 'checkout_abandonment'), 0) AS abandonment,
       sumIf(denominator, kpi = 'checkout_abandonment') AS abandonment_n
FROM {db:Identifier}.kpi_touchpoint FINAL
WHERE window_size = 86400 AND (channel != 'all' OR touchpoint = 'all')
GROUP BY touchpoint
ORDER BY touchpoint = 'all', touchpoint
"""


def kpi_table(client: Any, database: str) -> Table:
    table = Table(title="CX KPIs per touchpoint (daily windows, all channels)")
    for name in ("touchpoint", "NPS", "n", "CSAT", "n", "CES (1-7)", "n", "checkout lost", "n"):
        table.add_column(name, justify="left" if name == "touchpoint" else "right")

    def fmt(value: Any, pattern: str) -> str:
        return "–" if value is None else pattern.format(value)

    for tp, nps, nps_n, csat, csat_n, ces, ces_n, lost, lost_n in client.query(
        KPI_SQL, parameters={"db": database}
    ).result_rows:
        table.add_row(
            f"[bold]{tp}[/]" if tp == "all" else tp,
            fmt(nps, "{:+.1f}"),
            str(int(nps_n)),
            fmt(csat, "{:.1%}"),
            str(int(csat_n)),
            fmt(ces, "{:.2f}"),
            str(int(ces_n)),
            fmt(lost, "{:.1%}"),
            str(int(lost_n)),
        )
    return table


def events_table(client: Any, database: str) -> Table:
    table = Table(title="Events in ClickHouse by channel")
    rows = client.query(
        "SELECT channel, count(), uniqExact(identity), countIf(event_type = 'order_placed') "
        "FROM {db:Identifier}.events FINAL GROUP BY channel ORDER BY count() DESC",
        parameters={"db": database},
    ).result_rows
    for name in ("channel", "events", "customers", "orders"):
        table.add_column(name, justify="left" if name == "channel" else "right")
    for channel, count, customers, orders in rows:
        table.add_row(channel, str(count), str(customers), str(orders))
    return table


async def run_demo(settings: Settings, config: SimulationConfig, console: Console) -> None:
    stack = Stack(settings)
    console.print(f"[bold]Touchstream demo[/] — data in {settings.data_dir}")
    try:
        since = datetime.now(UTC)
        await stack.start()
        client = await asyncio.to_thread(connect, stack.settings)
        try:
            events, dead, _, _ = await asyncio.to_thread(
                landed, client, stack.settings.clickhouse.database, since
            )
        finally:
            client.close()
        console.print(
            f"broker {stack.settings.kafka.bootstrap_servers}, ClickHouse "
            f"{stack.settings.clickhouse_dsn}, metrics :{stack.metrics_port}/metrics"
        )
        produced = await asyncio.to_thread(produce, stack.settings, config, console)
        await wait_drained(stack, produced, (events, dead), since, console)
        client = await asyncio.to_thread(connect, stack.settings)
        try:
            database = stack.settings.clickhouse.database
            console.print(events_table(client, database))
            console.print(kpi_table(client, database))
            reasons = client.query(
                "SELECT reason, count() FROM {db:Identifier}.dead_letters FINAL "
                "GROUP BY reason ORDER BY reason",
                parameters={"db": database},
            ).result_rows
            console.print(
                "dead letters: " + ", ".join(f"{reason} {count}" for reason, count in reasons)
            )
        finally:
            client.close()
        example = f"SELECT event_type, count() FROM {database}.events GROUP BY event_type"  # noqa: S608 - printed, never run
        console.print(
            f"[green]done[/]: {produced.events} events reconciled. Query them with "
            f'[bold]touchstream query "{example}"[/]'
        )
        ch = settings.clickhouse
        host = "127.0.0.1" if ch.serve_host in ("0.0.0.0", "::") else ch.serve_host  # noqa: S104
        console.print(
            f"CX page: [bold]http://{host}:{ch.serve_port or stack.http_port}/ui/[/] "
            "(live while [bold]touchstream up[/] or [bold]make up[/] runs)"
        )
    finally:
        await stack.stop()


def demo_config(customers: int, hours: float, seed: int) -> SimulationConfig:
    """Event time ending now, so the windows are today's."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    duration = timedelta(hours=hours)
    return SimulationConfig(
        customers=customers,
        start=now - duration,
        duration_s=int(duration.total_seconds()),
        seed=seed,
    )
