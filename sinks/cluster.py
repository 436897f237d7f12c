"""The cluster variant of the schema, generated from the single-node migrations.

There is one copy of the schema: ``sinks/migrations/*.sql``, written for one server.
For a ClickHouse cluster every statement is rewritten here, mechanically:

- ``CREATE TABLE db.t (...) ENGINE = XMergeTree(args) ...`` becomes the pair
  ``db.t_local ON CLUSTER c`` with ``ReplicatedXMergeTree('/clickhouse/tables/{shard}/
  {database}/{table}', '{replica}', args)`` (same columns, keys and settings) and
  ``db.t ON CLUSTER c AS db.t_local ENGINE = Distributed('c', 'db', 't_local', key)``.
  Readers and the sink keep using ``db.t``: the Distributed table.
- The sharding key is ``cityHash64(<the table's ORDER BY>)``: rows with equal sorting
  keys land on one shard, so ReplacingMergeTree still collapses duplicates (it does
  so per shard only) and ``FINAL`` stays right through the Distributed table.
- ``CREATE VIEW`` / ``CREATE DATABASE`` / ``DROP VIEW`` get ``ON CLUSTER``; views read
  the Distributed tables, so they see every shard, and their JOINs and
  ``IN (SELECT ...)`` become GLOBAL (the right side is computed once).
- ``ALTER TABLE db.t``: column changes go to ``t_local`` and ``t`` (``ON CLUSTER``);
  anything else (mutations, settings, TTL, indexes) to ``t_local`` only.
  ``DROP TABLE`` drops both.

A statement with no rule here (a materialized view, an INSERT, ...) raises
:class:`ClusterDDLError` instead of producing DDL that is wrong on a cluster.
Identifiers come validated and back-quoted from :mod:`touchstream.sinks.migrate`;
the cluster name is validated the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

REPLICATION_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"
LOCAL_SUFFIX = "_local"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_NAME = r"(?:`[A-Za-z_][A-Za-z0-9_]*`|[A-Za-z_][A-Za-z0-9_]*)"
_QUALIFIED = rf"(?P<name>(?:{_NAME}\.)?{_NAME})"
_IF_NOT_EXISTS = r"(?:IF\s+NOT\s+EXISTS\s+)?"

_CREATE_TABLE = re.compile(rf"^CREATE\s+TABLE\s+{_IF_NOT_EXISTS}{_QUALIFIED}\s*", re.I)
_CREATE_VIEW = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+{_IF_NOT_EXISTS}{_QUALIFIED}", re.I
)
_CREATE_DATABASE = re.compile(rf"^CREATE\s+DATABASE\s+{_IF_NOT_EXISTS}{_QUALIFIED}", re.I)
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+{_QUALIFIED}\s+", re.I)
_DROP = re.compile(
    rf"^DROP\s+(?P<kind>TABLE|VIEW)\s+(?P<if_exists>IF\s+EXISTS\s+)?{_QUALIFIED}\s*(?P<sync>SYNC)?$",
    re.I,
)
_ENGINE = re.compile(r"ENGINE\s*=\s*(?P<engine>[A-Za-z]+)\s*", re.I)
_ON_CLUSTER = re.compile(r"\bON\s+CLUSTER\b", re.I)
# Table-level clauses after the engine, to cut the ORDER BY expression out.
_CLAUSE = re.compile(
    r"(ORDER\s+BY|PARTITION\s+BY|PRIMARY\s+KEY|SAMPLE\s+BY|TTL|SETTINGS|COMMENT)\b", re.I
)
_JOIN = re.compile(
    r"\b(?:(?:LEFT|RIGHT|FULL|INNER|CROSS|OUTER|ANY|ALL|SEMI|ANTI|ASOF|ARRAY)\s+)*JOIN\b", re.I
)
_IN_SUBQUERY = re.compile(r"\b(?:NOT\s+)?IN\s*\(\s*SELECT\b", re.I)
_COLUMN_OPERATION = re.compile(
    r"^(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b|^MODIFY\s+COMMENT\b", re.I
)


class ClusterDDLError(ValueError):
    """A statement the cluster rewrite has no rule for; the message says which."""


def quote_cluster(cluster: str) -> str:
    if not _IDENTIFIER.match(cluster):
        raise ValueError(f"cluster {cluster!r} is not a plain identifier")
    return f"`{cluster}`"


def on_cluster(statement: str, cluster: str) -> list[str]:
    """The cluster form of one single-node statement (one or two statements)."""
    quote_cluster(cluster)
    text = statement.strip()
    if _ON_CLUSTER.search(_outside_literals(text)):
        raise ClusterDDLError(f"migrations are written for one server, without ON CLUSTER: {text}")
    if match := _CREATE_TABLE.match(text):
        return _create_table(text, match, cluster)
    if re.match(r"^CREATE\s+MATERIALIZED\s+VIEW\b", text, re.I):
        raise ClusterDDLError(
            "a materialized view on a cluster must read and write *_local tables; "
            f"add its rule to sinks/cluster.py: {text[:80]}"
        )
    if match := _CREATE_VIEW.match(text):
        return [_insert_on_cluster(global_subqueries(text), match.end(), cluster)]
    if match := _CREATE_DATABASE.match(text):
        return [_insert_on_cluster(text, match.end(), cluster)]
    if match := _ALTER_TABLE.match(text):
        return _alter_table(text, match, cluster)
    if match := _DROP.match(text):
        return _drop(match, cluster)
    raise ClusterDDLError(f"no cluster rule for: {text[:80]}")


def global_subqueries(text: str) -> str:
    """JOINs and ``IN (SELECT ...)`` made GLOBAL: in a view over Distributed tables the
    right side is computed once, on the node that runs the query, and sent to every
    shard (a plain JOIN of two Distributed tables would run the right side on each
    shard, or be refused by ``distributed_product_mode = 'deny'``)."""
    flat = _outside_literals(text)
    at = [m.start() for m in _JOIN.finditer(flat) if "ARRAY" not in m[0].upper()]
    at += [m.start() for m in _IN_SUBQUERY.finditer(flat)]
    for position in sorted(at, reverse=True):
        if not re.search(r"\bGLOBAL\s+$", flat[:position], re.I):
            text = f"{text[:position]}GLOBAL {text[position:]}"
    return text


def _on(cluster: str) -> str:
    return f"ON CLUSTER {quote_cluster(cluster)}"


def _insert_on_cluster(text: str, at: int, cluster: str) -> str:
    return f"{text[:at].rstrip()} {_on(cluster)} {text[at:].lstrip()}".rstrip()


def _split_name(qualified: str) -> tuple[str | None, str]:
    parts = qualified.split(".")
    table = parts[-1].strip("`")
    database = parts[0].strip("`") if len(parts) == 2 else None
    return database, table


def _qualified(database: str | None, table: str) -> str:
    return f"`{database}`.`{table}`" if database else f"`{table}`"


def _create_table(text: str, match: re.Match[str], cluster: str) -> list[str]:
    database, table = _split_name(match["name"])
    if database is None:
        raise ClusterDDLError(f"table {table} needs a database-qualified name on a cluster")
    head = text[: match.start("name")]
    start = match.end()
    if not text.startswith("(", start):
        raise ClusterDDLError(f"CREATE TABLE {table}: expected a column list")
    columns_end = _closing(text, start)
    columns = text[start:columns_end]
    rest = text[columns_end:].lstrip()
    engine_match = _ENGINE.match(rest)
    if engine_match is None:
        raise ClusterDDLError(f"CREATE TABLE {table}: no ENGINE clause")
    engine = engine_match["engine"]
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise ClusterDDLError(
            f"CREATE TABLE {table}: only single-node *MergeTree engines are replicated, "
            f"not {engine}"
        )
    after_engine = engine_match.end()
    arguments = ""
    if rest.startswith("(", after_engine):
        arguments_end = _closing(rest, after_engine)
        arguments = rest[after_engine + 1 : arguments_end - 1].strip()
        after_engine = arguments_end
    tail = rest[after_engine:].strip()
    replicated_args = ", ".join(
        [f"'{REPLICATION_PATH}'", f"'{REPLICA_NAME}'", *([arguments] if arguments else [])]
    )
    local = _qualified(database, table + LOCAL_SUFFIX)
    local_ddl = (
        f"{head}{local} {_on(cluster)}\n{columns}\n"
        f"ENGINE = Replicated{engine}({replicated_args})\n{tail}"
    ).rstrip()
    distributed_ddl = (
        f"{head}{_qualified(database, table)} {_on(cluster)} AS {local}\n"
        f"ENGINE = Distributed('{cluster}', '{database}', '{table}{LOCAL_SUFFIX}', "
        f"{sharding_key(tail)})"
    )
    return [local_ddl, distributed_ddl]


def sharding_key(table_clauses: str) -> str:
    """``cityHash64`` of the sorting key found in the clauses after ENGINE."""
    order_by = _clause(table_clauses, "ORDER BY")
    if order_by is None:
        raise ClusterDDLError("a MergeTree table needs ORDER BY to derive its sharding key")
    inner = order_by
    if order_by.startswith("(") and _closing(order_by, 0) == len(order_by):
        inner = order_by[1:-1].strip()
    if not inner or inner.lower() == "tuple()":
        return "rand()"
    return f"cityHash64({inner})"


def _clause(text: str, keyword: str) -> str | None:
    """The expression of a top-level clause (``ORDER BY``), up to the next clause."""
    starts = [(m.start(), m.end(), m[1]) for m in _top_level(text, _CLAUSE)]
    for index, (_, end, name) in enumerate(starts):
        if re.sub(r"\s+", " ", name).upper() == keyword:
            stop = starts[index + 1][0] if index + 1 < len(starts) else len(text)
            return text[end:stop].strip()
    return None


def _alter_table(text: str, match: re.Match[str], cluster: str) -> list[str]:
    database, table = _split_name(match["name"])
    operations = text[match.end() :]
    columns = [bool(_COLUMN_OPERATION.match(op)) for op in _split_top_level(operations)]
    local = f"ALTER TABLE {_qualified(database, table + LOCAL_SUFFIX)} {_on(cluster)} {operations}"
    if not any(columns):  # mutations, settings, TTL, indexes: the data lives in *_local
        return [local]
    if not all(columns):
        raise ClusterDDLError(
            f"ALTER TABLE {table}: split column changes and other operations into "
            "separate statements (they go to different tables on a cluster)"
        )
    distributed = f"ALTER TABLE {_qualified(database, table)} {_on(cluster)} {operations}"
    dropping = any(re.match(r"^DROP\b", op, re.I) for op in _split_top_level(operations))
    # A dropped column leaves the Distributed table first, an added one arrives last,
    # so queries through it never name a column a shard lacks.
    return [distributed, local] if dropping else [local, distributed]


def _drop(match: re.Match[str], cluster: str) -> list[str]:
    database, table = _split_name(match["name"])
    if_exists = "IF EXISTS " if match["if_exists"] else ""
    sync = " SYNC" if match["sync"] else ""
    if match["kind"].upper() == "VIEW":
        return [f"DROP VIEW {if_exists}{_qualified(database, table)} {_on(cluster)}{sync}"]
    return [
        f"DROP TABLE {if_exists}{_qualified(database, name)} {_on(cluster)}{sync}"
        for name in (table, table + LOCAL_SUFFIX)
    ]


# -- a small scanner that knows ClickHouse literals and parentheses --------------------


def _scan(text: str) -> Iterator[tuple[int, int]]:
    """(index, parenthesis depth) of every character outside quotes and back-quotes."""
    depth = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char in "'`\"":
            index = _after_quoted(text, index)
            continue
        if char == "(":
            yield index, depth
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ClusterDDLError(f"unbalanced ')' in: {text[:80]}")
            yield index, depth
        else:
            yield index, depth
        index += 1


def _after_quoted(text: str, start: int) -> int:
    quote = text[start]
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == quote:
            if text.startswith(quote * 2, index):  # a doubled quote is an escaped one
                index += 2
                continue
            return index + 1
        index += 1
    raise ClusterDDLError(f"unterminated {quote} in: {text[:80]}")


def _closing(text: str, start: int) -> int:
    """The index just after the ')' that closes the '(' at ``start``."""
    for index, depth in _scan(text[start:]):
        if depth == 0 and text[start + index] == ")":
            return start + index + 1
    raise ClusterDDLError(f"unbalanced '(' in: {text[start : start + 80]}")


def _outside_literals(text: str) -> str:
    """``text`` with quoted strings and identifiers blanked out."""
    kept = [" "] * len(text)
    for index, _ in _scan(text):
        kept[index] = text[index]
    return "".join(kept)


def _top_level(text: str, pattern: re.Pattern[str]) -> Iterator[re.Match[str]]:
    """Matches of ``pattern`` that start at depth 0, outside literals, on a word boundary."""
    top = [" "] * len(text)
    for index, depth in _scan(text):
        if depth == 0 and text[index] not in "()":
            top[index] = text[index]
    flat = "".join(top)
    for match in pattern.finditer(flat):
        if match.start() == 0 or not (
            flat[match.start() - 1].isalnum() or flat[match.start() - 1] == "_"
        ):
            yield match


def _split_top_level(text: str) -> list[str]:
    """Comma-separated parts at depth 0 (ALTER TABLE operations)."""
    parts, start = [], 0
    for index, depth in _scan(text):
        if depth == 0 and text[index] == ",":
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return [part for part in parts if part]
