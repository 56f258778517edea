"""Ledger views to API response models."""

from __future__ import annotations

from datetime import datetime

from schemas.outbound import TierProgressOut
from services.ledger.api.models import Balance, Hold, LotView, MemberDifference, WhatIfReport
from services.ledger.application import what_if
from services.ledger.application.service import MemberBalanceView
from services.ledger.domain.holds import HoldRecord
from services.ledger.domain.lots import Lot


def balance(
    b: MemberBalanceView,
    held_until: datetime | None = None,
    progress: TierProgressOut | None = None,
) -> Balance:
    return Balance(
        member_id=b.member_id,
        available=b.available,
        pending=b.pending,
        held=b.held,
        lifetime_earned=b.lifetime_earned,
        tier=b.tier,
        expiring={f"{k}d": v for k, v in b.expiring.items()},
        as_of=b.as_of,
        as_of_position=b.as_of_position,
        tier_held_until=held_until,
        tier_progress=progress,
    )


def hold(member_id: str, h: HoldRecord, entries: tuple[str, ...] = ()) -> Hold:
    return Hold(
        hold_id=h.hold_id,
        member_id=member_id,
        reference=h.reference,
        points=h.points,
        status=h.status,
        captured=h.captured,
        placed_at=h.placed_at,
        expires_at=h.expires_at,
        resolved_at=h.resolved_at,
        entries=list(entries),
    )


def lot(x: Lot) -> LotView:
    return LotView(
        lot_id=x.lot_id,
        source=x.source,
        amount=x.amount,
        remaining=x.remaining,
        status=x.status,
        earned_at=x.earned_at,
        release_at=x.release_at,
        expires_at=x.expires_at,
        program_version=x.program_version,
    )


def what_if_report(r: what_if.WhatIfReport) -> WhatIfReport:
    """The API's response, and `loyalty what-if --json`."""
    return WhatIfReport(
        run_id=r.run_id,
        program_version=r.program_version,
        current_version=r.current_version,
        position=r.position,
        as_of=r.as_of,
        replayed_events=r.replayed_events,
        replayed_operations=r.replayed_operations,
        tiers_recomputed=r.tiers_recomputed,
        tier_changes=r.tier_changes,
        skipped=r.skipped,
        members=[
            MemberDifference(
                member_id=d.member_id,
                actual=d.actual,
                would_have=d.would_have,
                difference=d.difference,
                actual_lifetime=d.actual_lifetime,
                would_have_lifetime=d.would_have_lifetime,
            )
            for d in r.members
        ],
        posted=r.posted,
    )
