"""Versioned schema migrations: numbered SQL files, applied once, recorded in a table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def quote_identifier(name: str) -> str:
    """A plain identifier, back-quoted; anything else is refused (never escaped)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain identifier")
    return f"`{name}`"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, database: str) -> list[str]:
        """The statements for ``database``. DDL cannot take it as a bound parameter
        (in CREATE VIEW, ClickHouse reads {db:Identifier} as a parameterized view),
        so the validated, quoted identifier replaces ``{db}``; no value is ever
        formatted into SQL."""
        db = quote_identifier(database)
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        # A statement ends with ';' at the end of a line (a ';' inside a string does not).
        parts = re.split(r";[ \t]*(?:\n|$)", body)
        return [part.strip().replace("{db}", db) for part in parts if part.strip()]


def available() -> list[Migration]:
    folder = resources.files("touchstream.sinks.migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def applied(client: Any, database: str) -> set[int]:
    result = client.query(
        "SELECT version FROM {db:Identifier}.schema_migrations", parameters={"db": database}
    )
    return {int(row[0]) for row in result.result_rows}


def migrate(client: Any, database: str) -> list[Migration]:
    """Bring ``database`` up to date; returns the migrations applied now (idempotent)."""
    bind = {"db": database}
    client.command("CREATE DATABASE IF NOT EXISTS {db:Identifier}", parameters=bind)
    client.command(
        "CREATE TABLE IF NOT EXISTS {db:Identifier}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY version",
        parameters=bind,
    )
    done = applied(client, database)
    ran = []
    for migration in available():
        if migration.version in done:
            continue
        for statement in migration.statements(database):
            client.command(statement)
        client.insert(
            "schema_migrations",
            [(migration.version, migration.name, datetime.now(UTC))],
            column_names=["version", "name", "applied_at"],
            database=database,
        )
        ran.append(migration)
    return ran
