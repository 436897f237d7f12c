from __future__ import annotations

import json
from pathlib import Path

import pytest

from touchstream.settings import (
    LOCAL_SESSION_TIMEOUT_MS,
    SettingsError,
    env_variables,
    load_settings,
)


def test_defaults_are_the_embedded_stack(tmp_path: Path) -> None:
    settings = load_settings({"TOUCHSTREAM_DATA_DIR": str(tmp_path)})
    assert settings.local_broker
    assert settings.embedded_clickhouse
    assert settings.clickhouse_dsn == f"chdb://{tmp_path / 'clickhouse'}"
    assert settings.topic("feedback") == "cx.feedback.v1"
    assert settings.topic("dead_letters") == "touchstream.dlq.v1"


def test_nested_environment_switches_to_real_services() -> None:
    settings = load_settings(
        {
            "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "k1:9093,k2:9093",
            "TOUCHSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "TOUCHSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "TOUCHSTREAM_KAFKA__SASL_USERNAME": "svc",
            "TOUCHSTREAM_KAFKA__SASL_PASSWORD": "kafka-secret",
            "TOUCHSTREAM_KAFKA__TOPIC_PREFIX": "prod.",
            "TOUCHSTREAM_KAFKA__PARTITIONS": "12",
            "TOUCHSTREAM_CLICKHOUSE__DSN": "https://ch.example:8443",
            "TOUCHSTREAM_CLICKHOUSE__PASSWORD": "ch-secret",
            "TOUCHSTREAM_STREAMS__DAILY_WINDOW": "false",
        }
    )
    assert not settings.local_broker and not settings.embedded_clickhouse
    assert settings.kafka.partitions == 12
    assert settings.streams.daily_window is False
    assert settings.topic("kpis") == "prod.touchstream.kpis.v1"
    kwargs = settings.kafka.security_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_password"] == "kafka-secret"
    assert kwargs["ssl_context"] is not None
    # Every consumer gets the same security, and how long its fetches may wait.
    consumer = settings.kafka.consumer_kwargs()
    assert consumer["fetch_max_wait_ms"] == 100
    assert consumer["sasl_plain_password"] == "kafka-secret"
    assert consumer["ssl_context"] is not None


def test_secrets_are_hidden_in_dumps_and_repr() -> None:
    settings = load_settings(
        {
            "TOUCHSTREAM_CLICKHOUSE__PASSWORD": "ch-secret",
            "TOUCHSTREAM_PII_KEY": "hmac-key",
        }
    )
    dumped = json.dumps(settings.safe_dump(), default=str)
    assert "ch-secret" not in dumped and "hmac-key" not in dumped
    assert "ch-secret" not in repr(settings) and "hmac-key" not in str(settings)
    # ... but child processes get them back.
    env = settings.as_env()
    assert env["TOUCHSTREAM_CLICKHOUSE__PASSWORD"] == "ch-secret"
    assert env["TOUCHSTREAM_PII_KEY"] == "hmac-key"


