"""The tier policy: a pure function from a member's ledger facts to tier decisions.

No framework and no wall clock: time comes from the facts (their effective instant) and from
the `now` a caller passes to `advance` (the ledger's scheduler, a test). The ledger decides
with it inline (MemberAccount); `recompute` replays facts from zero (tests, what a history
would give).

Rules (the program file's ``tier_qualification``):
- qualifying activity is points earned (refunds take back what they reversed, expiry and
  redemptions take nothing) or spend in minor units (refunds take back their amount);
- the window is rolling N months or the calendar year (program time zone);
- an upgrade happens as soon as the window's value reaches a higher tier's threshold; the
  tier is then held until the end of the qualification period plus ``grace_days``;
- reaching the held tier's threshold again in a later period moves that date on;
- at the end of the period plus grace the period's value is reviewed: kept if it still meets
  the tier's threshold, else down to the tier it qualifies for (or one level at a time);
- an ops override (a ``tier_assigned`` ledger entry with cause ``override``) sets the tier; when
  locked, automatic changes wait until the override ends (or forever without an end date);
  when not locked, upgrades may replace it and the review happens at its end date.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from services.ledger.domain import tier_periods as periods
from services.ledger.domain.program import Program, Tier

FactKind = Literal["earn", "reverse", "override", "other"]
Reason = Literal["upgrade", "downgrade", "override_ended"]


@dataclass(frozen=True, slots=True)
class Fact:
    """What the policy needs of one ledger entry."""

    position: int
    member_id: str
    at: datetime
    kind: FactKind = "other"
    points: int = 0  # earn: points earned; reverse: points the refund reversed
    spend_minor: int = 0  # earn: the order's total; reverse: the order's refunds so far
    order_id: str | None = None
    tier: str | None = None  # override: the tier set by ops
    until: datetime | None = None  # override: when it ends (None: no end)
    locked: bool = False  # override: automatic changes wait until it ends


@dataclass(frozen=True, slots=True)
class Contribution:
    at: datetime
    value: int  # negative for a refund


@dataclass(frozen=True, slots=True)
class TierState:
    """One member's qualifying activity and tier, and the last ledger position applied."""

    member_id: str
    tier: str | None = None
    period_end: datetime | None = None  # end of the period the tier is held for
    held_until: datetime | None = None  # period end + grace (or the override's end)
    override_until: datetime | None = None
    locked: bool = False
    contributions: tuple[Contribution, ...] = ()
    refunded: tuple[tuple[str, int], ...] = ()  # spend basis: order -> refunded so far
    last_position: int = 0
    stream_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class TierDecision:
    """A tier change the policy decides (the ledger records it as a tier_assigned entry)."""

    member_id: str
    from_tier: str | None
    to_tier: str
    reason: Reason
    qualifying_value: int
    threshold: int
    effective_from: datetime
    valid_until: datetime | None
    caused_by_position: int | None
    detail: str

    @property
    def event_id(self) -> str:
        """Deterministic: the same decision always gets the same id (the ledger's receipt)."""
        cause = (
            f"p{self.caused_by_position}"
            if self.caused_by_position is not None
            else "t" + self.effective_from.strftime("%Y%m%dT%H%M%SZ")
        )
        return f"tier:{self.member_id}:{self.to_tier}:{cause}"


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a member stands: for balance responses."""

    tier: str | None
    held_until: datetime | None
    qualifying_value: int
    next_tier: str | None
    next_threshold: int | None
    period_end: datetime


Step = tuple[TierState, list[TierDecision]]


def _index(program: Program, tier_id: str | None) -> int:
    for i, tier in enumerate(program.tiers):
        if tier.id == tier_id:
            return i
    return -1


def _qualified(program: Program, value: int) -> Tier:
    best = program.tiers[0]
    for tier in program.tiers:
        if value >= tier.threshold:
            best = tier
    return best


def _threshold(program: Program, tier_id: str | None) -> int:
    tier = program.tier(tier_id)
    return tier.threshold if tier is not None else 0


def _grace(program: Program) -> timedelta:
    return timedelta(days=program.tier_qualification.grace_days)


def window_value(program: Program, state: TierState, at: datetime) -> int:
    """Qualifying value counted at instant `at` (never below zero)."""
    q, zone = program.tier_qualification, program.zone
    start = periods.window_start(q, zone, at)  # once, not per contribution
    if q.rolling_months is None:
        total = sum(c.value for c in state.contributions if start <= c.at <= at)
    else:
        total = sum(c.value for c in state.contributions if start < c.at <= at)
    return max(0, total)


def period_value(program: Program, state: TierState, end: datetime) -> int:
    """Qualifying value of the period that ends at `end` (exclusive)."""
    q = program.tier_qualification
    start = periods.period_start(q, program.zone, end)
    rolling = q.rolling_months is not None  # a rolling window's start is exclusive
    return max(
        0,
        sum(
            c.value
            for c in state.contributions
            if (start < c.at if rolling else start <= c.at) and c.at < end
        ),
    )


def _hold(
    program: Program, tier_id: str | None, end: datetime
) -> tuple[datetime | None, datetime | None]:
    """(period end, held until) for a tier held for the period ending at `end`."""
    if _index(program, tier_id) <= 0:
        return (None, None)  # the entry tier (or none) is never reviewed
    return (end, end + _grace(program))


def _lock_active(state: TierState, now: datetime) -> bool:
    return state.locked and (state.override_until is None or now < state.override_until)


def advance(program: Program, state: TierState, now: datetime) -> Step:
    """Apply the reviews and override ends due at or before `now`; idempotent for `now`."""
    if not program.tiers:
        return state, []
    q, zone = program.tier_qualification, program.zone
    decisions: list[TierDecision] = []
    while True:
        if state.locked and state.override_until is not None and state.override_until <= now:
            end = state.override_until
            value = window_value(program, state, end)
            tier = _qualified(program, value)
            period_end, held = _hold(program, tier.id, periods.period_end(q, zone, end))
            if tier.id != state.tier:
                decisions.append(
                    TierDecision(
                        state.member_id,
                        state.tier,
                        tier.id,
                        "override_ended",
                        value,
                        tier.threshold,
                        end,
                        held,
                        None,
                        f"override ended; window value {value} qualifies for {tier.id}",
                    )
                )
            state = replace(
                state,
                tier=tier.id,
                period_end=period_end,
                held_until=held,
                override_until=None,
                locked=False,
            )
            continue
        if _lock_active(state, now):
            return state, decisions
        if state.held_until is None or state.period_end is None or state.held_until > now:
            return state, decisions
        review, end = state.held_until, state.period_end
        value = period_value(program, state, end)
        qualified = _qualified(program, value)
        current = _index(program, state.tier)
        following = periods.next_period_end(q, zone, end)
        if _index(program, qualified.id) >= current:
            period_end, held = _hold(program, state.tier, following)
            state = replace(
                state, period_end=period_end, held_until=held, override_until=None, locked=False
            )
            continue
        to = program.tiers[current - 1] if q.downgrade == "one_level" else qualified
        period_end, held = _hold(program, to.id, following)
        decisions.append(
            TierDecision(
                state.member_id,
                state.tier,
                to.id,
                "downgrade",
                value,
                to.threshold,
                review,
                held,
                None,
                f"period ending {end.date().isoformat()}: {value} is below "
                f"{_threshold(program, state.tier)} for {state.tier}",
            )
        )
        state = replace(
            state,
            tier=to.id,
            period_end=period_end,
            held_until=held,
            override_until=None,
            locked=False,
        )


def apply(program: Program, state: TierState, fact: Fact) -> Step:
    """Apply one ledger fact (a repeat of an applied position changes nothing)."""
    if fact.position <= state.last_position or not program.tiers:
        return state, []
    now = fact.at if state.stream_time is None else max(state.stream_time, fact.at)
    state, decisions = advance(program, state, now)
    if state.tier is None and not state.locked and fact.kind != "override":
        # A member's first entry places them in the entry tier before it counts, so the
        # first earn already earns at the entry tier (as the ledger records it).
        entry = program.tiers[0]
        decisions.append(
            TierDecision(
                state.member_id,
                None,
                entry.id,
                "upgrade",
                0,
                entry.threshold,
                now,
                None,
                fact.position,
                "entry tier",
            )
        )
        state = replace(state, tier=entry.id)
    state = record(program, state, fact)
    if fact.kind == "override":
        state = _override(program, state, fact, now)
    elif fact.kind == "earn" or state.tier is None:
        # Only qualifying activity upgrades or holds a tier longer (and a member's first
        # entry places them in the entry tier). A release, an expiry, a redemption or a tier
        # entry must not: the scheduler records those late, with an earlier effective time,
        # and evaluating the window then would keep a tier the member no longer earns.
        state, upgraded = upgrade(program, state, now, fact.position)
        decisions += upgraded
    state = replace(
        state,
        contributions=prune(program, state, now),
        last_position=fact.position,
        stream_time=now,
    )
    return state, decisions


def record(program: Program, state: TierState, fact: Fact) -> TierState:
    """Count one fact's qualifying activity (an earn adds, a refund takes back)."""
    spend = program.tier_qualification.basis == "spend"
    if fact.kind == "earn":
        value = fact.spend_minor if spend else fact.points
    elif fact.kind == "reverse" and spend and fact.order_id is not None:
        refunded = dict(state.refunded)
        value = -(fact.spend_minor - refunded.get(fact.order_id, 0))
        refunded[fact.order_id] = fact.spend_minor
        state = replace(state, refunded=tuple(sorted(refunded.items())))
    elif fact.kind == "reverse" and not spend:
        value = -fact.points
    else:
        return state
    if value == 0:
        return state
    return replace(state, contributions=(*state.contributions, Contribution(fact.at, value)))


