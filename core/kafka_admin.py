"""Topic administration: create the contract's topics explicitly (never auto-create:
a Faust table whose source and changelog differ in partitions crashes its agent)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from touchstream.settings import Settings, Topics

TOPIC_ROLES = tuple(Topics.model_fields)
# Checkpoints keep only each key's latest value (tombstones delete).
COMPACTED = {"cleanup.policy": "compact"}


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic(role) for role in TOPIC_ROLES]


async def existing_topics(settings: Settings) -> dict[str, int]:
    """Topic → partition count, for the topics the broker has."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id="touchstream-admin",
        request_timeout_ms=10_000,
        **settings.kafka.security_kwargs(),
    )
    await admin.start()
    try:
        names = await admin.list_topics()
        if not names:
            return {}
        described = await admin.describe_topics(list(names))
        return {d["topic"]: len(d.get("partitions") or []) for d in described}
    finally:
        await admin.close()


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics; returns the names created."""
    have = await existing_topics(settings)
    missing = [name for name in topic_names(settings) if name not in have]
    if not missing:
        return []
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id="touchstream-admin",
        request_timeout_ms=10_000,
        **settings.kafka.security_kwargs(),
    )
    compacted = {
        settings.topic(role)
        for role in ("ingest_state", "kpi_state", "outcome_state", "alert_state")
    }
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=settings.kafka.partitions,
                    replication_factor=settings.kafka.replication_factor,
                    topic_configs=COMPACTED if name in compacted else {},
                )
                for name in missing
            ]
        )
    finally:
        await admin.close()
    return missing
