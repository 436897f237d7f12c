"""`touchstream`: one verb per job. The only module, with stack.py, that wires stages.

Settings come from TOUCHSTREAM_* variables; each verb's --help lists the ones it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from touchstream.settings import Settings, SettingsError, env_variables, load_settings

console = Console()
err = Console(stderr=True)

app = typer.Typer(
    name="touchstream",
    help="Customer-journey analytics: Kafka in, CX KPIs per touchpoint, ClickHouse out.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
)


def _env_help(*sections: str) -> str:
    """An epilog listing the variables of these settings sections (and the root ones)."""
    rows = []
    for name, default, description in env_variables():
        section = name.removeprefix("TOUCHSTREAM_").split("__")[0].lower()
        if "__" not in name or section in sections:
            shown = f" (default: {default})" if default else ""
            rows.append(f"  {name}{shown}" + (f" - {description}" if description else ""))
    return "Environment variables:\n\n" + "\n\n".join(rows)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]configuration error[/]: {exc}")
        raise typer.Exit(2) from exc


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run(coro: Any) -> None:
    """Run a coroutine; Ctrl-C / SIGTERM cancel it so its finally blocks stop things cleanly."""

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None  # noqa: S101
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await coro

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main())


STACK_SECTIONS = ("kafka", "topics", "clickhouse", "streams", "sink", "metrics")


@app.command(epilog=_env_help(*STACK_SECTIONS))
def up() -> None:
    """Run the stack in the foreground: broker (unless configured), stream worker,
    ClickHouse sink, /metrics. Ctrl-C stops everything; the data dir is kept."""
    from touchstream.runtime import tune_gc
    from touchstream.stack import Stack, StackError

    settings = _settings()
    _logging(settings)

    async def serve() -> None:
        stack = Stack(settings)
        try:
            await stack.start()
            tune_gc()  # the sink runs in this process
            http = f"http://{settings.clickhouse.serve_host}:{stack.http_port}"
            served = f" (HTTP {http}, CX page {http}/ui/)" if stack.http_port else ""
            console.print(
                f"[green]up[/]: broker {stack.settings.kafka.bootstrap_servers}, ClickHouse "
                f"{stack.settings.clickhouse_dsn}{served}, metrics "
                f"http://{settings.metrics.host}:{stack.metrics_port}/metrics — Ctrl-C stops"
            )
            await stack.watch(asyncio.Event())
        finally:
            await stack.stop()
            console.print("stopped; data kept in", str(settings.data_dir))

    try:
        _run(serve())
    except StackError as exc:
        err.print(f"[red]stack failed[/]: {exc}")
        raise typer.Exit(1) from exc


@app.command(epilog=_env_help(*STACK_SECTIONS))
def demo(
    customers: Annotated[int, typer.Option(help="simulated customers")] = 400,
    hours: Annotated[float, typer.Option(help="event time simulated, ending now")] = 6.0,
    seed: Annotated[int | None, typer.Option(help="simulator seed (default: new each run)")] = None,
) -> None:
    """Start the local stack, send simulated storefront traffic, wait until it is all in
    ClickHouse, print the KPIs per touchpoint, stop. Finishes by itself."""
    import time

    from touchstream.demo import demo_config, run_demo
    from touchstream.producers.emitter import EmitError
    from touchstream.stack import StackError

    settings = _settings()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = demo_config(customers, hours, seed if seed is not None else int(time.time()))
    try:
        _run(run_demo(settings, config, console))
    except (StackError, EmitError) as exc:
        err.print(f"[red]demo failed[/]: {exc}")
        raise typer.Exit(1) from exc


@app.command(epilog=_env_help("kafka", "topics", "streams", "metrics"))
def worker() -> None:
    """Run the stream worker (Faust) against the configured broker, until SIGTERM: one
    process, or STREAMS__PROCESSES of them in one consumer group (0: one per CPU)."""
    from touchstream.streams.processes import worker_processes
    from touchstream.streams.worker import run

    settings = _settings()
    if settings.local_broker:
        err.print(
            "[red]TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS is not set[/] (or use `touchstream up`)"
        )
        raise typer.Exit(2)
    processes = worker_processes(settings)
    if processes > 1:
        _logging(settings)  # the supervisor's own lines; each process logs as Faust does
    raise typer.Exit(run(settings, processes))


@app.command(epilog=_env_help("kafka", "topics", "clickhouse", "sink", "metrics"))
def sink() -> None:
    """Run the ClickHouse sink alone against the configured broker, until SIGTERM."""
    from prometheus_client import CollectorRegistry, start_http_server

    from touchstream.runtime import tune_gc
    from touchstream.sinks import metrics as sink_metrics
    from touchstream.sinks.clickhouse import ROLES, ClickHouseSink, default_routes
    from touchstream.sinks.client import connect
    from touchstream.sinks.runner import SinkRunner

    settings = _settings()
    _logging(settings)
    if settings.local_broker:
        err.print(
            "[red]TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS is not set[/] (or use `touchstream up`)"
        )
        raise typer.Exit(2)
    registry = CollectorRegistry()
    if settings.metrics.enabled:
        start_http_server(settings.metrics.port, settings.metrics.host, registry)
    metrics = sink_metrics.create(registry, settings.metrics.namespace)
    topics = {role: settings.topic(role) for role in ROLES}
    runner = SinkRunner(
        settings,
        ClickHouseSink(
            lambda: connect(settings),
            settings.clickhouse.database,
            default_routes(topics),
            metrics,
            max_buffered=settings.sink.max_buffered,
        ),
        list(topics.values()),
        metrics,
    )
    tune_gc()
    _run(runner.run())


@app.command(epilog=_env_help("clickhouse", "metrics"))
def serve() -> None:
    """Own the embedded ClickHouse and serve its HTTP interface (no broker, worker or
    sink): for BI tools on a single-box install. Ctrl-C stops it."""
    from touchstream.stack import Stack, StackError

    settings = _settings()
    _logging(settings)
    if not settings.embedded_clickhouse:
        err.print("serve is for the embedded engine; a ClickHouse server serves itself")
        raise typer.Exit(2)
    _refuse_if_engine_owned(settings)

    async def run() -> None:
        stack = Stack(settings, with_pipeline=False)
        try:
            await stack.start()
            console.print(
                f"[green]serving[/] ClickHouse HTTP on "
                f"http://{settings.clickhouse.serve_host}:{stack.http_port} (CX page on "
                f"/ui/) — Ctrl-C stops"
            )
            await stack.watch(asyncio.Event())
        finally:
            await stack.stop()

    try:
        _run(run())
    except (StackError, ValueError) as exc:
        err.print(f"[red]serve failed[/]: {exc}")
        raise typer.Exit(1) from exc


def _client(settings: Settings, writer: bool) -> Any:
    """Through the running stack's HTTP interface when one owns the embedded engine,
    else directly (embedded engine or server)."""
    from touchstream.sinks.client import connect
    from touchstream.stack import RuntimeInfo, connect_running

    info = RuntimeInfo.read(settings)
    if settings.embedded_clickhouse and info is not None and info.http_port:
        return connect_running(settings, info, writer=writer)
    return connect(settings)


@app.command(epilog=_env_help("clickhouse"))
def migrate(
    print_sql: Annotated[
        bool,
        typer.Option(
            "--print-sql",
            help="print the DDL that migrate runs on an empty server (for review), "
            "connect to nothing",
        ),
    ] = False,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="with --print-sql: the DDL for this ClickHouse cluster "
            "(default: TOUCHSTREAM_CLICKHOUSE__CLUSTER; empty = one server)",
        ),
    ] = None,
) -> None:
    """Create or upgrade the ClickHouse schema (idempotent); on a server, also the
    read-only BI role (and user, given TOUCHSTREAM_CLICKHOUSE__BI_PASSWORD). With
    TOUCHSTREAM_CLICKHOUSE__CLUSTER: replicated tables behind Distributed ones."""
    from touchstream.sinks.migrate import bi_access_statements, grant_bi_access, schema_statements
    from touchstream.sinks.migrate import migrate as run_migrations

    settings = _settings()
    ch = settings.clickhouse
    if cluster is not None and not print_sql:
        err.print("--cluster goes with --print-sql; migrate uses TOUCHSTREAM_CLICKHOUSE__CLUSTER")
        raise typer.Exit(2)
    if print_sql:
        target = ch.cluster if cluster is None else cluster
        try:
            statements = schema_statements(ch.database, target or None)
            statements += bi_access_statements(ch.database, ch.bi_user, None, target or None)
        except ValueError as exc:
            err.print(f"[red]cannot generate the DDL[/]: {exc}")
            raise typer.Exit(2) from exc
        where = f"cluster {target}" if target else "one server"
        print(f"-- touchstream schema, database {ch.database}, {where}")
        print(f"-- with TOUCHSTREAM_CLICKHOUSE__BI_PASSWORD set, the BI user {ch.bi_user} too")
        for statement in statements:
            print(f"\n{statement};")
        return
    client = _client(settings, writer=True)
    try:
        ran = run_migrations(client, ch.database, ch.cluster or None)
        if not settings.embedded_clickhouse:
            password = ch.bi_password.get_secret_value() or None
            if grant_bi_access(client, ch.database, ch.bi_user, password, ch.cluster or None):
                console.print(f"BI user {ch.bi_user}: SELECT on {ch.database}, readonly=1")
            else:
                console.print(
                    f"BI role {ch.database}_bi_reader granted SELECT; set "
                    "TOUCHSTREAM_CLICKHOUSE__BI_PASSWORD to create the BI user too"
                )
    finally:
        client.close()
    if ran:
        for migration in ran:
            console.print(f"applied {migration.version:04d} {migration.name}")
    else:
        console.print("schema is up to date")


def _refuse_if_engine_owned(settings: Settings) -> None:
    from touchstream.stack import RuntimeInfo

    info = RuntimeInfo.read(settings)
    if settings.embedded_clickhouse and info is not None:
        err.print(
            f"[red]the embedded ClickHouse in {settings.data_dir} is owned by a running stack "
            f"(pid {info.pid})[/]: stop it first (Ctrl-C in its terminal)."
        )
        raise typer.Exit(1)


def _rows_out(columns: list[str], rows: list[Any], fmt: str) -> Iterator[str]:
    if fmt == "json":
        for row in rows:
            yield json.dumps(dict(zip(columns, row, strict=True)), default=str)
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        table = Table()
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)


@app.command(epilog=_env_help("clickhouse"))
def query(
    sql: Annotated[
        str | None, typer.Argument(help="a named query (see --list) or a SELECT")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="k=v for a named query; repeatable")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    list_: Annotated[bool, typer.Option("--list", help="list the named queries")] = False,
) -> None:
    """Run a named journey query or a read-only SELECT and print the result: through the
    running stack's HTTP interface (as the BI user) when one is up, else directly."""
    from touchstream.sinks import named

    if list_:
        for query_ in named.load_all().values():
            params = " ".join(
                f"{p.name}={p.default}" if p.default is not None else f"{p.name}=?"
                for p in query_.params
            )
            console.print(f"[bold]{query_.name}[/] {params}\n  {query_.description}")
        return
    if not sql:
        err.print("give a named query or SQL (or --list)")
        raise typer.Exit(2)
    if fmt not in ("table", "csv", "json"):
        err.print("--format must be table, csv or json")
        raise typer.Exit(2)
    given = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            err.print(f"--param wants k=v, got {item!r}")
            raise typer.Exit(2)
        given[key] = value
    settings = _settings()
    queries = named.load_all()
    if sql not in queries and given:
        err.print(f"--param is for named queries; {sql!r} is not one (see --list)")
        raise typer.Exit(2)
    client = _client(settings, writer=False)
    try:
        if sql in queries:
            result = named.run(client, queries[sql], settings.clickhouse.database, given)
        else:
            result = client.query(sql, settings={"readonly": 1})
        for line in _rows_out(list(result.column_names), result.result_rows, fmt):
            print(line)
    except named.QueryError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    except Exception as exc:  # the server's message is the useful part
        err.print(f"[red]query failed[/]: {exc}")
        raise typer.Exit(1) from exc
    finally:
        client.close()


