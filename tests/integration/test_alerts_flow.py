"""Closed loop on the real broker: a detractor raises an alert within seconds,
case_closed closes it with its time to close, an old one is surfaced past the SLA."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import SettingsFactory
from tests.samples import wire
from touchstream.localbroker import LocalBroker
from touchstream.producers.emitter import Emitter
from touchstream.stack import Stack
from touchstream.streams.alerts import alert_id_for


def test_raise_close_and_sla(broker: LocalBroker, make_settings: SettingsFactory, ch: Any) -> None:
    settings = make_settings(
        broker.bootstrap_servers,
        streams={"alert_check_interval_s": 0.5, "alert_sla_s": 86_400},
    )
    db = settings.clickhouse.database
    now = datetime.now(UTC).replace(microsecond=0)
    fresh = wire(
        "nps_response",
        occurred_at=(now - timedelta(minutes=5)).isoformat(),
        properties={"score": 3, "comment": "<script>alert(1)</script> slow", "order_id": "o-1"},
    )
    to_close = wire(
        "csat_response", occurred_at=(now - timedelta(hours=2)).isoformat(), properties={"score": 1}
    )
    old = wire(
        "ces_response", occurred_at=(now - timedelta(days=2)).isoformat(), properties={"score": 2}
    )
    happy = wire("nps_response", occurred_at=now.isoformat(), properties={"score": 10})
    closing = wire(
        "case_closed",
        occurred_at=(now - timedelta(minutes=30)).isoformat(),
        properties={"alert_id": alert_id_for(to_close["event_id"]), "resolution": "refunded"},
    )

    def alerts() -> dict[str, tuple[str, Any, Any]]:
        rows = ch.query(
            f"SELECT event_id, status, time_to_close_s, text FROM {db}.alerts FINAL"
        ).result_rows
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        try:
            with Emitter(stack.settings) as emitter:
                for event in (fresh, to_close, old, happy, fresh):  # fresh twice: a re-send
                    emitter.emit(event)
            sent = time.monotonic()
            while fresh["event_id"] not in alerts():
                stack.check()
                assert time.monotonic() - sent < 20, "no alert within 20 s"
                await asyncio.sleep(0.2)
            raised_after = time.monotonic() - sent
            with Emitter(stack.settings) as emitter:
                emitter.emit(closing)
            deadline = time.monotonic() + 30
            want = {
                fresh["event_id"]: "open",
                to_close["event_id"]: "closed",
                old["event_id"]: "overdue",
            }
            while {k: v[0] for k, v in alerts().items()} != want:
                stack.check()
                assert time.monotonic() < deadline, alerts()
                await asyncio.sleep(0.3)
            got = alerts()
            assert got[to_close["event_id"]][1] == 90 * 60  # closed 1 h 30 min after the feedback
            assert got[fresh["event_id"]][2] == "<script>alert(1)</script> slow"  # kept as text
            assert raised_after < 10, f"alert took {raised_after:.1f} s"
            rows = ch.query(
                f"SELECT count() FROM {db}.alerts WHERE event_id = {{e:String}}",
                parameters={"e": fresh["event_id"]},
            ).result_rows
            assert rows[0][0] >= 1  # the re-sent detractor raised no second alert id
            ids = ch.query(f"SELECT uniqExact(alert_id) FROM {db}.alerts").result_rows[0][0]
            assert ids == 3
        finally:
            await stack.stop()

    asyncio.run(scenario())


def test_feedback_older_than_the_alert_retention_raises_none(
    broker: LocalBroker, make_settings: SettingsFactory, ch: Any
) -> None:
    # A closed case's slot is forgotten the retention after its closing; feedback
    # that far behind its partition could be a re-send of it, so it raises nothing.
    settings = make_settings(broker.bootstrap_servers, streams={"alert_retention_s": 3600})
    db = settings.clickhouse.database
    now = datetime.now(UTC).replace(microsecond=0)
    happy = wire("nps_response", occurred_at=now.isoformat(), properties={"score": 10})
    stale = wire(
        "nps_response",
        occurred_at=(now - timedelta(hours=2)).isoformat(),
        properties={"score": 1, "comment": "two hours ago"},
    )
    recent = wire(  # late too (beyond the 10 min lateness) but within the retention
        "csat_response",
        occurred_at=(now - timedelta(minutes=30)).isoformat(),
        properties={"score": 1},
    )

    async def scenario() -> None:
        stack = Stack(settings)
        await stack.start()
        try:
            with Emitter(stack.settings) as emitter:
                for event in (happy, stale, recent):  # one customer: one partition, in order
                    emitter.emit(event)
            deadline = time.monotonic() + 30
            while True:
                stack.check()
                rows = ch.query(f"SELECT event_id FROM {db}.alerts FINAL").result_rows
                landed = ch.query(f"SELECT count() FROM {db}.events FINAL").result_rows[0][0]
                if rows and landed == 3:
                    break
                assert time.monotonic() < deadline, (rows, landed)
                await asyncio.sleep(0.3)
            assert [r[0] for r in rows] == [recent["event_id"]]  # not the stale one
            late = ch.query(
                f"SELECT late FROM {db}.events FINAL WHERE event_id = {{e:String}}",
                parameters={"e": stale["event_id"]},
            ).result_rows
            assert late == [(1,)]  # stored, flagged late
        finally:
            await stack.stop()

    asyncio.run(scenario())
