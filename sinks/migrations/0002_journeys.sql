-- Journey relations for BI: feedback, alerts, identity links, stitched journeys, sessions.
-- Views read `events FINAL`, so duplicates never count, before or after merges.

CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_id         String,
    status           LowCardinality(String) COMMENT 'open, overdue or closed',
    kind             LowCardinality(String) COMMENT 'nps_detractor, csat_low, ces_low, negative_comment',
    event_id         String,
    customer_id      String,
    anonymous_id     String,
    channel          LowCardinality(String),
    touchpoint       LowCardinality(String),
    order_id         String,
    score            Nullable(Int16),
    text             String,
    occurred_at      DateTime64(3, 'UTC'),
    raised_at        DateTime64(3, 'UTC'),
    closed_at        Nullable(DateTime64(3, 'UTC')),
    resolution       String,
    time_to_close_s  Nullable(Float64),
    version          UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (alert_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE VIEW IF NOT EXISTS {db}.feedback AS
SELECT
    event_id,
    event_type,
    multiIf(event_type = 'nps_response', 'nps', event_type = 'csat_response', 'csat',
            event_type = 'ces_response', 'ces', event_type = 'isn_response', 'isn', 'comment') AS kind,
    occurred_at,
    identity,
    customer_id,
    anonymous_id,
    channel,
    touchpoint,
    JSONExtract(properties, 'score', 'Nullable(Int16)') AS score,
    JSONExtractString(properties, 'attribute') AS attribute,
    JSONExtractString(properties, 'order_id') AS order_id,
    if(event_type = 'comment', JSONExtractString(properties, 'text'),
       JSONExtractString(properties, 'comment')) AS text,
    JSONExtractString(properties, 'sentiment') AS sentiment
FROM {db}.events FINAL
WHERE event_type IN ('nps_response', 'csat_response', 'ces_response', 'isn_response', 'comment');

CREATE VIEW IF NOT EXISTS {db}.identities AS
SELECT anonymous_id, argMax(cid, at) AS customer_id, min(at) AS linked_at
FROM
(
    SELECT anonymous_id, customer_id AS cid, occurred_at AS at
    FROM {db}.events FINAL
    WHERE anonymous_id != '' AND customer_id != ''
)
GROUP BY anonymous_id;

CREATE VIEW IF NOT EXISTS {db}.journeys AS
SELECT
    if(e.customer_id != '', e.customer_id, if(i.customer_id != '', i.customer_id, e.anonymous_id)) AS person,
    e.*
FROM {db}.events AS e FINAL
LEFT JOIN {db}.identities AS i ON e.anonymous_id = i.anonymous_id
SETTINGS join_use_nulls = 0;

CREATE VIEW IF NOT EXISTS {db}.sessions AS
SELECT
    argMax(who, at) AS person,
    session_id,
    min(at) AS started_at,
    max(at) AS ended_at,
    count() AS events,
    argMin(ch, at) AS channel,
    arrayMap(x -> x.2, arraySort(groupArray((at, tp)))) AS path,
    countIf(et = 'order_placed') > 0 AS converted
FROM
(
    SELECT person AS who, session_id, occurred_at AS at, channel AS ch, touchpoint AS tp,
           event_type AS et
    FROM {db}.journeys
    WHERE session_id != ''
)
GROUP BY session_id;