def test_as_env_round_trips() -> None:
    settings = load_settings(
        {"TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "h:1", "TOUCHSTREAM_STREAMS__BATCH_SIZE": "77"}
    )
    again = load_settings(settings.as_env())
    assert again == settings


def test_the_local_broker_gets_a_shorter_session_timeout_unless_one_is_set() -> None:
    # Tansu holds a JoinGroup round for half the session timeout (LOCAL_SESSION_TIMEOUT_MS).
    local = load_settings({}).with_bootstrap("127.0.0.1:1234")
    assert local.kafka.bootstrap_servers == "127.0.0.1:1234"
    assert local.kafka.session_timeout_ms == LOCAL_SESSION_TIMEOUT_MS < 10_000
    assert load_settings(local.as_env()).kafka.session_timeout_ms == LOCAL_SESSION_TIMEOUT_MS
    chosen = load_settings({"TOUCHSTREAM_KAFKA__SESSION_TIMEOUT_MS": "20000"})
    assert chosen.with_bootstrap("127.0.0.1:1234").kafka.session_timeout_ms == 20_000
    assert load_settings({}).kafka.session_timeout_ms == 10_000  # a real cluster's default


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(ValueError, match="frozen"):
        settings.log_level = "DEBUG"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOUCHSTREAM_KAFKA__PARTITIONS": "0"}, "TOUCHSTREAM_KAFKA__PARTITIONS"),
        ({"TOUCHSTREAM_KAFKA__PARTITIONS": "many"}, "valid integer"),
        ({"TOUCHSTREAM_CLICKHOUSE__DSN": "mysql://x"}, "chdb://, http:// or https://"),
        ({"TOUCHSTREAM_CLICKHOUSE__DSN": "chdb://relative"}, "absolute path"),
        ({"TOUCHSTREAM_CLICKHOUSE__DATABASE": "x; DROP TABLE y"}, "plain identifier"),
        ({"TOUCHSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"TOUCHSTREAM_KAFKA__ACKS": "1"}, "enable_idempotence needs acks=all"),
        ({"TOUCHSTREAM_STREAMS__WINDOW_SIZE_S": "1000"}, "multiple of window_step_s"),
        (
            {
                "TOUCHSTREAM_STREAMS__KPI_RETENTION_S": "3600",
                "TOUCHSTREAM_STREAMS__ALLOWED_LATENESS_S": "3000",
            },
            "kpi_retention_s must exceed allowed_lateness_s + abandonment_timeout_s",
        ),
        (
            {
                "TOUCHSTREAM_STREAMS__ALERT_RETENTION_S": "3600",
                "TOUCHSTREAM_STREAMS__ALLOWED_LATENESS_S": "3600",
            },
            "alert_retention_s must exceed allowed_lateness_s",
        ),
        (
            {"TOUCHSTREAM_SINK__EARLY_FLUSH_S": "2", "TOUCHSTREAM_SINK__FLUSH_INTERVAL_S": "1"},
            "early_flush_s must not exceed flush_interval_s",
        ),
        ({"TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVER": "typo:9092"}, "unknown setting"),
        ({"TOUCHSTREAM_LOGLEVEL": "DEBUG"}, "TOUCHSTREAM_LOGLEVEL"),
    ],
)
def test_invalid_values_are_rejected_readably(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert message in str(caught.value)


def test_every_setting_has_a_variable() -> None:
    names = {name for name, _, _ in env_variables()}
    assert "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS" in names
    assert "TOUCHSTREAM_CLICKHOUSE__DSN" in names
    assert "TOUCHSTREAM_METRICS__PORT" in names
    assert all(name.isupper() and name.startswith("TOUCHSTREAM_") for name in names)


def test_a_linger_longer_than_the_delivery_timeout_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="delivery_timeout_ms"):
        load_settings({"TOUCHSTREAM_KAFKA__LINGER_MS": "40000"})


@pytest.mark.parametrize(
    ("buffered", "since_s", "due"),
    [
        (0, 5.0, False),  # nothing to write
        (1, 0.99, False),  # a sliver waits for the interval...
        (1, 1.0, True),  # ...and goes then
        (999, 0.5, False),  # under early_flush_rows: the interval
        (1000, 0.24, False),  # enough rows, not early_flush_s yet
        (1000, 0.25, True),  # both
        (50_000, 0.0, True),  # a full batch goes at once
    ],
)
def test_the_sink_flushes_a_full_batch_enough_rows_early_or_anything_after_the_interval(
    buffered: int, since_s: float, due: bool
) -> None:
    sink = load_settings({}).sink  # batch 50,000; early 1,000 rows after 0.25 s; 1 s
    assert sink.flush_due(buffered, since_s) is due


def test_raw_topics_are_the_three_input_families_with_the_prefix() -> None:
    settings = load_settings(
        {"TOUCHSTREAM_KAFKA__TOPIC_PREFIX": "acme.", "TOUCHSTREAM_TOPICS__ORDERS": "shop.orders"}
    )
    assert settings.raw_topics() == {
        "clickstream": "acme.storefront.clickstream.v1",
        "orders": "acme.shop.orders",
        "feedback": "acme.cx.feedback.v1",
    }
