"""Topics on a real broker: declared once, created by `loyalty topics create`."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from schemas import TOPIC_BALANCES, TOPIC_PURCHASES, TOPIC_TIER_STATUS
from services.ledger.adapters.kafka_topics import declared_topics
from services.ledger.cli import app

pytestmark = [pytest.mark.kafka, pytest.mark.integration]
runner = CliRunner()


def test_topics_create_is_idempotent_and_matches_the_declaration(kafka_bootstrap: str) -> None:
    first = runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert again.exit_code == 0, again.output
    assert "0 created, 9 already there" in again.stdout
    listed = runner.invoke(app, ["topics", "list", "--bootstrap", kafka_bootstrap])
    for spec in declared_topics():
        assert f"{spec.name} {spec.partitions}" in listed.stdout

    async def cleanup_policy(topic: str) -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
        finally:
            await admin.close()
        for _, _, _, _, entries in described[0].resources:
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    return str(entry[1])
        return ""

    assert asyncio.run(cleanup_policy(TOPIC_BALANCES)) == "compact"
    assert asyncio.run(cleanup_policy(TOPIC_TIER_STATUS)) == "compact"


def test_a_message_round_trips_keyed_by_member(kafka_bootstrap: str) -> None:
    runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])

    async def round_trip() -> tuple[bytes | None, bytes | None]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            sent = await producer.send_and_wait(TOPIC_PURCHASES, b'{"x": 1}', key=b"m-42")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            from aiokafka import TopicPartition

            tp = TopicPartition(TOPIC_PURCHASES, sent.partition)
            consumer.assign([tp])
            consumer.seek(tp, sent.offset)
            record = await asyncio.wait_for(consumer.getone(), timeout=20)
            return record.key, record.value
        finally:
            await consumer.stop()

    assert asyncio.run(round_trip()) == (b"m-42", b'{"x": 1}')
