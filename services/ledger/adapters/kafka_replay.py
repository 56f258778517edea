"""Re-ingest a range of offsets of an inbound topic through the ordinary ingest path.

Events already applied are skipped by idempotency (their receipts answer "duplicate"); the
ingest's own stored positions are not touched. Records are read without a consumer group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.ledger.application.ledger import Inbound, Outcome
from services.ledger.application.service import Ledger
from services.ledger.domain.provenance import Origin


@dataclass
class ReplayReport:
    applied: int = 0
    skipped: int = 0  # duplicates: already applied (or declined) before
    dead_lettered: int = 0  # rejected: recorded with the reason, published to the dead letters
    reasons: dict[str, int] = field(default_factory=dict)
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)  # first, last offset

    def count(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.status == "applied":
                self.applied += 1
            elif outcome.status == "duplicate":
                self.skipped += 1
            else:
                self.dead_lettered += 1
                key = outcome.reason or "rejected"
                self.reasons[key] = self.reasons.get(key, 0) + 1


async def replay(
    ledger: Ledger,
    bootstrap: str,
    topic: str,
    from_offset: int,
    to_offset: int,
    *,
    partitions: Sequence[int] | None = None,
    batch: int = 500,
    idle_ms: int = 5000,
) -> ReplayReport:
    """Apply offsets [from_offset, to_offset] (inclusive) of each partition of `topic`."""
    report = ReplayReport()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        known = consumer.partitions_for_topic(topic) or set()
        if not known:
            await consumer._client.force_metadata_update()
            known = consumer.partitions_for_topic(topic) or set()
        chosen = sorted(known if partitions is None else set(partitions) & known)
        tps = [TopicPartition(topic, p) for p in chosen]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        pending = set()
        for tp in tps:
            if from_offset < ends[tp]:
                consumer.seek(tp, from_offset)
                pending.add(tp)
        loop = asyncio.get_running_loop()
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=idle_ms, max_records=batch)
            if not batches:
                break  # nothing more to read in time
            for tp, records in batches.items():
                wanted = [r for r in records if from_offset <= r.offset <= to_offset]
                if wanted:
                    items = [
                        Inbound(
                            r.value if r.value is not None else b"",
                            Origin(
                                "kafka", topic=tp.topic, partition=tp.partition, offset=r.offset
                            ),
                            r.key,
                        )
                        for r in wanted
                    ]
                    outcomes = await loop.run_in_executor(None, ledger.app.apply_batch, items)
                    report.count(outcomes)
                    first, _ = report.partitions.get(tp.partition, (wanted[0].offset, 0))
                    report.partitions[tp.partition] = (first, wanted[-1].offset)
                last = records[-1].offset if records else -1
                if last >= to_offset or last + 1 >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    ledger.catch_up()
    return report
