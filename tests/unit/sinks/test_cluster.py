"""The cluster variant of the schema: generated from the same migrations, every
statement parses in ClickHouse (the embedded engine's parser), and the replicated
tables are the single-node tables under another name and engine."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from typer.testing import CliRunner

from touchstream.sinks.cluster import ClusterDDLError, on_cluster, sharding_key
from touchstream.sinks.migrate import (
    BOOTSTRAP,
    available,
    bi_access_statements,
    schema_statements,
)

CLUSTER = "analytics"
DATABASE = "touchstream"
ENGINE = re.compile(r"ENGINE = (\w+)")


def formatted(ch: Any, statement: str) -> str:
    """ClickHouse's own canonical text of a statement; raises on a syntax error."""
    result = ch.query("SELECT formatQuery({q:String})", parameters={"q": statement})
    return str(result.result_rows[0][0])


def single_tables() -> dict[str, str]:
    """Table name → its single-node CREATE TABLE, over every migration."""
    tables = {}
    for migration in [BOOTSTRAP, *available()]:
        for statement in migration.statements(DATABASE):
            found = re.match(r"CREATE TABLE IF NOT EXISTS `touchstream`\.(\w+)", statement)
            if found:
                tables[found[1]] = statement
    return tables


def test_every_cluster_statement_parses(ch: Any) -> None:
    statements = schema_statements(DATABASE, CLUSTER)
    statements += bi_access_statements(DATABASE, "bi", "secret", CLUSTER)
    for statement in statements:
        text = formatted(ch, statement)
        assert f"ON CLUSTER {CLUSTER}" in text, text


def test_single_node_output_is_the_migrations_unchanged(ch: Any) -> None:
    for migration in available():
        plain = migration.statements(DATABASE)
        assert migration.statements(DATABASE, None) == plain
        assert migration.statements(DATABASE, "") == plain
        assert all("ON CLUSTER" not in s and "Replicated" not in s for s in plain)
    # The bootstrap DDL that migrate() runs first, with the database back-quoted.
    assert BOOTSTRAP.statements(DATABASE) == [
        "CREATE DATABASE IF NOT EXISTS `touchstream`",
        "CREATE TABLE IF NOT EXISTS `touchstream`.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY version",
    ]
    for statement in schema_statements(DATABASE):
        formatted(ch, statement)


def test_each_table_is_a_replicated_local_table_with_a_distributed_one_in_front(
    ch: Any,
) -> None:
    tables = single_tables()
    assert {"events", "kpi_touchpoint", "dead_letters", "alerts", "schema_migrations"} <= set(
        tables
    )
    cluster = schema_statements(DATABASE, CLUSTER)
    for table, single in tables.items():
        local = next(s for s in cluster if f"`{table}_local` ON CLUSTER" in s.split("\n")[0])
        front = next(
            s
            for s in cluster
            if s.startswith(f"CREATE TABLE IF NOT EXISTS `{DATABASE}`.`{table}` ON")
        )
        # Same columns, keys, partitions and settings: only the name and the engine
        # (replicated, same arguments after the ZooKeeper path and replica) differ.
        engine = ENGINE.search(single)
        assert engine is not None
        back = local.replace(f"`{table}_local` ON CLUSTER `{CLUSTER}`", table).replace(
            "('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')", ""
        )
        back = back.replace("'/clickhouse/tables/{shard}/{database}/{table}', '{replica}', ", "")
        back = back.replace(f"Replicated{engine[1]}", engine[1])
        assert formatted(ch, back) == formatted(ch, single)
        text = formatted(ch, front)
        assert f"AS {DATABASE}.{table}_local" in text
        assert f"Distributed('{CLUSTER}', '{DATABASE}', '{table}_local', cityHash64(" in text
        assert cluster.index(local) < cluster.index(front)


