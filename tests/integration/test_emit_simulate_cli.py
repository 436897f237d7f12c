"""`touchstream emit` and `touchstream simulate` as a user runs them, against the
real local broker: what they report is what is on the raw topics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from kafka import KafkaConsumer

from tests.conftest import SettingsFactory
from tests.samples import wire
from touchstream.kafka_admin import ensure_topics
from touchstream.localbroker import LocalBroker
from touchstream.settings import Settings


def cli(
    args: list[str], settings: Settings, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHSTREAM_")}
    env |= {
        "TOUCHSTREAM_DATA_DIR": str(settings.data_dir),
        "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": str(settings.kafka.bootstrap_servers),
        "TOUCHSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "TOUCHSTREAM_PII_KEY": "a-test-key-of-enough-length",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "touchstream.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def consume(settings: Settings, family: str) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(
        settings.topic(family),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        return [(m.key, m.value) for m in consumer]
    finally:
        consumer.close()


def test_emit_reports_bad_lines_by_number_and_sends_the_rest(
    broker: LocalBroker, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(broker.bootstrap_servers)
    asyncio.run(ensure_topics(settings))
    good = wire("nps_response")
    with_pii = {**wire("support_contact"), "event_id": "6f1de0c4-1f5b-4f0a-9a57-1d0de0f1a0a1"}
    with_pii["properties"] = {"reason": "late", "resolved": True, "email": "Ana@Example.com"}
    lines = [
        json.dumps(good),
        "{not json",
        "",
        json.dumps({**wire("csat_response"), "properties": {"score": 9}}),
        json.dumps(with_pii),
        "[1, 2]",
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli(["emit", str(path)], settings)
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 1, out
    assert "line 2" in out and "line 4" in out and "line 6" in out
    assert "line 1:" not in out and "line 5" not in out
    assert "sent 2 events, 3 bad lines" in out
    feedback = consume(settings, "feedback")
    assert [json.loads(v)["event_id"] for _, v in feedback] == [
        good["event_id"],
        with_pii["event_id"],
    ]
    assert all(b"Example.com" not in v for _, v in feedback)  # pseudonymised before sending

    # The same from standard input.
    again = cli(["emit", "-"], settings, stdin=(json.dumps(good) + "\n").encode())
    assert again.returncode == 0 and b"sent 1 events, 0 bad lines" in again.stdout


def test_simulate_sends_what_its_ground_truth_says(
    broker: LocalBroker, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(broker.bootstrap_servers)
    asyncio.run(ensure_topics(settings))
    truth_path = tmp_path / "truth.json"
    args = [
        "simulate",
        "--customers",
        "30",
        "--duration",
        "2h",
        "--seed",
        "4",
        "--start",
        "2026-11-02T08:00:00Z",
        "--duplicates",
        "0.1",
        "--malformed",
        "0.02",
        "--truth",
        str(truth_path),
    ]
    result = cli(args, settings)
    assert result.returncode == 0, result.stderr.decode()
    truth = json.loads(truth_path.read_text())
    sent = {family: consume(settings, family) for family in ("clickstream", "orders", "feedback")}
    assert sum(len(v) for v in sent.values()) == truth["messages"]
    ids: Counter[str] = Counter()
    for messages in sent.values():
        for key, value in messages:
            if key != b"malformed":
                ids[json.loads(value)["event_id"]] += 1
    malformed = sum(1 for v in sent.values() for key, _ in v if key == b"malformed")
    assert malformed == sum(truth["dead_letters"].values()) > 0
    assert len(ids) == truth["events"]
    assert sum(ids.values()) - len(ids) == truth["duplicates"]
    # Same seed, same start: the same bytes a second time (written, not sent).
    jsonl = tmp_path / "again.jsonl"
    again = cli([*args, "--jsonl", str(jsonl), "--truth", str(tmp_path / "t2.json")], settings)
    assert again.returncode == 0
    assert json.loads((tmp_path / "t2.json").read_text()) == truth
    assert len(jsonl.read_bytes().splitlines()) == truth["events"]
