"""The tier projection's core, free of faust: ledger entry in, tier state and messages out.

It decides nothing: the ledger records every tier change as a tier_assigned entry, and the
state follows those (services/tiers/facts.py `follow`). `store` is any mutable mapping of
member id -> encoded state (the faust table, or a dict).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas import TOPIC_TIER_STATUS, TOPIC_TIERS
from schemas.outbound import LedgerEntry, TierStatus
from services.ledger.domain.program import Program
from services.ledger.domain.tier_policy import TierState
from services.tiers import metrics
from services.tiers.codec import decode_state, encode_state
from services.tiers.facts import follow, tier_entry
from services.tiers.messages import encode, tier_changed, tier_status

Outgoing = tuple[str, bytes, bytes]  # (topic, key, value)


def _shown(status: TierStatus) -> TierStatus:
    """A status without the position and instant it was counted at: what a reader sees."""
    return status.model_copy(
        update={"as_of_position": 0, "as_of": datetime.min.replace(tzinfo=UTC)}
    )


@dataclass
class TierProcessor:
    program: Program
    store: MutableMapping[str, Any]

    def state(self, member_id: str) -> TierState:
        data = self.store.get(member_id)
        return decode_state(data) if data else TierState(member_id)

    def on_entry(self, raw: bytes) -> tuple[TierState | None, list[Outgoing]]:
        """Follow one loyalty.ledger.v1 message; the caller publishes, then `save`s.

        Out: a tier.changed for a tier_assigned entry that changed the tier, and the
        member's tier status when what it shows changed (or on the member's first entry).
        A redelivered entry (at or before the member's last position) changes nothing."""
        entry = LedgerEntry.model_validate_json(raw)
        before = self.state(entry.member_id)
        after = follow(self.program, before, entry)
        if after == before:
            return None, []
        metrics.LAG_SECONDS.set(max(0.0, (datetime.now(UTC) - entry.recorded_at).total_seconds()))
        metrics.LAST_POSITION.set(after.last_position)
        if not self.program.tiers:
            return after, []
        key = entry.member_id.encode()
        out: list[Outgoing] = []
        recorded = tier_entry(entry)
        change = tier_changed(self.program, entry, recorded, before, after) if recorded else None
        if change is not None:
            metrics.CHANGES.labels(change.data.reason).inc()
            out.append((TOPIC_TIERS, key, encode(change)))
        status = tier_status(self.program, after, after.stream_time or entry.effective_at)
        shown_before = (
            tier_status(self.program, before, before.stream_time)
            if before.stream_time is not None
            else None
        )
        if shown_before is None or _shown(shown_before) != _shown(status):
            out.append((TOPIC_TIER_STATUS, key, encode(status)))
        return after, out

    def save(self, state: TierState) -> None:
        self.store[state.member_id] = encode_state(state)

    def count_members(self) -> dict[str, int]:
        """Members per tier (also set on the gauge)."""
        counts = Counter(str(data.get("tier")) for data in self.store.values() if data)
        for tier in self.program.tiers:
            metrics.MEMBERS_PER_TIER.labels(tier.id).set(counts.get(tier.id, 0))
        return dict(counts)
