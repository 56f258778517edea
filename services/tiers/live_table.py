"""Reads the tiers service's live table from its changelog topic (latest value per member)."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.tiers.app import APP_ID, TABLE
from services.tiers.codec import decode_state
from services.tiers.policy import TierState

CHANGELOG_TOPIC = f"{APP_ID}-{TABLE}-changelog"


async def read_live_table(bootstrap: str, topic: str = CHANGELOG_TOPIC) -> dict[str, TierState]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster metadata
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return {}
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
