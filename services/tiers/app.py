"""The faust app of the tiers projection: loyalty.ledger.v1 -> tier table -> loyalty.tiers.v1
and loyalty.tier-status.v1.

The ledger decides tiers itself (inline, as it records each entry); this service only
follows them, so no purchase ever waits on it.

- `tier-state` table: member id -> the tier the ledger recorded (tier, dates, override,
  lock), the qualifying activity (for the progress toward the next tier) and the last ledger
  position applied, so a redelivered entry changes nothing. Its changelog topic is how a
  restarted worker gets it back.
- `entries` agent: each ledger entry is followed; the messages it gives (tier.changed for
  a tier change, the member's tier status) are published and awaited before the state is
  stored, so a crash in between publishes the same messages again: tier.changed with the
  same event_id, the status under the same key of a compacted topic.
- `members` timer: refreshes the members-per-tier gauge; it decides nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from pydantic import ValidationError

from schemas import TOPIC_LEDGER, TOPIC_TIER_STATUS, TOPIC_TIERS
from services.ledger.adapters.kafka_clients import limit_repeats
from services.ledger.domain.program import Program
from services.tiers.processor import Outgoing, TierProcessor

log = logging.getLogger(__name__)

APP_ID = "loyalty-tiers"
TABLE = "tier-state"


class Worker(faust.Worker):
    """faust's worker, with repeated log lines limited once it has set up logging: its
    aiokafka clients log every failed attempt while the broker is away."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        limit_repeats(logger)


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
    status_topic: Any
    table: Any
    entries: Any  # the agent

    async def publish(self, outgoing: list[Outgoing]) -> None:
        topics = {TOPIC_TIERS: self.tiers_topic, TOPIC_TIER_STATUS: self.status_topic}
        for topic, key, value in outgoing:
            await topics[topic].send(key=key, value=value)


def build_app(
    program: Program,
    *,
    broker: str = "kafka://localhost:9092",
    store: str = "memory://",
    data_dir: Path | None = None,
    count_interval: float = 60.0,
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

    def topic(name: str) -> Any:
        return app.topic(
            name, key_type=bytes, value_type=bytes, value_serializer="raw", internal=False
        )

    ledger_topic, tiers_topic, status_topic = (
        topic(TOPIC_LEDGER),
        topic(TOPIC_TIERS),
        topic(TOPIC_TIER_STATUS),
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
            try:
                state, outgoing = processor.on_entry(raw)
            except ValidationError as exc:  # not a ledger entry: nothing to follow
                log.warning("skipped a message that is not a ledger entry: %s", exc)
                state, outgoing = None, []
            if state is not None:
                await tiers.publish(outgoing)
                processor.save(state)
            yield len(outgoing)

    tiers = TiersApp(app, processor, ledger_topic, tiers_topic, status_topic, table, entries)

    @app.timer(interval=count_interval, name="members")  # type: ignore[untyped-decorator]
    async def members() -> None:
        processor.count_members()

    return tiers
