"""Program figures for program managers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.ledger.api.deps import LedgerDep, MembersReader
from services.ledger.api.models import DayFigures, ProgramMetrics
from services.ledger.api.routes.members import ERRORS
from services.ledger.application.program_metrics import from_summary

router = APIRouter(prefix="/v1/program", tags=["program"])


@router.get(
    "/metrics", operation_id="program_metrics", response_model=ProgramMetrics, responses=ERRORS
)
def program_metrics(
    ledger: LedgerDep,
    _: MembersReader,
    period_days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> ProgramMetrics:
    """Liability, issued/redeemed/expired per day, redemption rate, breakage, tiers, retention.

    Ratios are integer basis points (10000 = 100 %), rounded down.
    """
    # From the summary the projection keeps (program_metrics.from_summary gives what
    # `compute` gives over every balance and entry), not from the whole history.
    ledger.fresh()
    f = from_summary(ledger.view.summary(ledger.app.clock.now(), period_days))
    return ProgramMetrics(
        program_version=ledger.app.program.version,
        members=f.members,
        outstanding_points=f.outstanding,
        issued=f.issued,
        redeemed=f.redeemed,
        expired=f.expired,
        redemption_rate_bp=f.redemption_rate_bp,
        breakage_bp=f.breakage_bp,
        members_per_tier=f.per_tier,
        period_days=period_days,
        active_members=f.active,
        retention_bp=f.retention_bp,
        per_day=[
            DayFigures(day=d, issued=v[0], redeemed=v[1], expired=v[2])
            for d, v in f.per_day.items()
        ],
    )
