"""What the tiers projection publishes (key: member id): ``tier.changed`` on
``loyalty.tiers.v1`` for each tier change the ledger recorded, and the member's tier status on
the compacted ``loyalty.tier-status.v1``."""

from __future__ import annotations

from datetime import datetime
from typing import get_args

from schemas.limits import MAX_REASON_LENGTH
from schemas.outbound import LedgerEntry, TierStatus
from schemas.text import printable
from schemas.tiers import TierChanged, TierChangedData, TierChangeReason
from services.ledger.domain.program import Program
from services.ledger.domain.tier_policy import (
    TierState,
    advance,
    period_value,
    progress,
    window_value,
)
from services.tiers.facts import OVERRIDE, TierEntry

#: The tier_assigned entry's cause -> tier.changed's reason (`kept` changes no tier).
REASONS: dict[str, TierChangeReason] = {
    "entry": "upgrade",  # the entry tier, placed before a new member's first entry counts
    "upgrade": "upgrade",
    "downgrade": "downgrade",
    "retracted": "downgrade",  # an upgrade a late-arriving earlier refund undid
    "override_ended": "override_ended",
    OVERRIDE: "override",
}
_ANY_REASON: dict[str, TierChangeReason] = {r: r for r in get_args(TierChangeReason)}
#: Causes decided by the passing of time (the ledger's scheduler): no entry caused them.
TIMED = frozenset({"downgrade", "kept", "override_ended"})


#: Reviews looked ahead for the date a tier is held until (each keeps it for one period).
REVIEWS_AHEAD = 5


def held_until(program: Program, state: TierState) -> datetime | None:
    """When the tier in `state` ends if nothing more happens: the first review (or end of
    an override) the policy would not keep it at, given the activity counted so far.

    The ledger records the next review (the end of the period plus grace); a member who
    qualified in this period keeps the tier at that review, and for the period after it.
    None when nothing would end it (the entry tier, a lock without an end)."""
    for _ in range(REVIEWS_AHEAD):
        due = state.override_until if state.locked else state.held_until
        if due is None:
            return None
        later, decisions = advance(program, state, due)
        if decisions or later.tier != state.tier:
            return due
        if (later.held_until, later.override_until, later.locked) == (
            state.held_until,
            state.override_until,
            state.locked,
        ):
            return due  # nothing moved on (an unlocked override ends here)
        state = later
    return state.held_until


def event_id(member_id: str, tier: str, position: int) -> str:
    """Deterministic: the tier_assigned entry at `position` always gives the same id."""
    return f"tier:{member_id}:{tier}:p{position}"


def _reason(program: Program, recorded: TierEntry) -> TierChangeReason:
    found = REASONS.get(recorded.cause)
    if found is not None:
        return found
    # Recorded by 0.1 from the tiers service's tier.changed (its reason), else the direction.
    found = _ANY_REASON.get(recorded.reason)
    if found is not None:
        return found
    to, was = program.tier(recorded.tier), program.tier(recorded.previous)
    higher = to is not None and (was is None or to.threshold > was.threshold)
    return "upgrade" if higher else "downgrade"


def tier_changed(
    program: Program,
    entry: LedgerEntry,
    recorded: TierEntry,
    before: TierState,
    after: TierState,
) -> TierChanged | None:
    """The tier.changed message of a tier_assigned entry that changed the tier (None when it
    kept it, or took the tier away: there is no tier to announce)."""
    if recorded.tier is None or recorded.tier == recorded.previous or entry.position is None:
        return None
    at = entry.effective_at
    if recorded.cause in TIMED and before.period_end is not None:
        value = period_value(program, before, before.period_end)  # the period reviewed
    else:
        value = window_value(program, after, at)
    caused_by: int | None
    if recorded.cause in TIMED:
        caused_by = None
    elif recorded.cause == "upgrade":
        # Recorded right after the earn that reached the threshold: the member's last entry.
        caused_by = before.last_position or None
    else:
        caused_by = entry.position
    tier = program.tier(recorded.tier)
    return TierChanged(
        event_id=event_id(entry.member_id, recorded.tier, entry.position),
        type="tier.changed",
        occurred_at=at,
        member_id=entry.member_id,
        data=TierChangedData(
            from_tier=recorded.previous,
            to_tier=recorded.tier,
            reason=_reason(program, recorded),
            # A reason recorded before control characters were refused is sent escaped.
            detail=printable(recorded.reason)[:MAX_REASON_LENGTH],
            basis=program.tier_qualification.basis,
            qualifying_value=value,
            threshold=tier.threshold if tier is not None else 0,
            effective_from=at,
            valid_until=held_until(program, after),
            caused_by_position=caused_by,
        ),
    )


def tier_status(program: Program, state: TierState, at: datetime) -> TierStatus:
    """Where the member stands at `at`: the ledger's tier and the progress toward the next."""
    shown = progress(program, state, at)
    return TierStatus(
        member_id=state.member_id,
        tier=state.tier,
        held_until=state.held_until,
        locked=state.locked,
        override_until=state.override_until,
        basis=program.tier_qualification.basis,
        qualifying_value=shown.qualifying_value,
        next_tier=shown.next_tier,
        next_threshold=shown.next_threshold,
        period_end=shown.period_end,
        as_of_position=state.last_position,
        as_of=at,
    )


def encode(message: TierChanged | TierStatus) -> bytes:
    return message.model_dump_json().encode()