@app.command(epilog=_env_help("clickhouse"))
def erase(
    customer: Annotated[str, typer.Option("--customer", help="the customer_id to erase")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """GDPR erasure: delete a customer's rows (and their linked anonymous ids') from
    every table, with mutations; prints how many rows per table."""
    from touchstream.sinks.erase import erase_customer

    settings = _settings()
    if not yes and not typer.confirm(f"erase every row of customer {customer!r}?"):
        raise typer.Exit(1)
    client = _client(settings, writer=True)
    try:
        ch = settings.clickhouse
        erasure = erase_customer(client, ch.database, customer, ch.cluster or None)
    finally:
        client.close()
    for table, count in erasure.rows.items():
        console.print(f"{table}: {count} row(s) deleted")
    linked = ", ".join(erasure.identities) or "none"
    console.print(f"erased {erasure.total} row(s) of {customer} (linked anonymous ids: {linked})")


schemas_app = typer.Typer(help="The published JSON Schemas of the events.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="where to write the *.schema.json files")],
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; fail when DIR differs from the models")
    ] = False,
) -> None:
    """Write one JSON Schema per event type and version, plus the envelope."""
    from touchstream.schemas.jsonschema import drift, export

    if check:
        problems = drift(directory)
        for problem in problems:
            err.print(f"[red]{problem}[/]")
        if problems:
            err.print(f"regenerate with: touchstream schemas export {directory}")
            raise typer.Exit(1)
        console.print(f"{directory}: up to date")
        return
    written = export(directory)
    console.print(f"wrote {len(written)} schemas to {directory}")


def _producer_settings() -> Settings:
    """Settings with a broker: the configured one, else the running local stack's."""
    from touchstream.stack import RuntimeInfo

    settings = _settings()
    if settings.local_broker:
        info = RuntimeInfo.read(settings)
        if info is None:
            err.print(
                "[red]no broker[/]: start the local stack (touchstream up) or set "
                "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS"
            )
            raise typer.Exit(2)
        settings = settings.with_bootstrap(info.bootstrap_servers)
    return settings


def _bar(what: str, total: int | None) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=total is None and not err.is_terminal,
    )