def _override(program: Program, state: TierState, fact: Fact, now: datetime) -> TierState:
    return override(program, state, fact.tier, fact.until, fact.locked, now)


def override(
    program: Program,
    state: TierState,
    tier: str | None,
    until: datetime | None,
    locked: bool,
    now: datetime,
) -> TierState:
    """An ops override at `now`: held until `until`, or for the period it falls in."""
    q, zone = program.tier_qualification, program.zone
    period_end: datetime | None
    held: datetime | None
    if until is not None:
        period_end, held = until, until
    else:
        period_end, held = _hold(program, tier, periods.period_end(q, zone, now))
    return replace(
        state,
        tier=tier,
        period_end=period_end,
        held_until=held,
        override_until=until,
        locked=locked,
    )


def upgrade(program: Program, state: TierState, now: datetime, position: int | None) -> Step:
    """After qualifying activity at `now`: up to the tier the window reaches, or the tier
    held kept for a later period when the window qualifies for it again."""
    if _lock_active(state, now):
        return state, []
    q, zone = program.tier_qualification, program.zone
    value = window_value(program, state, now)
    qualified = _qualified(program, value)
    current = _index(program, state.tier)
    index = _index(program, qualified.id)
    end = periods.period_end(q, zone, now)
    if index > current:
        period_end, held = _hold(program, qualified.id, end)
        what = "points earned" if q.basis == "points" else "spend"
        decision = TierDecision(
            state.member_id,
            state.tier,
            qualified.id,
            "upgrade",
            value,
            qualified.threshold,
            now,
            held,
            position,
            f"{what} in the window: {value} >= {qualified.threshold}"
            if qualified.threshold
            else "entry tier",
        )
        state = replace(
            state,
            tier=qualified.id,
            period_end=period_end,
            held_until=held,
            override_until=None,
            locked=False,
        )
        return state, [decision]
    if index == current and state.period_end is not None and end > state.period_end:
        period_end, held = _hold(program, state.tier, end)  # qualified again: held longer
        if held is not None and (state.held_until is None or held > state.held_until):
            state = replace(state, period_end=period_end, held_until=held)
    return state, []


