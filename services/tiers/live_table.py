"""Reads the tiers service's live table from its changelog topic (latest value per member)."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.ledger.adapters.kafka_topics import describe_topics
from services.ledger.domain.tier_policy import TierState
from services.tiers.app import APP_ID, TABLE
from services.tiers.codec import decode_state


async def read_live_table(bootstrap: str, app_id: str = APP_ID) -> dict[str, TierState]:
    topic = f"{app_id}-{TABLE}-changelog"
    count = (await describe_topics(bootstrap)).get(topic, 0)
    if not count:
        return {}
    partitions = [TopicPartition(topic, p) for p in range(count)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: dict[str, TierState] = {}
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    member = record.key.decode()
                    if record.value is None:
                        found.pop(member, None)
                    else:
                        found[member] = decode_state(json.loads(record.value))
        return found
    finally:
        await consumer.stop()