@app.command(epilog=_env_help("kafka", "topics"))
def emit(
    source: Annotated[str, typer.Argument(help="a JSON Lines file of events, or - for stdin")],
) -> None:
    """Validate and send JSON Lines events; bad lines are reported with their line
    number and the rest are still sent. Exit code 1 when any line was bad."""
    from touchstream.producers.emitter import EmitError, Emitter
    from touchstream.producers.send import emit_lines

    settings = _producer_settings()
    if source == "-":
        lines: list[bytes] = sys.stdin.buffer.read().splitlines()
    else:
        try:
            lines = Path(source).read_bytes().splitlines()
        except OSError as exc:
            err.print(f"[red]cannot read {source}[/]: {exc}")
            raise typer.Exit(2) from exc
    try:
        with (
            Emitter(settings, client_id="touchstream-emit") as emitter,
            _bar("emitting", len(lines)) as bar,
        ):
            task = bar.add_task("lines", total=len(lines))
            report = emit_lines(emitter, lines, lambda n: bar.update(task, completed=n))
    except EmitError as exc:
        err.print(f"[red]emit failed[/]: {exc}")
        raise typer.Exit(1) from exc
    for number, why in report.bad:
        err.print(f"[red]line {number}[/]: {why}")
    console.print(f"sent {report.sent} events, {len(report.bad)} bad lines")
    raise typer.Exit(1 if report.bad else 0)


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    try:
        if text[-1:] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: use seconds or 90s, 30m, 6h, 2d") from exc


