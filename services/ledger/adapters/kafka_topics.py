"""The Kafka topics of the contract, declared once: partitions, compaction and retention."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas import (
    TOPIC_ACTIVITIES,
    TOPIC_BALANCES,
    TOPIC_DEADLETTER,
    TOPIC_LEDGER,
    TOPIC_PURCHASES,
    TOPIC_REDEMPTIONS,
    TOPIC_REFERRALS,
    TOPIC_TIER_STATUS,
    TOPIC_TIERS,
)

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def declared_topics(partitions: int = 3) -> list[TopicSpec]:
    """Every topic the system reads or writes. Inbound topics keep 14 days for replays;
    the balances and tier-status topics are compacted (latest value per member); entries
    and tier changes keep 30 days (the ledger itself is the source of truth and can
    republish)."""
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    inbound = {"retention.ms": str(14 * DAY_MS)}
    month = {"retention.ms": str(30 * DAY_MS)}
    return [
        TopicSpec(TOPIC_PURCHASES, partitions, inbound),
        TopicSpec(TOPIC_REFERRALS, partitions, inbound),
        TopicSpec(TOPIC_REDEMPTIONS, partitions, inbound),
        TopicSpec(TOPIC_ACTIVITIES, partitions, inbound),
        TopicSpec(TOPIC_LEDGER, partitions, month),
        TopicSpec(TOPIC_BALANCES, partitions, compacted),
        TopicSpec(TOPIC_TIERS, partitions, month),
        TopicSpec(TOPIC_TIER_STATUS, partitions, compacted),
        TopicSpec(TOPIC_DEADLETTER, 1, month),
    ]


async def create_topics(bootstrap: str, specs: list[TopicSpec]) -> tuple[list[str], list[str]]:
    """Create the topics that do not exist yet; returns (created, already there)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=s.name,
                        num_partitions=s.partitions,
                        replication_factor=1,
                        topic_configs=s.config,
                    )
                    for s in missing
                ]
            )
        return [s.name for s in missing], sorted(s.name for s in specs if s.name in existing)
    finally:
        await admin.close()


async def describe_topics(bootstrap: str) -> dict[str, int]:
    """Topic name -> partition count, for the topics that exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        names = sorted(await admin.list_topics())
        found: dict[str, int] = {}
        for meta in await admin.describe_topics(names):
            found[meta["topic"]] = len(meta["partitions"])
        return dict(sorted(found.items()))
    finally:
        await admin.close()
