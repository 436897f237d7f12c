"""Versioned schema migrations: numbered SQL files, applied once, recorded in a table."""

from __future__ import annotations

import hashlib
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


def bi_access_statements(database: str, bi_user: str, bi_password: str | None) -> list[str]:
    """DDL for read-only BI access on a ClickHouse server: a role with SELECT on the
    database, and (given a password) a user with that role and readonly=1.

    The embedded engine has no user directory; there the HTTP interface enforces
    read-only access instead. The password goes in as its SHA-256 (hex, checked).
    """
    db = quote_identifier(database)
    role = quote_identifier(f"{database}_bi_reader")
    user = quote_identifier(bi_user)
    statements = [
        f"CREATE ROLE IF NOT EXISTS {role}",
        f"GRANT SELECT ON {db}.* TO {role}",
    ]
    if bi_password:
        digest = hashlib.sha256(bi_password.encode()).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", digest)  # noqa: S101 - a hex digest, by construction
        identified = f"IDENTIFIED WITH sha256_hash BY '{digest}'"
        statements += [
            f"CREATE USER IF NOT EXISTS {user} {identified} SETTINGS readonly = 1",
            f"ALTER USER {user} {identified} SETTINGS readonly = 1",
            f"GRANT {role} TO {user}",
            f"ALTER USER {user} DEFAULT ROLE {role}",
        ]
    return statements


def grant_bi_access(client: Any, database: str, bi_user: str, bi_password: str | None) -> bool:
    """Apply :func:`bi_access_statements` on a server; True if the user was created."""
    for statement in bi_access_statements(database, bi_user, bi_password):
        client.command(statement)
    return bool(bi_password)
