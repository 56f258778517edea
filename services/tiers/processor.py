"""The tiers service's core, free of faust: ledger entry in, tier state and messages out.

The faust agent (services/tiers/app.py) and the embedded mode both use it. `store` is any
mutable mapping of member id -> encoded state (the faust table, or a dict).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.outbound import LedgerEntry
from services.ledger.domain.program import Program
from services.ledger.domain.tier_policy import TierDecision, TierState, advance, apply
from services.tiers import metrics
from services.tiers.codec import decode_state, encode_state
from services.tiers.facts import fact_from_entry
from services.tiers.messages import encode, tier_changed

Outgoing = tuple[bytes, bytes]  # (key, value) for loyalty.tiers.v1


@dataclass
class TierProcessor:
    program: Program
    store: MutableMapping[str, Any]

    def state(self, member_id: str) -> TierState:
        data = self.store.get(member_id)
        return decode_state(data) if data else TierState(member_id)

    def on_entry(self, raw: bytes) -> tuple[TierState | None, list[Outgoing]]:
        """Decide on one loyalty.ledger.v1 message; the caller publishes, then `save`s."""
        entry = LedgerEntry.model_validate_json(raw)
        fact = fact_from_entry(entry)
        if fact is None:
            return None, []
        before = self.state(entry.member_id)
        after, decisions = apply(self.program, before, fact)
        if after == before:
            return None, []  # a redelivery: nothing changes, nothing to store
        metrics.LAG_SECONDS.set(max(0.0, (datetime.now(UTC) - entry.recorded_at).total_seconds()))
        metrics.LAST_POSITION.set(fact.position)
        return after, self._outgoing(decisions)

    def on_tick(self, member_id: str, now: datetime) -> tuple[TierState | None, list[Outgoing]]:
        """Period-end reviews due at `now` for one member (idempotent for `now`)."""
        before = self.state(member_id)
        after, decisions = advance(self.program, before, now)
        if after == before:
            return None, []
        return after, self._outgoing(decisions)

    def save(self, state: TierState) -> None:
        self.store[state.member_id] = encode_state(state)

    def _outgoing(self, decisions: list[TierDecision]) -> list[Outgoing]:
        basis = self.program.tier_qualification.basis
        out = []
        for decision in decisions:
            day = decision.effective_from.astimezone(UTC).date().isoformat()
            metrics.CHANGES.labels(decision.reason, day).inc()
            out.append((decision.member_id.encode(), encode(tier_changed(decision, basis))))
        return out

    def count_members(self) -> dict[str, int]:
        """Members per tier (also set on the gauge)."""
        counts = Counter(str(data.get("tier")) for data in self.store.values() if data)
        for tier in self.program.tiers:
            metrics.MEMBERS_PER_TIER.labels(tier.id).set(counts.get(tier.id, 0))
        return dict(counts)
