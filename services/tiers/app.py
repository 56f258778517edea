"""The faust app of the tiers service: loyalty.ledger.v1 -> tier table -> loyalty.tiers.v1.

- `tier-state` table: member id -> tier state (qualifying activity, tier, dates, and the
  last ledger position applied, so a redelivered entry changes nothing). Its changelog
  topic is how a restarted worker gets it back.
- `entries` agent: each ledger entry goes through the pure policy; tier.changed messages
  are published (and awaited) before the state is stored, so a crash in between publishes
  the same decision again with the same event_id, which the ledger's receipts drop.
- `reviews` timer: period-end downgrades and override ends due at the clock's `now`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from pydantic import ValidationError

from schemas import TOPIC_LEDGER, TOPIC_TIERS
from services.ledger.domain.clock import Clock, SystemClock
from services.ledger.domain.program import Program
from services.tiers.processor import Outgoing, TierProcessor

log = logging.getLogger(__name__)

APP_ID = "loyalty-tiers"
TABLE = "tier-state"


class MemberKeyed(MutableMapping[str, Any]):
    """The table seen with member ids as text (it stores them as raw bytes)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, member_id: str) -> Any:
        return self.table[member_id.encode()]

    def __setitem__(self, member_id: str, value: Any) -> None:
        self.table[member_id.encode()] = value

    def __delitem__(self, member_id: str) -> None:
        del self.table[member_id.encode()]

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in list(self.table.keys()))

    def __len__(self) -> int:
        return len(self.table)


@dataclass
class TiersApp:
    app: faust.App
    processor: TierProcessor
    ledger_topic: Any
    tiers_topic: Any
    table: Any
    entries: Any  # the agent
    clock: Clock
    # The agent and the timer both read, publish, then store a member's state: one at a
    # time, so neither stores a state the other has moved on meanwhile.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def publish(self, outgoing: list[Outgoing]) -> None:
        for key, value in outgoing:
            await self.tiers_topic.send(key=key, value=value)

    async def review(self) -> int:
        """Apply the reviews due now to every member held here; returns changes published."""
        now = self.clock.now()
        published = 0
        for member_id in list(self.processor.store.keys()):
            async with self.lock:
                state, outgoing = self.processor.on_tick(member_id, now)
                if state is None:
                    continue
                await self.publish(outgoing)
                self.processor.save(state)
            published += len(outgoing)
        self.processor.count_members()
        return published


def build_app(
    program: Program,
    *,
    broker: str = "kafka://localhost:9092",
    store: str = "memory://",
    data_dir: Path | None = None,
    clock: Clock | None = None,
    review_interval: float = 60.0,
    app_id: str = APP_ID,
    partitions: int = 3,
    session_timeout: float = 10.0,
) -> TiersApp:
    """Wire the faust app; `store` memory:// keeps the table in memory, rebuilt from its
    changelog topic on start (rocksdb:// would keep a local copy)."""
    app = faust.App(
        app_id,
        broker=broker,
        store=store,
        datadir=str(data_dir) if data_dir else None,
        topic_partitions=partitions,
        topic_allow_declare=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        table_standby_replicas=0,
        # A worker that died is noticed after this long and its partitions move on.
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=session_timeout / 4,
    )
    ledger_topic = app.topic(
        TOPIC_LEDGER, key_type=bytes, value_type=bytes, value_serializer="raw", internal=False
    )
    tiers_topic = app.topic(
        TOPIC_TIERS, key_type=bytes, value_type=bytes, value_serializer="raw", internal=False
    )
    # Keys are the raw member id bytes, like loyalty.ledger.v1's keys: the producer's
    # partitioner then puts a member's state in the changelog partition numbered like its
    # ledger partition, which is the one the worker owning that ledger partition restores.
    table = app.Table(
        TABLE, default=None, key_type=bytes, partitions=partitions, use_partitioner=True
    )
    processor = TierProcessor(program, MemberKeyed(table))
    tiers: TiersApp

    @app.agent(ledger_topic, name="entries")
    async def entries(stream: Any) -> Any:
        async for raw in stream:
            async with tiers.lock:
                try:
                    state, outgoing = processor.on_entry(raw)
                except ValidationError as exc:  # not a ledger entry: nothing to decide on
                    log.warning("skipped a message that is not a ledger entry: %s", exc)
                    state, outgoing = None, []
                if state is not None:
                    await tiers.publish(outgoing)
                    processor.save(state)
            yield len(outgoing)

    tiers = TiersApp(
        app, processor, ledger_topic, tiers_topic, table, entries, clock or SystemClock()
    )

    @app.timer(interval=review_interval, name="reviews")  # type: ignore[untyped-decorator]
    async def reviews() -> None:
        changed = await tiers.review()
        if changed:
            log.info("period-end reviews published %d tier changes", changed)

    return tiers
