"""Kafka ingest: inbound topics -> the ledger, exactly-once in effect.

Each batch of records from one partition is applied in one database transaction together
with its position (`kafka:<topic>:<partition>` at the last offset). On start and on every
assignment the consumer seeks to the stored position; the offsets it commits to Kafka are
only a hint for tools. Bad input becomes a rejection in the same transaction (published to
the dead-letter topic by the relay); a database or broker failure is not bad input: the
batch is retried from the stored position, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from eventsourcing.persistence import IntegrityError, Tracking

from schemas import LEDGER_INPUT_TOPICS
from services.ledger.adapters import metrics
from services.ledger.adapters.kafka_clients import (
    CLOSE_TIMEOUT_S,
    FIRST_RETRY_S,
    next_delay,
    pause,
    start_when_reachable,
    stop_within,
)
from services.ledger.application.ledger import Inbound, Outcome
from services.ledger.application.service import Ledger
from services.ledger.domain.provenance import Origin

log = logging.getLogger(__name__)

GROUP_ID = "loyalty-ledger"
# Records applied per transaction, whatever the fetch size (a bound on one transaction's
# size and memory). The ledger's PostgreSQL recorder inserts outside psycopg's pipeline
# mode, which hung on large inserts (adapters/pg_recorder.py), so this is no longer 500.
STORE_BATCH = 2000


def tracking_key(topic: str, partition: int) -> str:
    return f"kafka:{topic}:{partition}"


class _SeekToStoredPosition(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: KafkaIngest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Nothing to do: a batch is applied whole or not at all."""

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.ingest.seek_to_stored(list(assigned))


class KafkaIngest:
    def __init__(
        self,
        ledger: Ledger,
        bootstrap: str,
        *,
        group_id: str = GROUP_ID,
        topics: Sequence[str] = tuple(sorted(LEDGER_INPUT_TOPICS)),
        max_batch: int = 2000,
        executor: ThreadPoolExecutor | None = None,
        project: bool = True,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = list(topics)
        self.max_batch = max_batch
        self.project = project  # bring the views up to date after each batch
        self.on_applied = on_applied  # e.g. wake the relay of this process
        # One thread for the store: the ledger is synchronous, the consumer is not.
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._consumer: AIOKafkaConsumer | None = None

    async def _in_store(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    def _stored_offset(self, topic: str, partition: int) -> int | None:
        return self.ledger.app.process_recorder.max_tracking_id(tracking_key(topic, partition))

    async def seek_to_stored(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp in partitions:
            if tp not in assigned:
                continue  # revoked meanwhile: its new owner seeks for itself
            stored = await self._in_store(self._stored_offset, tp.topic, tp.partition)
            if stored is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, stored + 1)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished first."""

        def make() -> AIOKafkaConsumer:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.max_batch,
                isolation_level="read_committed",
            )
            self._consumer = consumer
            consumer.subscribe(self.topics, listener=_SeekToStoredPosition(self))
            return consumer

        consumer = await start_when_reachable(make, stop)
        if consumer is None:
            return
        delay = FIRST_RETRY_S
        try:
            while not stop.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                except KafkaError as exc:
                    log.warning("fetching failed (%s); retrying in %.1fs", exc, delay)
                    await pause(stop, delay)
                    delay = next_delay(delay)
                    continue
                delay = FIRST_RETRY_S
                hints: dict[TopicPartition, int] = {}
                for tp, records in batches.items():
                    # At most STORE_BATCH records per transaction, each with its own position.
                    for start in range(0, len(records), STORE_BATCH):
                        chunk = records[start : start + STORE_BATCH]
                        if not await self._apply(tp, chunk):
                            break  # the partition was sought back (or revoked): refetch
                        hints[tp] = chunk[-1].offset + 1
                await self._commit_hints(hints)
        finally:
            await stop_within(consumer, CLOSE_TIMEOUT_S)
            self._consumer = None

    async def _apply(self, tp: TopicPartition, records: list[Any]) -> bool:
        """Apply one partition's records in one transaction; False when the rest of the
        fetched records must not follow (position already recorded, or partition revoked)."""
        assert self._consumer is not None
        items = [
            Inbound(
                r.value if r.value is not None else b"",
                Origin("kafka", topic=tp.topic, partition=tp.partition, offset=r.offset),
                r.key,
            )
            for r in records
        ]
        last = records[-1].offset
        tracking = Tracking(tracking_key(tp.topic, tp.partition), last)
        delay = 0.5
        began = time.perf_counter()
        while True:
            try:
                outcomes: list[Outcome] = await self._in_store(
                    self.ledger.app.apply_batch, items, tracking
                )
            except IntegrityError as exc:
                # Already applied (redelivery), or another instance changed one of these
                # accounts first: carry on from the stored position.
                log.info("batch at %s up to offset %s not applied (%s)", tp, last, exc)
                await self.seek_to_stored([tp])
                return False
            except Exception:
                log.exception("applying a batch from %s failed; retrying in %.1fs", tp, delay)
                metrics.INGEST_RETRIES.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            break
        metrics.INGEST_APPLY_SECONDS.observe(time.perf_counter() - began)
        metrics.INGEST_BATCH_SIZE.observe(len(items))
        for outcome in outcomes:
            metrics.INGEST_MESSAGES.labels(tp.topic, outcome.status, outcome.reason or "").inc()
        # The partition may have been revoked while the batch was applied (a rebalance).
        still_ours = tp in self._consumer.assignment()
        highwater = self._consumer.highwater(tp) if still_ours else None
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - last - 1)
            )
        if self.on_applied is not None:
            self.on_applied()
        if self.project:
            try:
                await self._in_store(self.ledger.catch_up)
            except Exception:
                # The batch is applied and its position recorded; the views catch up from
                # their own position after the next batch (or in the relay's process).
                log.exception("bringing the views up to date failed; the next batch retries")
        return still_ours

    async def _commit_hints(self, hints: dict[TopicPartition, int]) -> None:
        """Offsets for tools (lag dashboards), once per poll: a hint, not the truth."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        offsets = {tp: offset for tp, offset in hints.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("offset hints not committed: %s", exc)

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=True)
