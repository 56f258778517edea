"""The tier policy in-process (embedded mode): no Kafka, the same processor and policy.

After the ledger has applied something, `run` reads the new entries from the ledger,
decides, and feeds the tier.changed messages back to the ledger as inbound events (origin
channel ``tiers``), so they are recorded exactly once like on the Kafka path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from services.ledger.application.ledger import (
    APPLIED_STATUS,
    TIERS_CHANNEL,
    Inbound,
    LedgerApplication,
)
from services.ledger.domain.provenance import Origin
from services.tiers.history import ledger_entries
from services.tiers.processor import Outgoing, TierProcessor


class EmbeddedTiers:
    def __init__(self, app: LedgerApplication) -> None:
        self.app = app
        self.store: dict[str, Any] = {}
        self.processor = TierProcessor(app.program, self.store)
        self.position = 0

    def run(self, now: datetime | None = None) -> int:
        """Process new ledger entries (and the reviews due at `now`); returns tier changes
        recorded. A new instance starts from the ledger's first entry."""
        if not self.app.program.tiers:
            return 0
        changes = 0
        while True:
            outgoing: list[Outgoing] = []
            for entry in ledger_entries(self.app, self.position):
                if entry.position is not None:
                    self.position = entry.position
                state, out = self.processor.on_entry(entry.model_dump_json().encode())
                if state is not None:
                    self.processor.save(state)
                    outgoing += out
            if now is not None:
                for member in list(self.store):
                    state, out = self.processor.on_tick(member, now)
                    if state is not None:
                        self.processor.save(state)
                        outgoing += out
            if not outgoing:
                return changes
            outcomes = self.app.apply_batch(
                [Inbound(value, Origin(TIERS_CHANNEL)) for _, value in outgoing]
            )
            # Decisions made again from the start of the ledger are duplicates: not counted.
            changes += sum(o.status == APPLIED_STATUS for o in outcomes)


def tier_decider(app: LedgerApplication) -> Callable[[datetime | None], int]:
    """Decides tiers for `app` from its own entries (what-if replays decide them again)."""
    return EmbeddedTiers(app).run
