from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.samples import wire
from touchstream.schemas import Invalid, parse_object
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks.base import SourceRecord
from touchstream.sinks.clickhouse import ClickHouseSink, default_routes
from touchstream.sinks.erase import erase_customer
from touchstream.sinks.migrate import bi_access_statements, migrate
from touchstream.streams.alerts import raise_alert

TOPICS = {"events": "ev", "kpis": "kp", "dead_letters": "dl", "alerts": "al"}
NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


def count(ch: Any, sql: str) -> int:
    return int(ch.query(sql).result_rows[0][0])


def test_erase_removes_a_customer_and_their_anonymous_past(ch: Any) -> None:
    db = f"e_{uuid.uuid4().hex[:8]}"
    migrate(ch, db)
    sink = ClickHouseSink(
        lambda: ch, db, default_routes(TOPICS), sink_metrics.create(CollectorRegistry())
    )
    sink.setup()
    rows = [
        wire("page_view", customer_id=None, anonymous_id="anon-7"),  # before login
        wire("identify", customer_id="cust-7", anonymous_id="anon-7"),
        wire("nps_response", customer_id="cust-7", anonymous_id=None, properties={"score": 1}),
        wire("page_view", customer_id="cust-8", anonymous_id="anon-8"),  # someone else
    ]
    offset = 0
    for data in rows:
        event = parse_object({k: v for k, v in data.items() if v is not None})
        assert not isinstance(event, Invalid), event
        event = event.model_copy(update={"received_at": NOW})
        sink.add(
            SourceRecord("ev", 0, offset, None, event.model_dump_json(exclude_none=True).encode())
        )
        alert = raise_alert(event, NOW)
        if alert is not None:
            sink.add(SourceRecord("al", 0, offset, None, alert.model_dump_json().encode()))
        offset += 1
    bad = b'{"event_type": "page_view", "customer_id": "cust-7", "oops": '
    dead = (
        '{"reason": "not_json", "source_topic": "t", "source_partition": 0, "source_offset": 9, '
        '"payload": %s, "payload_encoding": "utf-8", "original_size": 60, '
        '"received_at": "2026-11-02T12:00:00Z"}'
    )
    import json

    sink.add(SourceRecord("dl", 0, 0, None, (dead % json.dumps(bad.decode())).encode()))
    sink.flush()

    erased = erase_customer(ch, db, "cust-7")
    assert erased.identities == ("anon-7",)
    assert erased.rows == {"events": 3, "alerts": 1, "dead_letters": 1}
    assert count(ch, f"SELECT count() FROM {db}.events") == 1  # cust-8 stays
    assert (
        count(
            ch,
            f"SELECT count() FROM {db}.events "
            "WHERE position(properties, 'cust-7') > 0 OR identity IN ('cust-7', 'anon-7')",
        )
        == 0
    )
    assert count(ch, f"SELECT count() FROM {db}.alerts") == 0
    assert count(ch, f"SELECT count() FROM {db}.dead_letters") == 0
    # Rows are gone from the parts, not masked: mutations, not lightweight deletes.
    assert (
        count(ch, f"SELECT count() FROM system.mutations WHERE database = '{db}' AND NOT is_done")
        == 0
    )
    again = erase_customer(ch, db, "cust-7")
    assert again.total == 0
    with pytest.raises(ValueError, match="required"):
        erase_customer(ch, db, " ")


def test_bi_access_ddl_parses_and_quotes(ch: Any) -> None:
    statements = bi_access_statements("touchstream", "touchstream_bi", "s3cret")
    assert statements[0] == "CREATE ROLE IF NOT EXISTS `touchstream_bi_reader`"
    assert "GRANT SELECT ON `touchstream`.* TO `touchstream_bi_reader`" in statements
    assert any("readonly = 1" in s for s in statements)
    assert all("s3cret" not in s for s in statements)  # only its SHA-256
    for statement in statements:
        formatted = ch.query(
            "SELECT formatQuery({q:String})", parameters={"q": statement}
        ).result_rows
        assert formatted[0][0]  # the engine's parser accepts it
    assert len(bi_access_statements("touchstream", "touchstream_bi", None)) == 2  # role only
    with pytest.raises(ValueError, match="plain identifier"):
        bi_access_statements("touchstream", "bi`; DROP USER x; --", "p")
