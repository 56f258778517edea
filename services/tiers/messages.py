"""Tier decisions as ``tier.changed`` messages on ``loyalty.tiers.v1`` (key: member id)."""

from __future__ import annotations

from typing import Literal

from schemas.tiers import TierChanged, TierChangedData
from services.ledger.domain.tier_policy import TierDecision


def tier_changed(decision: TierDecision, basis: Literal["points", "spend"]) -> TierChanged:
    return TierChanged(
        event_id=decision.event_id,
        type="tier.changed",
        occurred_at=decision.effective_from,
        member_id=decision.member_id,
        data=TierChangedData(
            from_tier=decision.from_tier,
            to_tier=decision.to_tier,
            reason=decision.reason,
            detail=decision.detail[:500],
            basis=basis,
            qualifying_value=decision.qualifying_value,
            threshold=decision.threshold,
            effective_from=decision.effective_from,
            valid_until=decision.valid_until,
            caused_by_position=decision.caused_by_position,
        ),
    )


def encode(message: TierChanged) -> bytes:
    return message.model_dump_json().encode()