@app.command(epilog=_env_help("kafka", "topics", "streams"))
def simulate(
    customers: Annotated[int, typer.Option(help="simulated customers")] = 200,
    duration: Annotated[str, typer.Option(help="event time simulated: 3600, 90m, 6h, 2d")] = "6h",
    rate: Annotated[float, typer.Option(help="messages/s to send; 0 = as fast as possible")] = 0,
    start: Annotated[
        str | None,
        typer.Option(help="ISO 8601 start of event time (default: so that the stream ends now)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="same seed and options: same bytes")] = 7,
    duplicates: Annotated[float, typer.Option(help="share of events sent twice")] = 0.0,
    out_of_order: Annotated[float, typer.Option(help="share sent late, within lateness")] = 0.0,
    late: Annotated[float, typer.Option(help="share of late-able events beyond lateness")] = 0.0,
    malformed: Annotated[float, typer.Option(help="malformed messages per event")] = 0.0,
    settle: Annotated[
        bool, typer.Option(help="end with a tail past every timeout so every outcome is decided")
    ] = True,
    truth: Annotated[Path, typer.Option(help="where to write the ground truth (JSON)")] = Path(
        "touchstream-truth.json"
    ),
    jsonl: Annotated[
        Path | None,
        typer.Option(help="write the messages' valid events here as JSON Lines; send nothing"),
    ] = None,
) -> None:
    """A deterministic storefront: journeys across channels, sent to the raw topics,
    with the ground truth (KPIs a correct pipeline must produce) written next to it."""
    from datetime import UTC, datetime, timedelta

    from touchstream.producers.emitter import EmitError, Emitter
    from touchstream.producers.send import send_messages
    from touchstream.producers.simulator import SimulationConfig, Simulator
    from touchstream.producers.truth import truth_for

    settings = _settings()
    streams = settings.streams
    seconds = _duration(duration)
    if start is None:
        tail = streams.abandonment_timeout_s + streams.allowed_lateness_s + 60
        begin = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds + tail)
    else:
        begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    try:
        config = SimulationConfig(
            customers=customers,
            start=begin,
            duration_s=seconds,
            seed=seed,
            duplicates=duplicates,
            out_of_order=out_of_order,
            late=late,
            malformed=malformed,
            allowed_lateness_s=streams.allowed_lateness_s,
            abandonment_timeout_s=streams.abandonment_timeout_s,
            settle=settle,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with err.status("simulating"):
        messages = Simulator(config).messages()
        result = truth_for(messages, streams)
    truth.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    if jsonl is not None:
        with jsonl.open("wb") as out:
            for message in messages:
                if message.kind in ("event", "out_of_order", "late"):
                    out.write(message.value + b"\n")
        console.print(f"wrote {result.events} events to {jsonl}; ground truth in {truth}")
        return
    settings = _producer_settings()
    try:
        with (
            Emitter(settings, client_id="touchstream-simulate") as emitter,
            _bar("sending", len(messages)) as bar,
        ):
            task = bar.add_task("messages", total=len(messages))
            send_messages(
                emitter, settings, messages, rate, lambda n: bar.update(task, completed=n)
            )
            emitter.flush(timeout_s=120)
            if emitter.failures:
                raise EmitError(f"{len(emitter.failures)} messages not acknowledged")
    except EmitError as exc:
        err.print(f"[red]simulate failed[/]: {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"sent {len(messages)} messages: {result.events} events ({result.late} late), "
        f"{result.duplicates} duplicates, {sum(result.dead_letters.values())} malformed; "
        f"ground truth in {truth}"
    )


@app.command(epilog=_env_help(*STACK_SECTIONS))
def doctor() -> None:
    """Check the broker, topics and ClickHouse; say what is wrong and how to fix it."""
    from touchstream.doctor import run_checks

    settings = _settings()
    ok = asyncio.run(run_checks(settings, console))
    raise typer.Exit(0 if ok else 1)


@app.command()
def config() -> None:
    """Print the effective settings (secrets masked) and every TOUCHSTREAM_ variable."""
    settings = _settings()
    console.print_json(json.dumps(settings.safe_dump(), default=str))
    table = Table(title="environment variables")
    for column in ("variable", "default", "meaning"):
        table.add_column(column)
    for row in env_variables():
        table.add_row(*row)
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
