"""Tiers recomputed from the ledger from zero, and compared with what is recorded or live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.outbound import TierProgressOut
from services.ledger.application.ledger import LedgerApplication
from services.tiers.history import facts_by_member, member_facts
from services.tiers.policy import Progress, TierDecision, TierState, progress, recompute


@dataclass(frozen=True)
class Recomputed:
    member_id: str
    state: TierState
    decisions: tuple[TierDecision, ...]


def recompute_all(app: LedgerApplication, now: datetime | None = None) -> dict[str, Recomputed]:
    """Every member's tier from the ledger's history (reviews up to the last entry, or `now`)."""
    program = app.program
    result: dict[str, Recomputed] = {}
    for member, facts in sorted(facts_by_member(app).items()):
        state, decisions = recompute(program, member, facts, now)
        result[member] = Recomputed(member, state, tuple(decisions))
    return result


def tier_differences(app: LedgerApplication) -> list[str]:
    """Members whose recorded tier differs from the recomputation from their history."""
    if not app.program.tiers:
        return []
    found = []
    for member, again in recompute_all(app).items():
        account = app.find_account(member)
        recorded = account.tier if account is not None else None
        if recorded != again.state.tier:
            found.append(
                f"{member}: ledger records tier {recorded or '-'}, "
                f"recomputation from its history gives {again.state.tier or '-'}"
            )
    return found


def tier_progress(app: LedgerApplication, member_id: str, now: datetime) -> Progress | None:
    """Where a member stands toward the next tier, from its history (None: no tiers)."""
    if not app.program.tiers:
        return None
    state, _ = recompute(app.program, member_id, member_facts(app, member_id), now)
    return progress(app.program, state, now)


def balance_tier_fields(
    app: LedgerApplication, member_id: str, now: datetime
) -> tuple[datetime | None, TierProgressOut | None]:
    """(held until, progress) for balance responses; (None, None) without tiers."""
    shown = tier_progress(app, member_id, now)
    if shown is None:
        return None, None
    return shown.held_until, TierProgressOut(
        basis=app.program.tier_qualification.basis,
        qualifying_value=shown.qualifying_value,
        next_tier=shown.next_tier,
        next_threshold=shown.next_threshold,
        period_end=shown.period_end,
    )
