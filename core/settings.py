"""The one settings root: every knob of every process, from TOUCHSTREAM_* variables.

Defaults are the embedded stack (a local broker started by Touchstream and chDB in
the data directory). Pointing ``TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS`` at a cluster
and ``TOUCHSTREAM_CLICKHOUSE__DSN`` at a server (``http(s)://...``) switches to them.
"""

from __future__ import annotations

import os
import re
import secrets
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TOUCHSTREAM_"
NESTED_DELIMITER = "__"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,100}$")


def _section() -> ConfigDict:
    return ConfigDict(frozen=True, extra="forbid")


# The local broker (Tansu) holds a consumer group's JoinGroup round for half the
# members' session timeout (measured 2026-11-26: 10 s -> 5.0 s, 6 s -> 3.0 s, 30 s
# -> 15 s), which every start and rebalance of a worker or sink waits. The local
# stack uses 6 s, the least an Apache Kafka broker accepts by default
# (group.min.session.timeout.ms), unless a session timeout is configured.
LOCAL_SESSION_TIMEOUT_MS = 6_000


class KafkaSettings(BaseModel):
    """Kafka connection, security and producer behaviour."""

    model_config = _section()

    bootstrap_servers: str | None = Field(
        default=None,
        description="host:port[,host:port]; empty starts the local broker (Tansu)",
    )
    topic_prefix: str = Field(default="", description="prepended to every topic name")
    partitions: int = Field(default=4, ge=1, le=1024, description="partitions of created topics")
    replication_factor: int = Field(default=1, ge=1, le=16, description="of created topics")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    sasl_username: str | None = Field(default=None, description="SASL user")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (secret)")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle for TLS")
    ssl_certfile: Path | None = Field(default=None, description="client certificate (mTLS)")
    ssl_keyfile: Path | None = Field(default=None, description="client key (mTLS)")
    ssl_check_hostname: bool = Field(default=True, description="verify the broker's hostname")
    acks: Literal["all", "1", "0"] = Field(default="all", description="producer acks")
    enable_idempotence: bool = Field(
        default=True, description="idempotent producer where the client supports it"
    )
    compression_type: Literal["none", "gzip", "lz4"] = Field(
        default="lz4", description="producer compression: none, gzip or lz4"
    )
    linger_ms: int = Field(default=5, ge=0, le=60_000, description="producer batching delay")
    batch_bytes: int = Field(default=256 * 1024, ge=1024, description="producer batch size")
    max_request_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest produce request (bounds event size)"
    )
    max_block_ms: int = Field(
        default=10_000, ge=0, description="how long emit may block on a full buffer / no broker"
    )
    delivery_timeout_ms: int = Field(
        default=30_000, ge=1000, description="an unacknowledged event fails after this"
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="consumer group session timeout"
    )
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=0,
        le=60_000,
        description="longest a consumer's fetch waits at the broker for data (latency when quiet)",
    )
    local_port: int = Field(default=0, ge=0, le=65535, description="local broker port, 0 = free")

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX.match(value):
            raise ValueError("topic_prefix may hold only letters, digits, '.', '_' and '-'")
        return value

    @model_validator(mode="after")
    def _delivery_outlasts_linger(self) -> KafkaSettings:
        # kafka-python: delivery_timeout_ms >= linger_ms + request_timeout_ms, and the
        # emitter's request timeout is at least 500 ms.
        if self.delivery_timeout_ms < self.linger_ms + 500:
            raise ValueError(
                f"delivery_timeout_ms ({self.delivery_timeout_ms}) must be at least "
                f"linger_ms ({self.linger_ms}) + 500"
            )
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(
                    f"security_protocol={self.security_protocol} needs sasl_mechanism, "
                    "sasl_username and sasl_password"
                )
        if self.enable_idempotence and self.acks != "all":
            raise ValueError("enable_idempotence needs acks=all (set enable_idempotence=false)")
        return self

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.security_protocol.endswith("SSL"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        ctx.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile:
            ctx.load_cert_chain(
                str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
            )
        return ctx

    def security_kwargs(self) -> dict[str, Any]:
        """Connection security in the keyword names that aiokafka and kafka-python share."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None  # noqa: S101 - checked by _sasl_complete
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs

    def consumer_kwargs(self) -> dict[str, Any]:
        """What every consumer of the pipeline shares: the connection's security and
        how long a fetch may wait at the broker. aiokafka's default (500 ms) showed
        as a p95 of 0.25 s per hop on the local broker at 10k events/s (50 ms with
        100 ms); a broker that answers at once when data is there (fetch.min.bytes
        1) only sees more fetches while the topic is quiet."""
        return self.security_kwargs() | {"fetch_max_wait_ms": self.fetch_max_wait_ms}


class Topics(BaseModel):
    """Topic names of the contract (PRODUCT.md), before the prefix."""

    model_config = _section()

    clickstream: str = Field(default="storefront.clickstream.v1", description="raw, in")
    orders: str = Field(default="storefront.orders.v1", description="raw, in")
    feedback: str = Field(default="cx.feedback.v1", description="raw, in")
    dead_letters: str = Field(default="touchstream.dlq.v1", description="invalid input, out")
    kpis: str = Field(default="touchstream.kpis.v1", description="KPI window updates, out")
    alerts: str = Field(default="cx.alerts.v1", description="closed-loop alerts, out")
    # Internal topics (not part of the user contract, documented in the README).
    events: str = Field(default="touchstream.events.v1", description="internal: valid events")
    kpi_contributions: str = Field(
        default="touchstream.kpi-contributions.v1", description="internal: KPI inputs by group"
    )
    alert_events: str = Field(
        default="touchstream.alert-events.v1", description="internal: raise/close by alert id"
    )
    outcome_events: str = Field(
        default="touchstream.outcome-events.v1",
        description="internal: checkout/cart steps by entity id",
    )
    ingest_state: str = Field(
        default="touchstream.ingest-state.v1",
        description="internal, compacted: dedup ids, watermarks, offsets per raw partition",
    )
    kpi_state: str = Field(
        default="touchstream.kpi-state.v1",
        description="internal, compacted: KPI buckets and offsets per contributions partition",
    )
    outcome_state: str = Field(
        default="touchstream.outcome-state.v1",
        description="internal, compacted: checkouts, carts, customers per outcome partition",
    )
    alert_state: str = Field(
        default="touchstream.alert-state.v1",
        description="internal, compacted: open and closed alerts' slots per alerts partition",
    )


class ClickHouseSettings(BaseModel):
    """Where journeys land: the embedded engine or a server."""

    model_config = _section()

    dsn: str = Field(
        default="",
        description="chdb:///abs/dir (embedded) or http(s)://host:port; empty = "
        "chdb:///<data_dir>/clickhouse",
    )
    database: str = Field(default="touchstream", description="the one database (identifier)")
    cluster: str = Field(
        default="",
        description="server cluster name: ON CLUSTER DDL, replicated tables behind "
        "Distributed ones; empty = one server",
    )
    username: str = Field(default="default", description="server user (writer)")
    password: SecretStr = Field(default=SecretStr(""), description="server password (secret)")
    ca_cert: Path | None = Field(default=None, description="CA bundle for https")
    verify_tls: bool = Field(default=True, description="verify the server certificate")
    bi_user: str = Field(default="touchstream_bi", description="read-only BI user")
    bi_password: SecretStr = Field(default=SecretStr(""), description="BI password (secret)")
    serve_host: str = Field(
        default="127.0.0.1", description="HTTP interface of the embedded engine (up/serve)"
    )
    serve_port: int = Field(default=8123, ge=0, le=65535, description="0 = a free port")
    serve_threads: int = Field(default=4, ge=1, le=64, description="concurrent HTTP queries")
    serve_timeout_s: float = Field(
        default=60, gt=0, description="max_execution_time of HTTP queries"
    )
    serve_max_result_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="larger results fail (code 396)"
    )
    serve_max_body_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="largest request body (inserts)"
    )

    @field_validator("database", "bi_user")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
        return value

    @field_validator("cluster")
    @classmethod
    def _cluster_identifier(cls, value: str) -> str:
        return cls._identifier(value) if value else value

    @model_validator(mode="after")
    def _cluster_needs_a_server(self) -> ClickHouseSettings:
        if self.cluster and not self.dsn.startswith(("http://", "https://")):
            raise ValueError("cluster needs a ClickHouse server dsn (http(s)://...)")
        return self

    @field_validator("dsn")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value and not value.startswith(("chdb://", "http://", "https://")):
            raise ValueError("dsn must start with chdb://, http:// or https://")
        if value.startswith("chdb://") and not value.startswith("chdb:///"):
            raise ValueError("an embedded dsn needs an absolute path: chdb:///abs/dir")
        return value


class StreamsSettings(BaseModel):
    """The stream worker (Faust application) and KPI semantics."""

    model_config = _section()

    app_id: str = Field(default="touchstream", description="Faust app id = consumer group")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="messages per batch")
    batch_interval_s: float = Field(
        default=0.2, gt=0, le=10, description="a batch closes after this even if not full"
    )
    ingest_first_wait_s: float = Field(
        default=10.0,
        ge=0,
        le=60,
        description="when ingest falls behind, the other stages wait for it, each at "
        "most this long per batch (0: no order)",
    )
    max_event_bytes: int = Field(
        default=64 * 1024, ge=512, description="larger messages are dead-lettered as too_large"
    )
    window_size_s: int = Field(default=3600, ge=60, description="rolling KPI window")
    window_step_s: int = Field(
        default=300, ge=60, le=43_200, description="rolling windows advance by this"
    )
    daily_window: bool = Field(default=True, description="also keep 1-day (UTC) windows")
    kpi_emit_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="changed KPI windows are emitted this often"
    )
    abandonment_timeout_s: float = Field(
        default=1800, gt=0, description="a checkout/cart not completed within this is abandoned"
    )
    churn_horizon_s: float = Field(
        default=90 * 86_400, gt=0, description="no order for this long after the last: churned"
    )
    allowed_lateness_s: float = Field(
        default=600, ge=0, description="abandonment waits this long for out-of-order events"
    )
    idle_source_s: float = Field(
        default=60,
        gt=0,
        description="a raw partition fully read for this long stops holding decisions back",
    )
    max_source_skew_s: float = Field(
        default=300,
        gt=0,
        description="a raw partition this far ahead in event time of the slowest waits",
    )
    output_timeout_s: float = Field(
        default=120,
        ge=1,
        le=3600,
        description="an output not acknowledged in this stops the worker (restart resumes)",
    )
    kpi_retention_s: float = Field(
        default=172_800,
        ge=3600,
        description="KPI windows ended this long before the sources' watermark are final",
    )
    alert_sla_s: float = Field(
        default=86_400, gt=0, description="an alert open longer is surfaced as overdue"
    )
    alert_retention_s: float = Field(
        default=604_800,
        ge=3600,
        description="a closed alert is forgotten this long after; older feedback raises none",
    )
    alert_check_interval_s: float = Field(
        default=10, gt=0, le=3600, description="how often open alerts are checked against the SLA"
    )
    outcome_cache_entries: int = Field(
        default=100_000,
        ge=0,
        description="customers, anonymous ids and open checkouts/carts kept in memory per "
        "outcome partition; the rest wait in a local SQLite file under DATA_DIR/state "
        "(0: all in memory)",
    )
    web_port: int = Field(default=0, ge=0, le=65535, description="Faust web port, 0 = off")
    processes: int = Field(
        default=0,
        ge=0,
        le=256,
        description="processes of `touchstream worker`; 0 = one per CPU, at most the partitions",
    )

    @model_validator(mode="after")
    def _aligned(self) -> StreamsSettings:
        if self.window_size_s % self.window_step_s:
            raise ValueError("window_size_s must be a multiple of window_step_s")
        # A raw event counts if within the lateness of its source's watermark, and a
        # checkout counts at its start, decided up to the timeout later: windows made
        # final must be past both, or on-time contributions would be dropped.
        if self.kpi_retention_s <= self.allowed_lateness_s + self.abandonment_timeout_s:
            raise ValueError(
                "kpi_retention_s must exceed allowed_lateness_s + abandonment_timeout_s"
            )
        # Feedback within the lateness is on time: it must always raise its alert.
        if self.alert_retention_s <= self.allowed_lateness_s:
            raise ValueError("alert_retention_s must exceed allowed_lateness_s")
        return self


class SinkSettings(BaseModel):
    """The ClickHouse sink: batching, retries, backpressure."""

    model_config = _section()

    group_id: str = Field(default="touchstream-sink", description="consumer group")
    batch_rows: int = Field(
        default=50_000, ge=1, le=1_000_000, description="flush when this many rows are buffered"
    )
    flush_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="... or this long after the last flush"
    )
    early_flush_rows: int = Field(
        default=1000,
        ge=1,
        description="... or this many rows buffered and early_flush_s after the last flush",
    )
    early_flush_s: float = Field(
        default=0.25, gt=0, le=60, description="see early_flush_rows (at most flush_interval_s)"
    )
    retry_initial_s: float = Field(default=0.5, gt=0, description="first retry delay")
    retry_max_s: float = Field(default=10.0, gt=0, description="longest retry delay")

    @property
    def max_buffered(self) -> int:
        """The sink's buffer bound: a full batch plus what a poll adds on top of it
        (a bound below SINK__BATCH_ROWS would stop the sink with BackpressureError)."""
        return self.batch_rows * 2 + 20_000

    @model_validator(mode="after")
    def _early_before_interval(self) -> SinkSettings:
        if self.early_flush_s > self.flush_interval_s:
            raise ValueError("early_flush_s must not exceed flush_interval_s")
        return self

    def flush_due(self, buffered: int, since_flush_s: float) -> bool:
        """Whether the sink flushes now, with ``buffered`` rows and ``since_flush_s``
        after its last flush: a full batch at once; at least ``early_flush_rows``
        after ``early_flush_s``; anything after ``flush_interval_s``. Under
        traffic an event waits about early_flush_s for its INSERT (the 1 s interval
        alone was most of the freshness p95), in batches of at least
        early_flush_rows rows, and a quiet stream is not written in slivers:
        ClickHouse's guidance, at least ~1,000 rows per INSERT or about one INSERT
        per second per table."""
        if buffered >= self.batch_rows:
            return True
        if buffered >= self.early_flush_rows and since_flush_s >= self.early_flush_s:
            return True
        return buffered > 0 and since_flush_s >= self.flush_interval_s


class MetricsSettings(BaseModel):
    """Prometheus /metrics endpoints of each process."""

    model_config = _section()

    enabled: bool = Field(default=True, description="serve /metrics")
    host: str = Field(default="127.0.0.1", description="bind address of /metrics")
    port: int = Field(default=9464, ge=0, le=65535, description="up / sink; 0 = free port")
    worker_port: int = Field(
        default=9465,
        ge=0,
        le=65535,
        description="stream worker (all of its processes)",
    )
    namespace: str = Field(default="touchstream", description="metric name prefix")


class Settings(BaseSettings):
    """Root settings. Build with :func:`load_settings`; frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(
        default=Path(".touchstream"), description="embedded ClickHouse, logs, local keys"
    )
    pii_key: SecretStr | None = Field(
        default=None, description="HMAC key for pseudonymising email/phone/IP"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR"
    )
    kafka: KafkaSettings = KafkaSettings()
    topics: Topics = Topics()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    streams: StreamsSettings = StreamsSettings()
    sink: SinkSettings = SinkSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse.dsn or f"chdb://{self.data_dir / 'clickhouse'}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb://")

    @property
    def local_broker(self) -> bool:
        return not self.kafka.bootstrap_servers

    @property
    def pii_key_file(self) -> Path:
        """Where the local stack keeps its generated PII key when none is configured."""
        return self.data_dir / "pii.key"

    def pii_key_bytes(self) -> bytes | None:
        """The configured PII key, else the local stack's key file, else None."""
        if self.pii_key is not None and self.pii_key.get_secret_value():
            return self.pii_key.get_secret_value().encode()
        if self.pii_key_file.exists():
            return self.pii_key_file.read_bytes().strip() or None
        return None

    def ensure_local_pii_key(self) -> None:
        """The embedded stack's key: generated once, kept in the data dir (mode 0600)."""
        if self.pii_key_bytes() is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.pii_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another process made it first
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))

    def topic(self, name: str) -> str:
        """Full name (with prefix) of a topic by its field in :class:`Topics`."""
        return self.kafka.topic(getattr(self.topics, name))

    def raw_topics(self) -> dict[str, str]:
        """The three raw input topics (full names) by their field in :class:`Topics`,
        which is also the event family (schemas.events.family) they carry."""
        return {name: self.topic(name) for name in ("clickstream", "orders", "feedback")}

    def with_bootstrap(self, bootstrap_servers: str) -> Settings:
        """A copy pointed at the local broker once it is up, with its consumer session
        timeout (LOCAL_SESSION_TIMEOUT_MS) unless one is configured."""
        update: dict[str, Any] = {"bootstrap_servers": bootstrap_servers}
        if "session_timeout_ms" not in self.kafka.model_fields_set:
            update["session_timeout_ms"] = LOCAL_SESSION_TIMEOUT_MS
        kafka = self.kafka.model_copy(update=update)
        return self.model_copy(update={"kafka": kafka})

    def safe_dump(self) -> dict[str, Any]:
        """Everything, as JSON-ready values, with secrets masked."""
        return self.model_dump(mode="json")

    def as_env(self) -> dict[str, str]:
        """The settings as TOUCHSTREAM_* variables, secrets included, for child processes."""
        out: dict[str, str] = {}
        for key, value in _flatten(self.model_dump(mode="python")):
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[ENV_PREFIX + key.upper()] = str(value)
        return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}{NESTED_DELIMITER}")
        else:
            yield f"{prefix}{key}", value


