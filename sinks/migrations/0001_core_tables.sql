-- Core tables: raw events, KPI windows, dead letters.
-- {db} is replaced by the database from settings, validated and back-quoted (migrate.py).

CREATE TABLE IF NOT EXISTS {db}.events
(
    event_id        UUID,
    event_type      LowCardinality(String),
    schema_version  UInt16,
    occurred_at     DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC'),
    identity        String COMMENT 'Kafka key: customer_id, else anonymous_id',
    customer_id     String,
    anonymous_id    String,
    session_id      String,
    channel         LowCardinality(String),
    touchpoint      LowCardinality(String),
    properties      String COMMENT 'JSON object; query with JSONExtract*',
    order_id        String MATERIALIZED JSONExtractString(properties, 'order_id'),
    checkout_id     String MATERIALIZED JSONExtractString(properties, 'checkout_id'),
    score           Nullable(Int16) MATERIALIZED JSONExtract(properties, 'score', 'Nullable(Int16)'),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (identity, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.kpi_touchpoint
(
    kpi           LowCardinality(String),
    channel       LowCardinality(String),
    touchpoint    LowCardinality(String),
    window_start  DateTime('UTC'),
    window_end    DateTime('UTC'),
    window_size   UInt32 COMMENT 'seconds',
    numerator     Float64,
    denominator   Float64,
    value         Nullable(Float64),
    counts        Map(String, Float64),
    version       UInt64,
    updated_at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, channel, touchpoint, window_size, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    reason            LowCardinality(String),
    event_type        String,
    event_id          String,
    errors            String COMMENT 'JSON list of {field, reason, kind}',
    source_topic      LowCardinality(String),
    source_partition  UInt32,
    source_offset     UInt64,
    payload           String,
    payload_encoding  LowCardinality(String),
    original_size     UInt32,
    received_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, source_partition, source_offset, cityHash64(payload))
SETTINGS non_replicated_deduplication_window = 1000;
