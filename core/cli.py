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
from typing import Annotated, Any

import typer
from rich.console import Console
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
    from touchstream.stack import Stack, StackError

    settings = _settings()
    _logging(settings)

    async def serve() -> None:
        stack = Stack(settings)
        try:
            await stack.start()
            served = (
                f" (HTTP http://{settings.clickhouse.serve_host}:{stack.http_port})"
                if stack.http_port
                else ""
            )
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
    """Run one stream worker (Faust) against the configured broker, until SIGTERM."""
    from touchstream.streams.worker import run_worker

    settings = _settings()
    if settings.local_broker:
        err.print(
            "[red]TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS is not set[/] (or use `touchstream up`)"
        )
        raise typer.Exit(2)
    run_worker(settings)


@app.command(epilog=_env_help("kafka", "topics", "clickhouse", "sink", "metrics"))
def sink() -> None:
    """Run the ClickHouse sink alone against the configured broker, until SIGTERM."""
    from prometheus_client import CollectorRegistry, start_http_server

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
        ),
        list(topics.values()),
        metrics,
    )
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
                f"http://{settings.clickhouse.serve_host}:{stack.http_port} — Ctrl-C stops"
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