def test_sharding_key_is_the_sorting_key() -> None:
    # Rows that ReplacingMergeTree would collapse share a sorting key, so a shard.
    cluster = "\n".join(schema_statements(DATABASE, CLUSTER))
    assert "'events_local', cityHash64(identity, occurred_at, event_id))" in cluster
    assert (
        "'kpi_touchpoint_local', cityHash64(kpi, channel, touchpoint, window_size, window_start))"
        in cluster
    )
    assert "'alerts_local', cityHash64(alert_id))" in cluster
    assert sharding_key("ORDER BY version SETTINGS x = 1") == "cityHash64(version)"
    assert sharding_key("PARTITION BY f(a) ORDER BY (a, g(b, c)) TTL d") == "cityHash64(a, g(b, c))"
    assert sharding_key("ORDER BY tuple()") == "rand()"
    with pytest.raises(ClusterDDLError, match="ORDER BY"):
        sharding_key("PARTITION BY a")


def test_views_read_the_distributed_tables_with_global_joins(ch: Any) -> None:
    cluster = schema_statements(DATABASE, CLUSTER)
    views = [s for s in cluster if s.startswith("CREATE VIEW")]
    assert {re.match(r"CREATE VIEW IF NOT EXISTS `touchstream`\.(\w+)", v)[1] for v in views} == {  # type: ignore[index]
        "feedback",
        "identities",
        "journeys",
        "sessions",
    }
    journeys = next(v for v in views if ".journeys ON CLUSTER" in v)
    assert "GLOBAL LEFT JOIN `touchstream`.identities" in journeys
    assert "FROM `touchstream`.events AS e FINAL" in journeys  # the Distributed table
    # A literal IN list stays as it is; a subquery becomes GLOBAL IN.
    view = on_cluster(
        "CREATE VIEW `d`.v AS SELECT a FROM `d`.t ARRAY JOIN arr "
        "WHERE a IN ('x', 'JOIN') AND b NOT IN (SELECT b FROM `d`.u) "
        "AND c GLOBAL IN (SELECT c FROM `d`.w)",
        CLUSTER,
    )[0]
    assert "IN ('x', 'JOIN')" in view
    assert "GLOBAL NOT IN (SELECT b" in view
    assert "c GLOBAL IN (SELECT c" in view and "GLOBAL GLOBAL" not in view
    assert "ARRAY JOIN arr" in view and "GLOBAL ARRAY" not in view
    formatted(ch, view)


def test_alter_rules(ch: Any) -> None:
    add = on_cluster("ALTER TABLE `d`.events ADD COLUMN IF NOT EXISTS x UInt8 DEFAULT 0", CLUSTER)
    operation = "ADD COLUMN IF NOT EXISTS x UInt8 DEFAULT 0"
    assert add == [
        f"ALTER TABLE `d`.`events_local` ON CLUSTER `analytics` {operation}",
        f"ALTER TABLE `d`.`events` ON CLUSTER `analytics` {operation}",
    ]
    drop = on_cluster("ALTER TABLE `d`.events DROP COLUMN x, DROP COLUMN y", CLUSTER)
    assert [s.split(" ON ")[0] for s in drop] == [
        "ALTER TABLE `d`.`events`",
        "ALTER TABLE `d`.`events_local`",
    ]
    mutation = on_cluster("ALTER TABLE `d`.events DELETE WHERE customer_id = 'a, b'", CLUSTER)
    assert mutation == [
        "ALTER TABLE `d`.`events_local` ON CLUSTER `analytics` DELETE WHERE customer_id = 'a, b'"
    ]
    settings = on_cluster("ALTER TABLE `d`.events MODIFY SETTING ttl_only_drop_parts = 1", CLUSTER)
    assert len(settings) == 1 and "`events_local`" in settings[0]
    for statement in add + drop + mutation + settings:
        formatted(ch, statement)
    with pytest.raises(ClusterDDLError, match="split column changes"):
        on_cluster("ALTER TABLE `d`.events ADD COLUMN x UInt8, DELETE WHERE 1", CLUSTER)


def test_drop_and_database_rules(ch: Any) -> None:
    assert on_cluster("DROP TABLE IF EXISTS `d`.t SYNC", CLUSTER) == [
        "DROP TABLE IF EXISTS `d`.`t` ON CLUSTER `analytics` SYNC",
        "DROP TABLE IF EXISTS `d`.`t_local` ON CLUSTER `analytics` SYNC",
    ]
    assert on_cluster("DROP VIEW `d`.v", CLUSTER) == ["DROP VIEW `d`.`v` ON CLUSTER `analytics`"]
    database = on_cluster("CREATE DATABASE IF NOT EXISTS `d` ENGINE = Atomic", CLUSTER)
    assert database == ["CREATE DATABASE IF NOT EXISTS `d` ON CLUSTER `analytics` ENGINE = Atomic"]
    formatted(ch, database[0])


