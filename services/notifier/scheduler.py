"""The scheduled scan: expiry reminders from unspent lot remainders, tier at risk and the
monthly statement, for every member the notifier has seen. Idempotent for an instant (and
across instants inside the same window): the keys make a repeated scan record nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from services.ledger.domain.program import Program
from services.notifier.notices import (
    Notice,
    expiry_corrections,
    expiry_notices,
    statement_notices,
    tier_at_risk_notices,
)
from services.notifier.sent_log import SentLog
from services.notifier.snapshots import Snapshots

log = logging.getLogger(__name__)


class Scanner:
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

    def notices(self, member_id: str, now: datetime) -> list[Notice]:
        lots = self.snapshots.lots(member_id)
        entries = self.snapshots.entries(member_id)
        tier = self.snapshots.tier(member_id)
        expiring = expiry_notices(member_id, lots, now, self.program)
        if expiring:
            expiring += expiry_corrections(expiring, self.sent_log.reminded(member_id))
        return [
            *expiring,
            *tier_at_risk_notices(
                member_id,
                tier.tier if tier else None,
                tier.valid_until if tier else None,
                entries,
                now,
                self.program,
            ),
            *statement_notices(member_id, entries, now, self.program),
        ]

    def scan(self, now: datetime | None = None) -> int:
        """Record what is due at `now`; returns how many notices were new."""
        at = now or self.clock()
        new = 0
        for member in self.snapshots.members():
            found = self.notices(member, at)
            if not found:
                continue
            with self.sent_log.db.transaction() as run:
                added = self.sent_log.record(run, found, self.channels, at, self.program)
            new += added
        return new

    async def run(self, stop: asyncio.Event, interval: float, wake: asyncio.Event) -> None:
        while not stop.is_set():
            if self.scan():
                wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