class SettingsError(ValueError):
    """The environment does not describe valid settings; the message says what to fix."""


def env_variables() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for --help and the README."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name.upper()}{NESTED_DELIMITER}")
                continue
            default = field.default
            shown = "" if default is None else str(default)
            if isinstance(default, SecretStr):
                shown = "(secret)" if default.get_secret_value() else ""
            rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))

    walk(Settings, ENV_PREFIX)
    return rows


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``environ`` (default: the process environment).

    Unknown TOUCHSTREAM_* variables are an error, not silently ignored: a typo in a
    variable name would otherwise leave a production setting at its local default.
    ``overrides`` are nested field values (``kafka={"bootstrap_servers": ...}``) that
    win over the environment.
    """
    env = os.environ if environ is None else environ
    known = {name for name, _, _ in env_variables()}
    nested: dict[str, Any] = {}
    unknown = []
    for key, value in env.items():
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        if upper not in known:
            unknown.append(key)
            continue
        *sections, leaf = upper[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER)
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    if unknown:
        raise SettingsError(
            "unknown setting(s): " + ", ".join(sorted(unknown)) + " (see `touchstream config`)"
        )
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(nested.get(key), dict):
            nested[key] = {**nested[key], **value}
        else:
            nested[key] = value
    try:
        # model_validate reads no environment itself: `env` above is the only source.
        return Settings.model_validate(nested)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise SettingsError(_readable(exc)) from exc


def _readable(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for error in errors():
        loc = [str(part) for part in error.get("loc", ())]
        variable = ENV_PREFIX + NESTED_DELIMITER.join(loc).upper() if loc else "settings"
        lines.append(f"{variable}: {error.get('msg', 'invalid')}")
    return "invalid settings:\n  " + "\n  ".join(lines)
