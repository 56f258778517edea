"""Builders of ledger entries, lots and tier changes for the notifier's tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.outbound import (
    BalanceOut,
    LedgerEntry,
    LotOut,
    OriginOut,
    PostingOut,
    ProvenanceOut,
)
from schemas.tiers import TierChanged
from services.ledger.domain.program import Program


def program(**overrides: Any) -> Program:
    """UTC, tiers Base/Silver(500)/Gold(2000), rewards at 50 and 120 points."""
    data: dict[str, Any] = {
        "id": "notify",
        "name": "Notify",
        "timezone": "UTC",
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
        "tiers": [
            {"id": "base", "name": "Base", "threshold": 0},
            {"id": "silver", "name": "Silver", "threshold": 500},
            {"id": "gold", "name": "Gold", "threshold": 2000},
        ],
        "rewards": {
            "coffee": {"name": "Free coffee", "points": 50},
            "lunch": {"name": "Lunch", "points": 120},
        },
    }
    data.update(overrides)
    return Program.model_validate(data)


def lot(
    lot_id: str,
    amount: int,
    remaining: int,
    earned_at: datetime,
    expires_at: datetime | None,
    status: str = "available",
) -> LotOut:
    return LotOut(
        lot_id=lot_id,
        amount=amount,
        remaining=remaining,
        status=status,
        earned_at=earned_at,
        release_at=None,
        expires_at=expires_at,
        source="test",
    )


def entry(
    member_id: str,
    seq: int,
    entry_type: str,
    at: datetime,
    *,
    available_delta: int = 0,
    pending_delta: int = 0,
    available_after: int = 0,
    lots: tuple[LotOut, ...] = (),
    details: dict[str, str | int | None] | None = None,
    event_id: str | None = None,
    position: int | None = None,
) -> LedgerEntry:
    postings = []
    if available_delta:
        postings += [
            PostingOut(account="member:available", amount=available_delta),
            PostingOut(account="program:issued", amount=-available_delta),
        ]
    if pending_delta:
        postings += [
            PostingOut(account="member:pending", amount=pending_delta),
            PostingOut(account="program:issued", amount=-pending_delta),
        ]
    return LedgerEntry(
        member_id=member_id,
        seq=seq,
        position=position if position is not None else seq,
        entry_type=entry_type,
        effective_at=at,
        recorded_at=at,
        points=available_delta + pending_delta,
        postings=tuple(postings),
        moves=(),
        lots_after=lots,
        balance_after=BalanceOut(available=available_after, pending=0, held=0),
        provenance=ProvenanceOut(origin=OriginOut(channel="kafka"), event_id=event_id),
        note="",
        details=details or {},
    )


def tier_changed(
    member_id: str,
    from_tier: str | None,
    to_tier: str,
    reason: str,
    at: datetime,
    valid_until: datetime | None,
    *,
    qualifying: int = 0,
    threshold: int = 0,
) -> TierChanged:
    return TierChanged.model_validate(
        {
            "event_id": f"tier-{member_id}-{to_tier}-{at:%Y%m%dT%H%M%S}",
            "type": "tier.changed",
            "occurred_at": at.isoformat(),
            "member_id": member_id,
            "data": {
                "from_tier": from_tier,
                "to_tier": to_tier,
                "reason": reason,
                "basis": "points",
                "qualifying_value": qualifying,
                "threshold": threshold,
                "effective_from": at.isoformat(),
                "valid_until": valid_until.isoformat() if valid_until else None,
                "caused_by_position": None,
            },
        }
    )
