"""Consumes loyalty.ledger.v1 and loyalty.tiers.v1: each batch's snapshots, notices and
consumer positions are written in one transaction of the notifier's database, and the
consumer seeks to those positions at start (Kafka's committed offsets are not used). A
redelivered message records nothing new: entries are kept by (member, seq) and notices
by key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from schemas import TOPIC_LEDGER, TOPIC_TIERS
from schemas.outbound import LedgerEntry
from schemas.tiers import TierChanged
from services.ledger.adapters.kafka_clients import (
    CLOSE_TIMEOUT_S,
    start_when_reachable,
    stop_within,
)
from services.ledger.domain.program import Program
from services.notifier import metrics
from services.notifier.database import Run
from services.notifier.notices import Notice, entry_notices, tier_notices
from services.notifier.sent_log import SentLog
from services.notifier.snapshots import Snapshots

log = logging.getLogger(__name__)

TOPICS = (TOPIC_LEDGER, TOPIC_TIERS)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes


class NoticeRecorder:
    """Turns consumed messages into snapshots and notices (no Kafka here: the demo and
    the tests feed it directly)."""

    def __init__(
        self,
        sent_log: SentLog,
        snapshots: Snapshots,
        program: Program,
        channels: Sequence[str],
        clock: Callable[[], datetime],
    ) -> None:
        self.sent_log = sent_log
        self.snapshots = snapshots
        self.program = program
        self.channels = tuple(channels)
        self.clock = clock

    def _notices(self, run: Run, record: Record) -> list[Notice]:
        try:
            if record.topic == TOPIC_TIERS:
                change = TierChanged.model_validate_json(record.value)
                self.snapshots.apply_tier(run, change)
                return tier_notices(change, self.program)
            entry = LedgerEntry.model_validate_json(record.value)
        except ValidationError as exc:
            metrics.SKIPPED_MESSAGES.labels(record.topic).inc()
            log.warning(
                "skipping %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc
            )
            return []
        if not self.snapshots.apply_entry(run, entry):
            return []  # seen before
        return entry_notices(entry, self.program)

    def apply(self, records: Iterable[Record]) -> int:
        """One transaction: snapshots, new notices, positions. Returns new notices."""
        now = self.clock()
        new = 0
        with self.sent_log.db.transaction() as run:
            ends: dict[tuple[str, int], int] = {}
            for record in records:
                found = self._notices(run, record)
                new += self.sent_log.record(run, found, self.channels, now, self.program)
                key = (record.topic, record.partition)
                ends[key] = max(ends.get(key, 0), record.offset + 1)
            for (topic, partition), next_offset in ends.items():
                self.snapshots.set_position(run, topic, partition, next_offset)
        return new


class KafkaNotices:
    """Reads both topics from the positions stored in the notifier's database."""

    def __init__(self, recorder: NoticeRecorder, bootstrap: str) -> None:
        self.recorder = recorder
        self.bootstrap = bootstrap

    async def _assign(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> bool:
        """Without a group, a subscribed consumer gets every partition; then seek each to
        the stored position (or the beginning: a fresh notifier reads the whole topic)."""
        consumer.subscribe(list(TOPICS))
        while not stop.is_set():
            partitions = sorted(consumer.assignment())
            if {tp.topic for tp in partitions} == set(TOPICS):
                stored = self.recorder.snapshots.positions()
                for tp in partitions:
                    if (tp.topic, tp.partition) in stored:
                        consumer.seek(tp, stored[(tp.topic, tp.partition)])
                    else:
                        await consumer.seek_to_beginning(tp)
                return True
            log.info("waiting for the partitions of %s", ", ".join(TOPICS))
            await asyncio.sleep(0.5)
        return False

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        consumer = await start_when_reachable(
            lambda: AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            ),
            stop,
        )
        if consumer is None:
            return
        try:
            if not await self._assign(consumer, stop):
                return
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                records = [
                    Record(tp.topic, tp.partition, m.offset, m.value)
                    for tp, messages in batch.items()
                    for m in messages
                ]
                if records and self.recorder.apply(records):
                    wake.set()
        finally:
            await stop_within(consumer, CLOSE_TIMEOUT_S)
