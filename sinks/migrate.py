"""Versioned schema migrations: numbered SQL files, applied once, recorded in a table."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from touchstream.sinks.cluster import on_cluster, quote_cluster

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

    def statements(self, database: str, cluster: str | None = None) -> list[str]:
        """The statements for ``database``. DDL cannot take it as a bound parameter
        (in CREATE VIEW, ClickHouse reads {db:Identifier} as a parameterized view),
        so the validated, quoted identifier replaces ``{db}``; no value is ever
        formatted into SQL. With ``cluster``, each statement is rewritten for that
        cluster (replicated tables, Distributed tables in front: sinks/cluster.py)."""
        db = quote_identifier(database)
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        # A statement ends with ';' at the end of a line (a ';' inside a string does not).
        parts = re.split(r";[ \t]*(?:\n|$)", body)
        single = [part.strip().replace("{db}", db) for part in parts if part.strip()]
        if not cluster:
            return single
        return [rewritten for statement in single for rewritten in on_cluster(statement, cluster)]


# What every migration run starts with: the database, and the table that records
# which migrations ran. Rendered like a migration, so a cluster gets it replicated.
BOOTSTRAP = Migration(
    0,
    "bootstrap",
    "CREATE DATABASE IF NOT EXISTS {db};\n"
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
    "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
    "ENGINE = MergeTree ORDER BY version;\n",
)


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


def schema_statements(database: str, cluster: str | None = None) -> list[str]:
    """Every DDL statement ``migrate`` runs on an empty server, in order (for review:
    ``touchstream migrate --print-sql``)."""
    return [
        statement
        for migration in [BOOTSTRAP, *available()]
        for statement in migration.statements(database, cluster)
    ]


def migrate(client: Any, database: str, cluster: str | None = None) -> list[Migration]:
    """Bring ``database`` up to date; returns the migrations applied now (idempotent).

    With ``cluster``, the DDL runs ON CLUSTER with replicated tables behind
    Distributed ones; ``schema_migrations`` is written through its Distributed table
    synchronously, so the next run on any node sees it."""
    for statement in BOOTSTRAP.statements(database, cluster):
        client.command(statement)
    done = applied(client, database)
    ran = []
    for migration in available():
        if migration.version in done:
            continue
        for statement in migration.statements(database, cluster):
            client.command(statement)
        client.insert(
            "schema_migrations",
            [(migration.version, migration.name, datetime.now(UTC))],
            column_names=["version", "name", "applied_at"],
            database=database,
            settings={"distributed_foreground_insert": 1} if cluster else None,
        )
        ran.append(migration)
    return ran


def bi_access_statements(
    database: str, bi_user: str, bi_password: str | None, cluster: str | None = None
) -> list[str]:
    """DDL for read-only BI access on a ClickHouse server: a role with SELECT on the
    database, and (given a password) a user with that role and readonly=1.

    The embedded engine has no user directory; there the HTTP interface enforces
    read-only access instead. The password goes in as its SHA-256 (hex, checked).
    With ``cluster``, every statement runs ON CLUSTER (local user directories on
    each node; with a replicated user directory it is harmless).
    """
    db = quote_identifier(database)
    role = quote_identifier(f"{database}_bi_reader")
    user = quote_identifier(bi_user)
    on = f" ON CLUSTER {quote_cluster(cluster)}" if cluster else ""
    statements = [
        f"CREATE ROLE IF NOT EXISTS {role}{on}",
        f"GRANT{on} SELECT ON {db}.* TO {role}",
    ]
    if bi_password:
        digest = hashlib.sha256(bi_password.encode()).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", digest)  # noqa: S101 - a hex digest, by construction
        identified = f"IDENTIFIED WITH sha256_hash BY '{digest}'"
        statements += [
            f"CREATE USER IF NOT EXISTS {user}{on} {identified} SETTINGS readonly = 1",
            f"ALTER USER {user}{on} {identified} SETTINGS readonly = 1",
            f"GRANT{on} {role} TO {user}",
            f"ALTER USER {user}{on} DEFAULT ROLE {role}",
        ]
    return statements


def grant_bi_access(
    client: Any,
    database: str,
    bi_user: str,
    bi_password: str | None,
    cluster: str | None = None,
) -> bool:
    """Apply :func:`bi_access_statements` on a server; True if the user was created."""
    for statement in bi_access_statements(database, bi_user, bi_password, cluster):
        client.command(statement)
    return bool(bi_password)
