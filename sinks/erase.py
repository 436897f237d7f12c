"""GDPR erasure: remove one customer's rows from every table that holds them.

Uses mutations (``ALTER TABLE ... DELETE``, waited for with ``mutations_sync=2``),
not lightweight ``DELETE FROM``, which only masks rows until a later merge.
The customer is found by ``customer_id`` and by every ``anonymous_id`` linked to
it (identity stitching), so pre-login events go too. ``kpi_touchpoint`` holds only
aggregates and stays. Dead letters are matched by the ids appearing in their raw
payload. Kafka keeps raw events until topic retention expires (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from touchstream.sinks.cluster import LOCAL_SUFFIX, quote_cluster

# Table → (count, delete) for a person's rows; {ids:Array(String)} holds the
# customer id and its anonymous ids. Constant SQL: values are bound, never formatted.
_STATEMENTS = {
    "events": (
        "SELECT count() FROM {db:Identifier}.events"
        " WHERE customer_id IN {ids:Array(String)} OR anonymous_id IN {ids:Array(String)}",
        "ALTER TABLE {db:Identifier}.events DELETE"
        " WHERE customer_id IN {ids:Array(String)} OR anonymous_id IN {ids:Array(String)}",
    ),
    "alerts": (
        "SELECT count() FROM {db:Identifier}.alerts"
        " WHERE customer_id IN {ids:Array(String)} OR anonymous_id IN {ids:Array(String)}",
        "ALTER TABLE {db:Identifier}.alerts DELETE"
        " WHERE customer_id IN {ids:Array(String)} OR anonymous_id IN {ids:Array(String)}",
    ),
    "dead_letters": (
        "SELECT count() FROM {db:Identifier}.dead_letters"
        " WHERE arrayExists(id -> position(payload, id) > 0, {ids:Array(String)})",
        "ALTER TABLE {db:Identifier}.dead_letters DELETE"
        " WHERE arrayExists(id -> position(payload, id) > 0, {ids:Array(String)})",
    ),
}


@dataclass(frozen=True)
class Erasure:
    customer_id: str
    identities: tuple[str, ...]
    rows: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def linked_ids(client: Any, database: str, customer_id: str) -> list[str]:
    result = client.query(
        "SELECT DISTINCT anonymous_id FROM {db:Identifier}.events "
        "WHERE customer_id = {cid:String} AND anonymous_id != ''",
        parameters={"db": database, "cid": customer_id},
    )
    return sorted(str(row[0]) for row in result.result_rows)


def delete_statement(table: str, cluster: str | None = None) -> str:
    """The mutation that erases from ``table``. On a cluster the rows live in the
    replicated ``<table>_local`` tables (a Distributed table takes no mutations):
    the mutation goes there, ON CLUSTER; counting still reads the Distributed table."""
    sql = _STATEMENTS[table][1]
    if not cluster:
        return sql
    target = f"ALTER TABLE {{db:Identifier}}.{table} "
    assert sql.startswith(target)  # noqa: S101 - the constant statements above
    return (
        f"ALTER TABLE {{db:Identifier}}.{table}{LOCAL_SUFFIX} ON CLUSTER {quote_cluster(cluster)} "
        + sql[len(target) :]
    )


def erase_customer(
    client: Any, database: str, customer_id: str, cluster: str | None = None
) -> Erasure:
    if not customer_id.strip():
        raise ValueError("a customer id is required")
    ids = [customer_id, *linked_ids(client, database, customer_id)]
    rows = {}
    bind = {"db": database, "ids": ids}
    for table, (count_sql, _) in _STATEMENTS.items():
        rows[table] = int(client.query(count_sql, parameters=bind).result_rows[0][0])
        if rows[table]:
            client.command(
                delete_statement(table, cluster), parameters=bind, settings={"mutations_sync": 2}
            )
    return Erasure(customer_id, tuple(ids[1:]), rows)