def prune(program: Program, state: TierState, now: datetime) -> tuple[Contribution, ...]:
    """Drop activity no window can count any more (the oldest start still needed)."""
    q, zone = program.tier_qualification, program.zone
    starts = [periods.window_start(q, zone, now)]
    if state.period_end is not None:
        starts.append(periods.period_start(q, zone, state.period_end))
    if state.override_until is not None:
        starts.append(periods.window_start(q, zone, state.override_until))
    oldest = min(starts)
    return tuple(c for c in state.contributions if c.at >= oldest)


def progress(program: Program, state: TierState, now: datetime) -> Progress:
    """Qualifying value now, the next tier and its threshold, and the dates that matter."""
    q, zone = program.tier_qualification, program.zone
    value = window_value(program, state, now)
    current = _index(program, state.tier)
    following = program.tiers[current + 1] if current + 1 < len(program.tiers) else None
    if q.rolling_months is None:
        end = periods.period_end(q, zone, now)
    else:
        end = state.period_end or periods.period_end(q, zone, now)
    return Progress(
        tier=state.tier,
        held_until=state.held_until,
        qualifying_value=value,
        next_tier=following.id if following else None,
        next_threshold=following.threshold if following else None,
        period_end=end,
    )


def recompute(
    program: Program, member_id: str, facts: Iterable[Fact], now: datetime | None = None
) -> Step:
    """A member's tier from zero: every fact in ledger order, then the reviews due at `now`."""
    state = TierState(member_id)
    decisions: list[TierDecision] = []
    for fact in sorted(facts, key=lambda f: f.position):
        state, made = apply(program, state, fact)
        decisions += made
    if now is not None:
        state, made = advance(program, state, now)
        decisions += made
    return state, decisions
