"""Tiers recomputed from the ledger from zero, and compared with what is recorded or live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.outbound import LedgerEntry, TierProgressOut
from services.ledger.application.ledger import LedgerApplication
from services.ledger.domain.tier_policy import (
    Progress,
    TierDecision,
    TierState,
    advance,
    apply,
    progress,
    recompute,
)
from services.tiers.facts import fact_from_entry
from services.tiers.history import facts_by_member, member_facts


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


def tier_progress(
    app: LedgerApplication, member_id: str, now: datetime, through: int | None = None
) -> Progress | None:
    """Where a member stands toward the next tier, from its history (None: no tiers); with
    `through`, from its entries up to that one (seq) only: a balance as of a past instant
    (0: before the member's first entry, None)."""
    if not app.program.tiers or through == 0:
        return None
    facts = member_facts(app, member_id)
    if through is not None:
        facts = [f for f in facts if f.position <= through]
    state, _ = recompute(app.program, member_id, facts, now)
    return progress(app.program, state, now)


def balance_tier_fields(
    app: LedgerApplication, member_id: str, now: datetime, through: int | None = None
) -> tuple[datetime | None, TierProgressOut | None]:
    """(held until, progress) for balance responses; (None, None) without tiers."""
    return _fields(app, tier_progress(app, member_id, now, through))


class TierProgressCache:
    """Each member's tier state, kept up to date from the entries a reader goes through
    (the relay), so a balance does not re-read the member's whole history every time.
    Facts are numbered by the member's entry number, as in `member_facts`."""

    def __init__(self, app: LedgerApplication) -> None:
        self.app = app
        self.states: dict[str, TierState] = {}

    def observe(self, entry: LedgerEntry) -> None:
        if not self.app.program.tiers:
            return
        state = self.states.get(entry.member_id)
        if state is None and entry.seq == 1:  # a new member: nothing to read
            state = self.states[entry.member_id] = recompute(self.app.program, entry.member_id, [])[
                0
            ]
        elif state is None:  # first sight: its history so far (this entry included)
            facts = member_facts(self.app, entry.member_id)
            self.states[entry.member_id] = recompute(self.app.program, entry.member_id, facts)[0]
            return
        fact = fact_from_entry(entry.model_copy(update={"position": entry.seq}))
        if fact is not None:
            self.states[entry.member_id] = apply(self.app.program, state, fact)[0]

    def fields(
        self, member_id: str, now: datetime
    ) -> tuple[datetime | None, TierProgressOut | None]:
        state = self.states.get(member_id)
        if state is None or not self.app.program.tiers:
            return balance_tier_fields(self.app, member_id, now)
        state = advance(self.app.program, state, now)[0]
        return _fields(self.app, progress(self.app.program, state, now))


def _fields(
    app: LedgerApplication, shown: Progress | None
) -> tuple[datetime | None, TierProgressOut | None]:
    if shown is None:
        return None, None
    return shown.held_until, TierProgressOut(
        basis=app.program.tier_qualification.basis,
        qualifying_value=shown.qualifying_value,
        next_tier=shown.next_tier,
        next_threshold=shown.next_threshold,
        period_end=shown.period_end,
    )
