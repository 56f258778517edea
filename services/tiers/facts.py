"""Ledger entries (as published on loyalty.ledger.v1) -> what the tier projection reads.

The ledger decides tiers itself and records every change as a ``tier_assigned`` entry (its
``details`` carry tier, previous, cause, period_end, held_until, override_until, locked). The
projection never decides: `follow` takes the tier from those entries and counts the qualifying
activity of earns and refunds, so the progress toward the next tier can be shown.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from schemas.outbound import LedgerEntry
from services.ledger.domain.program import Program
from services.ledger.domain.tier_policy import Fact, TierState, prune, record

TIER_CHANGED = "tier.changed"
TIER_ASSIGNED = "tier_assigned"
TOPPED_UP = "points_topped_up"
#: Causes of a tier_assigned entry: the ledger's own decisions, an ops override (and its end),
#: and `service` for the entries 0.1 recorded from the tiers service's tier.changed.
AUTOMATIC_CAUSES = frozenset(
    {"entry", "upgrade", "downgrade", "kept", "override_ended", "retracted", "reviewed"}
)
OVERRIDE = "override"


def _int(entry: LedgerEntry, key: str) -> int:
    value = entry.details.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _time(entry: LedgerEntry, key: str) -> datetime | None:
    value = entry.details.get(key)
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _text(entry: LedgerEntry, key: str) -> str | None:
    value = entry.details.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class TierEntry:
    """What a tier_assigned entry recorded (entries written before 0.2 lack the cause and
    the dates: they are read the way the ledger upcasts its own events)."""

    tier: str | None
    previous: str | None
    cause: str
    reason: str
    until: datetime | None
    period_end: datetime | None
    held_until: datetime | None
    override_until: datetime | None
    locked: bool


def tier_entry(entry: LedgerEntry) -> TierEntry | None:
    """The tier change a ledger entry records; None for any other entry."""
    if entry.entry_type != TIER_ASSIGNED:
        return None
    until = _time(entry, "until")
    cause = _text(entry, "cause")
    if cause is None:  # published before 0.2
        cause = "service" if entry.provenance.event_type == TIER_CHANGED else OVERRIDE
        period_end, held_until = until, until
        override_until = until if cause == OVERRIDE else None
    else:
        period_end, held_until = _time(entry, "period_end"), _time(entry, "held_until")
        override_until = _time(entry, "override_until")
    return TierEntry(
        tier=_text(entry, "tier"),
        previous=_text(entry, "previous"),
        cause=cause,
        reason=_text(entry, "reason") or "",
        until=until,
        period_end=period_end,
        held_until=held_until,
        override_until=override_until,
        locked=bool(entry.details.get("locked")),
    )


def fact_from_entry(entry: LedgerEntry) -> Fact | None:
    """The policy's view of one entry; None for an entry without a ledger position.

    Only an ops override (cause ``override``) is an override fact: the ledger's own tier
    decisions are what the policy gives from the other facts, so they count as nothing.
    """
    if entry.position is None:
        return None
    pos, member, at = entry.position, entry.member_id, entry.effective_at
    if entry.entry_type == "points_earned":
        return Fact(
            pos,
            member,
            at,
            kind="earn",
            points=_int(entry, "points"),
            spend_minor=_int(entry, "order_total_minor"),
        )
    if entry.entry_type == "points_reversed":
        return Fact(
            pos,
            member,
            at,
            kind="reverse",
            # Everything the refund reversed: taken back, forgiven or already expired.
            points=_int(entry, "points") + _int(entry, "forgiven") + _int(entry, "already_expired"),
            spend_minor=_int(entry, "order_refunded_minor"),
            order_id=_text(entry, "order_id"),
        )
    recorded = tier_entry(entry)
    if recorded is not None and recorded.cause == OVERRIDE:
        return Fact(
            pos,
            member,
            at,
            kind="override",
            tier=recorded.tier,
            until=recorded.override_until,
            locked=recorded.locked,
        )
    return Fact(pos, member, at)


def follow(
    program: Program, state: TierState, entry: LedgerEntry, *, keep_all: bool = False
) -> TierState:
    """The member's tier state after one ledger entry, as the ledger recorded it.

    A tier_assigned entry sets the tier and its dates; an earn, a top-up or a refund counts
    its qualifying activity (an earn that qualified again for the tier held moves its dates
    on, as the entry says); an entry at or before the last position applied changes nothing.
    Activity no window can count any more is dropped unless `keep_all`.
    """
    position = entry.position
    if position is None or position <= state.last_position:
        return state
    at = entry.effective_at
    now = at if state.stream_time is None else max(state.stream_time, at)
    recorded = tier_entry(entry)
    if recorded is not None:
        state = replace(
            state,
            tier=recorded.tier,
            period_end=recorded.period_end,
            held_until=recorded.held_until,
            override_until=recorded.override_until,
            locked=recorded.locked,
        )
    elif entry.entry_type == TOPPED_UP and program.tier_qualification.basis == "points":
        # A purchase's points raised once a late event put it in a higher tier: they
        # qualify as of the purchase (its spend counted when it was earned).
        taken = [
            (datetime.fromisoformat(when), int(points))
            for when, points in (
                part.split(" ") for part in (_text(entry, "taken_back") or "").split(";") if part
            )
        ]
        points = _int(entry, "points") + sum(n for _, n in taken)
        topped = Fact(position, entry.member_id, at, kind="earn", points=points)
        state = record(program, state, topped)
        for when, n in taken:  # the order's refunds take their share back, each at its time
            state = record(
                program, state, Fact(position, entry.member_id, when, kind="reverse", points=n)
            )
    elif entry.entry_type in ("points_earned", "points_reversed"):
        fact = fact_from_entry(entry)
        assert fact is not None
        state = record(program, state, fact)
        held_until = _time(entry, "tier_held_until")
        if held_until is not None:  # qualified again for the tier held: held longer
            state = replace(
                state, period_end=_time(entry, "tier_period_end"), held_until=held_until
            )
    if not keep_all and program.tiers:
        state = replace(state, contributions=prune(program, state, now))
    return replace(state, last_position=position, stream_time=now)
