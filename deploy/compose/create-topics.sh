#!/usr/bin/env bash
# Creates every Touchstream topic explicitly (broker auto-create is off), with the
# same partition count for all of them, replication, min.insync.replicas and
# retention. Idempotent (--if-not-exists). Runs in the apache/kafka image; reads
# the same TOUCHSTREAM_* variables as the workers (touchstream.env), so names,
# prefix and partitions cannot drift from what the workers expect.
#
# Partitions: one number for every topic. It bounds the parallelism (a partition
# is read by one worker of the group), the raw topics must agree so that
# partition i of each lands on the same worker, and each stage's checkpoint topic
# has the partitions of the topic it reads (partition i's state in partition i).
# Never change it on a running deployment: keys would move to other partitions,
# away from their state. See deploy/kubernetes/README.md for sizing.
set -euo pipefail

KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
BOOTSTRAP="${TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS:?TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS is not set}"
PREFIX="${TOUCHSTREAM_KAFKA__TOPIC_PREFIX:-}"
PARTITIONS="${TOUCHSTREAM_KAFKA__PARTITIONS:-12}"
REPLICATION="${TOUCHSTREAM_KAFKA__REPLICATION_FACTOR:-3}"
# A write (acks=all) needs 2 replicas in sync: one broker may be down, and no
# acknowledged write lives on a single disk. A 1- or 2-replica dev cluster gets 1.
if [ "$REPLICATION" -ge 3 ]; then MIN_INSYNC=2; else MIN_INSYNC=1; fi

HOUR=3600000
DAY=$((24 * HOUR))
# Raw and outgoing topics hold customer events (pseudonymised, still personal
# data): 7 days is the replay window for a bad deploy, and stays well inside a
# 30-day erasure deadline (README, "Erasure").
PUBLIC_RETENTION=$((7 * DAY))
# Internal hand-offs between agents and to the sink: they only need to outlast
# consumer lag (a weekend outage); the state they build lives in the checkpoints.
INTERNAL_RETENTION=$((3 * DAY))

create() { # name cleanup.policy retention.ms
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$1" --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
    --config min.insync.replicas="$MIN_INSYNC" \
    --config cleanup.policy="$2" \
    --config retention.ms="$3"
}

# The contract's topics (PRODUCT.md): raw in, and out.
create "${PREFIX}${TOUCHSTREAM_TOPICS__CLICKSTREAM:-storefront.clickstream.v1}" delete "$PUBLIC_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__ORDERS:-storefront.orders.v1}" delete "$PUBLIC_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__FEEDBACK:-cx.feedback.v1}" delete "$PUBLIC_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__DEAD_LETTERS:-touchstream.dlq.v1}" delete "$PUBLIC_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__KPIS:-touchstream.kpis.v1}" delete "$PUBLIC_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__ALERTS:-cx.alerts.v1}" delete "$PUBLIC_RETENTION"

# Internal topics (README, "Topics").
create "${PREFIX}${TOUCHSTREAM_TOPICS__EVENTS:-touchstream.events.v1}" delete "$INTERNAL_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__KPI_CONTRIBUTIONS:-touchstream.kpi-contributions.v1}" delete "$INTERNAL_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__ALERT_EVENTS:-touchstream.alert-events.v1}" delete "$INTERNAL_RETENTION"
create "${PREFIX}${TOUCHSTREAM_TOPICS__OUTCOME_EVENTS:-touchstream.outcome-events.v1}" delete "$INTERNAL_RETENTION"
# Checkpoints of the worker's stages (latest value per key = the state): compacted
# and kept forever. Ingest: dedup ids, watermarks, offsets per raw partition.
create "${PREFIX}${TOUCHSTREAM_TOPICS__INGEST_STATE:-touchstream.ingest-state.v1}" compact -1
# KPI stage checkpoints (buckets, next offset per contributions partition): state too.
create "${PREFIX}${TOUCHSTREAM_TOPICS__KPI_STATE:-touchstream.kpi-state.v1}" compact -1
# Outcome stage checkpoints (checkouts, carts, customers, next offset per partition).
create "${PREFIX}${TOUCHSTREAM_TOPICS__OUTCOME_STATE:-touchstream.outcome-state.v1}" compact -1
# Alerts stage checkpoints (open and closed alerts' slots, next offset per partition).
create "${PREFIX}${TOUCHSTREAM_TOPICS__ALERT_STATE:-touchstream.alert-state.v1}" compact -1

"$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --describe \
  | grep -E '^Topic:' || true