def test_literals_do_not_confuse_the_rewrite(ch: Any) -> None:
    statement = (
        "CREATE TABLE IF NOT EXISTS `d`.t\n"
        "(\n    a String COMMENT 'ORDER BY (x) ON CLUSTER, it''s ) here',\n"
        "    `b c` UInt8 DEFAULT position(a, ')')\n)\n"
        "ENGINE = SummingMergeTree((b_sum))\nORDER BY (a, `b c`)\n"
        "SETTINGS index_granularity = 8192 COMMENT 'PRIMARY KEY z'"
    )
    local, front = on_cluster(statement, CLUSTER)
    assert (
        "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', "
        "'{replica}', (b_sum))" in local
    )
    assert "COMMENT 'ORDER BY (x) ON CLUSTER, it''s ) here'" in local
    assert front.endswith("cityHash64(a, `b c`))")
    formatted(ch, local)
    formatted(ch, front)


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("CREATE MATERIALIZED VIEW `d`.m TO `d`.t AS SELECT 1", "materialized view"),
        ("CREATE TABLE `d`.t (a UInt8) ENGINE = Memory", "only single-node"),
        ("CREATE TABLE `d`.t (a UInt8) ENGINE = ReplicatedMergeTree ORDER BY a", "only single"),
        ("CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a", "database-qualified"),
        ("CREATE TABLE `d`.t ON CLUSTER x (a UInt8) ENGINE = MergeTree ORDER BY a", "without ON"),
        ("INSERT INTO `d`.t VALUES (1)", "no cluster rule"),
        ("OPTIMIZE TABLE `d`.t FINAL", "no cluster rule"),
        ("CREATE TABLE `d`.t (a UInt8 ENGINE = MergeTree ORDER BY a", "unbalanced"),
    ],
)
def test_statements_without_a_cluster_rule_are_refused(statement: str, reason: str) -> None:
    with pytest.raises(ClusterDDLError, match=reason):
        on_cluster(statement, CLUSTER)


def test_cluster_names_are_identifiers_only() -> None:
    for bad in ["a-b", "x; DROP TABLE y", "c`", "1c"]:
        with pytest.raises(ValueError, match="plain identifier"):
            schema_statements(DATABASE, bad)


def test_cli_prints_the_cluster_ddl(ch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from touchstream.cli import app

    for name in [n for n in os.environ if n.startswith("TOUCHSTREAM_")]:
        monkeypatch.delenv(name)
    result = CliRunner().invoke(app, ["migrate", "--print-sql", "--cluster", CLUSTER])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "-- touchstream schema, database touchstream, cluster analytics"
    sql = "\n".join(line for line in lines if not line.startswith("--"))
    body = [s.strip() for s in sql.split(";\n") if s.strip()]
    assert body[0] == "CREATE DATABASE IF NOT EXISTS `touchstream` ON CLUSTER `analytics`"
    expected = schema_statements(DATABASE, CLUSTER)
    expected += bi_access_statements(DATABASE, "touchstream_bi", None, CLUSTER)
    assert [s.rstrip(";") for s in body] == expected
    for statement in body:
        formatted(ch, statement)
    single = CliRunner().invoke(app, ["migrate", "--print-sql"])
    assert single.exit_code == 0 and "ON CLUSTER" not in single.stdout
    assert "Replicated" not in single.stdout


def test_erasure_mutates_the_local_tables_on_a_cluster(ch: Any) -> None:
    from touchstream.sinks.erase import _STATEMENTS, delete_statement

    for table in _STATEMENTS:
        single = delete_statement(table)
        assert single.startswith(f"ALTER TABLE {{db:Identifier}}.{table} DELETE WHERE")
        clustered = delete_statement(table, CLUSTER)
        assert clustered == single.replace(
            f".{table} DELETE", f".{table}_local ON CLUSTER `{CLUSTER}` DELETE"
        )
        assert f"ON CLUSTER {CLUSTER}" in formatted(ch, clustered)
