from __future__ import annotations

import uuid
from typing import Any

from touchstream.sinks.migrate import applied, available, migrate


def test_from_empty_then_rerun_is_a_no_op(ch: Any) -> None:
    database = f"m_{uuid.uuid4().hex[:8]}"
    ran = migrate(ch, database)
    assert [m.version for m in ran] == [m.version for m in available()]
    tables = {row[0] for row in ch.query(f"SHOW TABLES FROM {database}").result_rows}
    assert {"events", "kpi_touchpoint", "dead_letters", "schema_migrations"} <= tables
    assert migrate(ch, database) == []
    assert applied(ch, database) == {m.version for m in available()}
    rows = ch.query(f"SELECT count() FROM {database}.schema_migrations").result_rows
    assert rows[0][0] == len(available())


def test_statements_split_on_line_ending_semicolons_only() -> None:
    migration = available()[0]
    statements = migration.statements("db")
    assert all(s.startswith("CREATE TABLE IF NOT EXISTS `db`.") for s in statements)
    assert any("'JSON object; query with JSONExtract*'" in s for s in statements)


def test_database_names_are_identifiers_only() -> None:
    import pytest

    from touchstream.sinks.migrate import quote_identifier

    assert quote_identifier("touchstream") == "`touchstream`"
    for bad in ["a`b", "x; DROP TABLE y", "", "1abc", "a.b"]:
        with pytest.raises(ValueError, match="plain identifier"):
            quote_identifier(bad)
