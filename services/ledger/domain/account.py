"""The member account: the consistency boundary of the ledger.

Every change is an entry (a domain event) that carries its balanced postings, the lots it
touched and their state afterwards, the balance after it, and its provenance. Commands work
out every number first and only then trigger the entry, so a refused command changes nothing
and replaying the entries never recomputes a rule.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from services.ledger.domain import postings as acc
from services.ledger.domain import tier_policy
from services.ledger.domain.errors import Declined, InvariantViolation
from services.ledger.domain.holds import (
    CAPTURED,
    EXPIRED,
    VOIDED,
    HoldRecord,
    hold_id,
    split_capture,
)
from services.ledger.domain.lots import (
    AVAILABLE,
    PENDING,
    Lot,
    LotMove,
    allocate,
    merge_moves,
    next_due,
    spend_order_key,
    spendable_total,
)
from services.ledger.domain.postings import Posting, apply_postings, check_balanced, transfer
from services.ledger.domain.program import Program, ReturnPolicy
from services.ledger.domain.provenance import Origin, Provenance
from services.ledger.domain.rules import (
    EarnQuote,
    Line,
    LinePoints,
    activity_period,
    cap_quote,
    expiry_for,
    local_date,
    pro_rata,
    quote_purchase,
    release_for,
)
from services.ledger.domain.spends import (
    GiveBack,
    Spend,
    Taken,
    expired_again,
    expired_more,
    funded_with_back,
    in_order,
    redeem_again,
    restored,
    spendable_at,
    take,
    take_given_back,
)

LEDGER_NAMESPACE = uuid5(NAMESPACE_URL, "https://loyalty-ledger.invalid/member")
SCHEDULER = Origin(channel="scheduler")
DAILY_WINDOW_DAYS = 400  # purchase points per day are kept this long, for late orders
# Qualifying activity older than this can count in no tier window or review (windows are at
# most 36 months, grace at most 365 days, plus an override's own window).
QUALIFYING_HORIZON = timedelta(days=6 * 366)


_MAX_SEQ = 2**62
# Tier entries recorded by a period-end review, or by deciding one again (`reviewed`).
_REVIEWS = frozenset({"kept", "downgrade", "override_ended", "reviewed"})
# Where 0.1's tiers service decided, reviews are not decided again.
_NOT_REVIEWED_AGAIN = frozenset({"service"})


@dataclass(frozen=True, slots=True)
class TierChange:
    """One tier change in the account's history: effective instant, entry seq, tier."""

    at: datetime
    seq: int
    tier: str | None
    cause: str = ""
    rank: int = -1  # the tier's place in the program (0 lowest); -1: not known (before 0.2)
    period_end: datetime | None = None  # what the change held the tier for (see TierState)
    held_until: datetime | None = None
    retracts: int = 0  # a retraction: the seq of the upgrade it retracts
    override_until: datetime | None = None  # an ops override's end (snapshot version 3)
    locked: bool = False  # an ops override's lock (snapshot version 3)


def _change_key(change: TierChange) -> tuple[datetime, int]:
    return change.at, change.seq


def _effective(changes: list[TierChange]) -> list[TierChange]:
    """The changes that decided a tier, in effective order. An entry tier recorded after an
    earlier-dated change (which arrived later) only said "had none yet", and decides
    nothing; an upgrade recorded before an earlier-dated upgrade arrived that reaches the
    same tier or a higher one is superseded by it (it was decided without that earn), and
    so is the retraction of an upgrade that no longer decides anything."""
    kept: list[TierChange] = []
    seqs: set[int] = set()
    running = -1
    for i, change in enumerate(changes):
        if i and change.cause == "entry":
            continue
        if change.cause == "upgrade" and 0 <= change.rank <= running:
            continue
        if change.cause == "retracted" and change.retracts not in seqs:
            continue  # the upgrade it retracted was superseded already
        kept.append(change)
        seqs.add(change.seq)
        running = change.rank
    return kept


def _rank(program: Program, tier: str | None) -> int:
    ids = [t.id for t in program.tiers]
    return ids.index(tier) if tier in ids else -1


class SnapshotTooOld(Exception):
    """A snapshot written before the account kept its tier state: replay the events instead."""


@dataclass(frozen=True, slots=True)
class Qualifying:
    """One earn's or refund's qualifying activity: points and spend (negative for a refund)."""

    at: datetime
    points: int
    spend_minor: int


_JUST_BEFORE = timedelta(microseconds=1)


@lru_cache(maxsize=65536)
def account_id(member_id: str) -> UUID:
    """The member account's id is derived from the member id, so it never needs a lookup
    (kept for the members seen lately: it is asked for several times per event)."""
    return uuid5(LEDGER_NAMESPACE, f"member:{member_id}")


@dataclass(frozen=True, slots=True)
class Balances:
    available: int
    pending: int
    held: int


@dataclass(frozen=True, slots=True)
class RefundStep:
    """One refund of an order: when, and what the order's refunds total after it."""

    at: datetime
    refunded_minor: int
    quantities: tuple[tuple[str, int], ...]
    # Since 0.3: what it took from available lots, so it can take again in event-time order
    # when a redemption dated before it arrives late (None: recorded before, kept as is).
    refund_id: str = ""
    taken_from: tuple[LotMove, ...] | None = None
    wanted: int = 0  # the points it takes from available lots when they are there
    owes: bool = False  # what is not there is owed (the unlimited return policy)
    # Since 0.4: what it counted as already expired from its order's lot (not taken), so
    # a spend read after it that in event time emptied the lot before its expiry has it
    # take those points from available lots instead (0: recorded before, kept as is).
    expired: int = 0


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """What an order earned, and how much of it refunds have taken back so far."""

    order_id: str
    lot_id: str | None
    currency: str
    total_minor: int
    points: int
    lines: tuple[LinePoints, ...]
    refunded_minor: int = 0
    refunded_quantities: tuple[tuple[str, int], ...] = ()
    reversed_points: int = 0
    refund_ids: tuple[str, ...] = ()
    expired_credited: int = 0  # reversed points that had already expired from the order's lot
    # Since 0.2: what the quote was made of, so a tier reached late can be applied to it.
    basis: tuple[Line, ...] = ()
    source: str | None = None
    earned_at: datetime | None = None
    tier: str | None = None
    day: str = ""
    seq: int = 0  # the earn entry's seq: a tier change it caused comes after it
    refunds: tuple[RefundStep, ...] = ()  # since 0.2, one per refund id, in order


def reversal_target(
    points: int, lines: tuple[LinePoints, ...], total_minor: int, step: RefundStep | None
) -> int:
    """What an order's refunds take back in all, after `step`, of `points` earned."""
    if step is None:
        return 0
    quantities = dict(step.quantities)
    target = pro_rata(points, step.refunded_minor, total_minor)
    target += sum(pro_rata(lp.points, quantities.get(lp.sku, 0), lp.quantity) for lp in lines)
    return min(target, points)


@dataclass(frozen=True, slots=True)
class Respent:
    """The spends recorded after a late one, taken again in event-time order (see
    domain/spends.py): their records as they stand after, and the points put back into
    lots from expiry (they expire again at once where their expiry has passed)."""

    redemptions: tuple[RedemptionRecord, ...]
    orders: tuple[OrderRecord, ...]
    unexpired: tuple[LotMove, ...]

    @staticmethod
    def of(
        redemptions: Iterable[RedemptionRecord],
        orders: Mapping[str, OrderRecord],
        unexpired: Mapping[str, int],
    ) -> Respent:
        """From a re-take's results (`_taken_again`) and the points put back from expiry."""
        return Respent(
            tuple(redemptions),
            tuple(orders.values()),
            tuple(LotMove(k, v) for k, v in unexpired.items()),
        )


@dataclass(frozen=True, slots=True)
class RedemptionRecord:
    redemption_id: str
    points: int
    reward_id: str | None
    moves: tuple[LotMove, ...]
    status: str  # redeemed | cancelled | withdrawn (waits for points again)
    at: datetime | None = None  # when it was redeemed (None: recorded before 0.2)
    # Since 0.3: the event it came from and its own time (it may have been funded later).
    event_id: str | None = None
    dated: datetime | None = None
    cancelled_at: datetime | None = None  # set when it is cancelled (state, not an event)
    # Since 0.4: what the points its cancellation gave back settled of a balance below zero,
    # by lot (None: not known, cancelled before this was kept, or not cancelled).
    settled: tuple[LotMove, ...] | None = None


class MemberAccount(Aggregate):
    """One member's points: lots, sub-account balances, and what was already applied."""

    # Snapshot state version 2 (0.2): the tier state and the scheduler's time are kept.
    # Version 3: each tier change keeps an ops override's end and lock.
    # Version 4: a cancelled redemption keeps when it was cancelled (`cancelled_at`).
    # Version 5: `last_spend_at` counts the instants redemptions were funded anew by a
    # re-take (`_apply_respent`), so a late cancellation before none of them is skipped.
    class_version = 5

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A version 1 snapshot lacks the qualifying activity: rebuild from the events."""
        raise SnapshotTooOld(str(state.get("member_id")))

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """A version 2 snapshot's tier changes lack an override's end and lock: one with an
        ops override is rebuilt from the events (the others need neither)."""
        for change in state.get("tier_changes", ()):
            cause = change.get("cause") if isinstance(change, dict) else change.cause
            if cause == "override":
                raise SnapshotTooOld(str(state.get("member_id")))

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        """A version 3 snapshot's cancelled redemptions lack `cancelled_at` (spends taken
        again in event time need it): one with a cancelled redemption is rebuilt from the
        events, which give it (the others load as they are)."""
        for record in dict(state.get("redemptions") or {}).values():
            status = record.get("status") if isinstance(record, dict) else record.status
            if status == "cancelled":
                raise SnapshotTooOld(str(state.get("member_id")))

    @staticmethod
    def upcast_v4_v5(state: dict[str, Any]) -> None:
        """`last_spend_at` is at least every redemption's funding instant."""
        latest = state.get("last_spend_at")
        for record in dict(state.get("redemptions") or {}).values():
            at = record.get("at") if isinstance(record, dict) else record.at
            if isinstance(at, datetime) and (latest is None or at > latest):
                latest = at
        state["last_spend_at"] = latest

    class Enrolled(Aggregate.Created):
        member_id: str
        effective_at: datetime
        provenance: Provenance
        auto: bool

    class Entry(Aggregate.Event):
        """Common shape of every ledger entry after enrolment."""

        member_id: str
        effective_at: datetime
        postings: tuple[Posting, ...]
        moves: tuple[LotMove, ...]
        lots_after: tuple[Lot, ...]
        balance_after: Balances
        provenance: Provenance
        note: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, MemberAccount)
            aggregate._apply_entry(self)
            self.apply_specific(aggregate)

        def apply_specific(self, account: MemberAccount) -> None:
            """Entry-type state beyond lots and balances."""

    class PointsEarned(Entry):
        points: int
        kind: str  # purchase | activity | referral
        reference: str
        order: OrderRecord | None
        counters: tuple[str, ...]  # activity limit keys this earn counts against
        day: str
        # Version 2: the tier held longer because this earn qualified again (else None).
        tier_period_end: datetime | None
        tier_held_until: datetime | None
        # Version 3: points of its lot that expired at once (the first lot of `lots_after`):
        # read late, after its expiry, with the balance below zero since after that expiry,
        # they settled nothing in event time (0 for entries written before).
        expired: int

        class_version = 3

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["tier_period_end"] = None
            state["tier_held_until"] = None

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["expired"] = 0

        def apply_specific(self, account: MemberAccount) -> None:
            if self.expired:
                lot_id = self.lots_after[0].lot_id
                account.expired_by_lot[lot_id] = (
                    account.expired_by_lot.get(lot_id, 0) + self.expired
                )
            spend = self.order.total_minor if self.order is not None else 0
            account._qualify(Qualifying(self.effective_at, self.points, spend))
            if self.tier_held_until is not None:
                account.tier_period_end = self.tier_period_end
                account.tier_held_until = self.tier_held_until
            if self.order is not None:
                account.orders[self.order.order_id] = self.order
            for key in self.counters:
                account.activity_counts[key] = account.activity_counts.get(key, 0) + 1
            if self.kind == "purchase":
                account.daily_points[self.day] = account.daily_points.get(self.day, 0) + (
                    self.points
                )
                last = account.last_order_by_day.get(self.day)
                if last is None or self.effective_at > last:
                    account.last_order_by_day[self.day] = self.effective_at
                account._prune_daily(self.day)
            if self.kind == "referral" and self.reference.startswith("referred-by:"):
                account.referred_by = self.reference.removeprefix("referred-by:")
                account.referral_claim = (self.effective_at, self.provenance.event_id or "")
            if self.kind == "referral" and self.reference.startswith("referee:"):
                referee = self.reference.removeprefix("referee:")
                account.referees[referee] = self.provenance.event_id or ""
            account.lifetime_earned += self.points

    class EnrolmentCompleted(Entry):
        """An explicit enrolment of a member auto-enrolled by an earlier-arriving event."""

        def apply_specific(self, account: MemberAccount) -> None:
            account.auto_enrolled = False

    class EnrolmentUndone(Entry):
        """The automatic enrolment of a member whose only activity was the referral an
        earlier one displaced (both its bonuses taken back): in time order that referral
        was declined and enrolled nobody, so the member is no member again (no balance,
        not counted) until their next entry, as if that had been their first event."""

        undone: str  # the event id of the referral that enrolled the member

        def apply_specific(self, account: MemberAccount) -> None:
            account.__dict__["_no_member"] = True
            # As new: the next entry records the entry tier at its own time.
            account.tier_changes = []
            account.tier = account.tier_until = None
            account.tier_period_end = account.tier_held_until = None
            account.tier_override_until = None
            account.tier_locked = False

    class ReferralReversed(Entry):
        """A referral bonus taken back: an earlier referral won, of the same referee or
        between the same two members the other way round (circular).

        Version 2: either side's bonus (`role`: the referrer's, or the referee's welcome
        bonus), and `earned_at`, the instant the bonus was earned, where its qualifying
        activity is taken back (None for entries written before: nothing taken back)."""

        referee: str  # the referee of the referral undone
        points: int  # taken back
        # Not taken: already expired (since version 2; before, already spent: the balance
        # never went below zero). Spent points are taken all the same (owed if need be).
        forgiven: int
        winner: str  # the referrer of the earlier referral
        role: str  # referrer | referee: whose bonus this is
        earned_at: datetime | None
        undone: str | None  # the event id of the referral undone
        # Version 3: the spends dated after the bonus, taken again without it (None: what
        # was spent from it was taken from what is available, as before).
        respent: Respent | None

        class_version = 3

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["role"] = "referrer"
            state["earned_at"] = None
            state["undone"] = None

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["respent"] = None

        def apply_specific(self, account: MemberAccount) -> None:
            if self.respent is not None:
                account._apply_respent(self.respent)
            # The link goes only if it is still the undone referral's (the winner's bonus
            # may be recorded first, between the same two members or of the same referee).
            if self.role == "referee":
                claim = account.referral_claim
                if self.undone is None or (claim is not None and claim[1] == self.undone):
                    account.referred_by = None
                    account.referral_claim = None
            elif self.undone is None or account.referees.get(self.referee) == self.undone:
                account.referees.pop(self.referee, None)
            account.lifetime_earned -= self.points + self.forgiven
            if self.earned_at is not None:
                # As if never given: its qualifying activity goes (a tier walk then finds no
                # earn at its instant to renew a tier with); a negative one where it is not
                # found as given.
                given = Qualifying(self.earned_at, self.points + self.forgiven, 0)
                if given in account.qualifying:
                    account.qualifying.remove(given)
                else:
                    account._qualify(Qualifying(self.earned_at, -(self.points + self.forgiven), 0))
                if self.forgiven:
                    account._forget_expired(self.role, self.referee, self.earned_at, self.forgiven)

    class ReferralReassigned(Entry):
        """The referee's link moved to the referrer of an earlier referral (no points)."""

        referrer: str
        previous: str

        def apply_specific(self, account: MemberAccount) -> None:
            account.referred_by = self.referrer
            account.referral_claim = (self.effective_at, self.provenance.event_id or "")

    class PointsToppedUp(Entry):
        """A purchase recorded at a lower tier than it had once an earlier-dated event
        (that arrived late) was counted: the difference, on the purchase's own lot."""

        order: OrderRecord
        points: int  # onto the balance: the difference less what the refunds take back
        lot_id: str
        # The order's refunds recorded already take their share of the difference back at
        # once, each as of its own time (since 0.2; none for entries written before).
        taken_back: tuple[tuple[datetime, int], ...] = ()
        # Version 2: a purchase earning less than recorded whose lot spends dated after it
        # had used: those spends taken again in event-time order (None: none were).
        respent: Respent | None = None

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["respent"] = None

        def apply_specific(self, account: MemberAccount) -> None:
            if self.respent is not None:
                account._apply_respent(self.respent)
            account.orders[self.order.order_id] = self.order
            taken = sum(points for _, points in self.taken_back)
            account.daily_points[self.order.day] = (
                account.daily_points.get(self.order.day, 0) + self.points + taken
            )
            account.lifetime_earned += self.points
            if self.order.earned_at is not None:
                spend = 0  # the order's spend counted when it was earned
                account._qualify(Qualifying(self.order.earned_at, self.points + taken, spend))
                for at, points in self.taken_back:
                    account._qualify(Qualifying(at, -points, 0))

    class LotsReallocated(Entry):
        """An earn dated before redemptions already recorded (it arrived late, on another
        topic): the redemptions take from its lot what soonest-expiring-first would have
        taken had it been there, and give back to the later-expiring lots; a refund that
        was short of points takes them (version 2, `respent`: the points it takes go back
        to the issuer). The lots end as if the events had arrived in time order."""

        lot_id: str
        redemptions: tuple[RedemptionRecord, ...]  # as they stand after
        # Version 2: every spend dated after the earn took again in event-time order
        # (`_spends_take_again`; `redemptions` is then empty: the records are here).
        respent: Respent | None

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["respent"] = None

        def apply_specific(self, account: MemberAccount) -> None:
            for record in self.redemptions:
                account.redemptions[record.redemption_id] = record
            if self.respent is not None:
                account._apply_respent(self.respent)

    class PendingReleased(Entry):
        lot_id: str
        points: int

    class PointsRedeemed(Entry):
        redemption: RedemptionRecord
        respent: Respent | None = None  # since 0.3: later spends taken again

        def apply_specific(self, account: MemberAccount) -> None:
            account.redemptions[self.redemption.redemption_id] = self.redemption
            spent_at = self.redemption.at or self.effective_at
            account._spent(spent_at)
            if self.respent is not None:
                account._apply_respent(self.respent)
                return
            # A late redemption may spend points that expired after its own time: what the
            # redemption took beyond its lot moves came back from breakage.
            moved = {m.lot_id: m.amount for m in self.moves}
            for m in self.redemption.moves:
                unexpired = moved.get(m.lot_id, 0) - m.amount
                if unexpired:
                    account.expired_by_lot[m.lot_id] -= unexpired

    class RedemptionCancelled(Entry):
        redemption_id: str
        points: int
        reason: str | None
        respent: Respent | None = None  # since 0.3: later spends taken again
        # What its points settled of a balance below zero, by lot (None: written before).
        settled: tuple[LotMove, ...] | None = None

        def apply_specific(self, account: MemberAccount) -> None:
            if self.respent is not None:
                account._apply_respent(self.respent)
            record = account.redemptions[self.redemption_id]
            account.redemptions[self.redemption_id] = replace(
                record,
                status="cancelled",
                cancelled_at=self.effective_at,
                # A tuple also as decoded from storage (JSON gives a list).
                settled=None if self.settled is None else tuple(self.settled),
            )
            # Its points were held until now: a spend dated before, read late, finds the
            # redemption in the spends to take again (_later_spends, _cancelled_since).
            account._spent(self.effective_at)

    class PointsReversed(Entry):
        order_id: str
        refund_id: str
        points: int  # taken back
        forgiven: int  # not taken back because the return policy does not allow it
        already_expired: int  # the order's own points that had expired: nothing to take
        order: OrderRecord
        respent: Respent | None = None  # since 0.3: later spends taken again

        def apply_specific(self, account: MemberAccount) -> None:
            if self.respent is not None:
                account._apply_respent(self.respent)
            last = self.order.refunds[-1] if self.order.refunds else None
            if last is not None and (last.taken_from or last.wanted or last.expired):
                # A spend, also when nothing was there to take: an earn or a cancellation
                # dated before it, read late, gives it points to take (_later_spends).
                account._spent(self.effective_at)
            before = account.orders.get(self.order_id)
            refunded_before = before.refunded_minor if before is not None else 0
            reversed_points = self.points + self.forgiven + self.already_expired
            account._qualify(
                Qualifying(
                    self.effective_at,
                    -reversed_points,
                    -(self.order.refunded_minor - refunded_before),
                )
            )
            account.orders[self.order_id] = self.order
            account.lifetime_earned -= reversed_points

    class PointsExpired(Entry):
        lot_id: str
        points: int

        def apply_specific(self, account: MemberAccount) -> None:
            account.expired_by_lot[self.lot_id] = (
                account.expired_by_lot.get(self.lot_id, 0) + self.points
            )

    class PointsAdjusted(Entry):
        points: int
        reason: str
        actor: str

        def apply_specific(self, account: MemberAccount) -> None:
            request_id = self.provenance.origin.request_id
            if request_id:
                account.adjustment_requests[request_id] = (
                    self.originator_version,
                    self.points,
                    self.reason,
                )

    class HoldPlaced(Entry):
        hold_id: str
        reference: str
        points: int
        hold: HoldRecord

        def apply_specific(self, account: MemberAccount) -> None:
            account.holds[self.hold_id] = self.hold

    class HoldCaptured(Entry):
        hold_id: str
        points: int  # captured (redeemed)
        returned: int  # back to the lots
        hold: HoldRecord

        def apply_specific(self, account: MemberAccount) -> None:
            account.holds[self.hold_id] = self.hold

    class HoldVoided(Entry):
        hold_id: str
        points: int  # returned to the lots
        reason: str | None
        hold: HoldRecord

        def apply_specific(self, account: MemberAccount) -> None:
            account.holds[self.hold_id] = self.hold

    class HoldExpired(Entry):
        hold_id: str
        points: int  # returned to the lots
        hold: HoldRecord

        def apply_specific(self, account: MemberAccount) -> None:
            account.holds[self.hold_id] = self.hold

    class TierAssigned(Entry):
        tier: str | None
        previous: str | None
        reason: str
        until: datetime | None  # override: when it ends; automatic: held until
        locked: bool  # override: automatic tier changes wait until `until`
        # Version 3: decided by the ledger itself (the tier policy, inline).
        # entry | upgrade | downgrade | kept | override | override_ended | service | retracted
        # | reviewed (a review, or a hold, decided again once an earlier-dated earn or refund
        # arrived; no new field, so no new version)
        cause: str
        period_end: datetime | None  # end of the qualification period the tier is held for
        held_until: datetime | None  # when the period is reviewed (period end + grace)
        override_until: datetime | None  # an ops override's end (None: none, or no end)
        # Version 4: the tier's place in the program's tiers (0 lowest; -1 none or unknown),
        # so an upgrade found late supersedes one decided without it; and for a retraction
        # (cause `retracted`), the seq of the upgrade it retracts (else 0).
        rank: int
        retracts: int

        class_version = 4

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 had neither `until` nor `locked`."""
            state.setdefault("until", None)
            state.setdefault("locked", False)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            """Before 0.2 tiers came from the tiers service (`tier.changed`) or from ops."""
            provenance = state["provenance"]
            service = getattr(provenance, "event_type", None) == "tier.changed"
            until = state["until"]
            state["cause"] = "service" if service else "override"
            state["period_end"] = until
            state["held_until"] = until
            state["override_until"] = None if service else until

        @staticmethod
        def upcast_v3_v4(state: dict[str, Any]) -> None:
            state["rank"] = -1
            state["retracts"] = 0

        def apply_specific(self, account: MemberAccount) -> None:
            change = TierChange(
                self.effective_at,
                self.originator_version,
                self.tier,
                self.cause,
                self.rank,
                self.period_end,
                self.held_until,
                self.retracts,
                self.override_until,
                self.locked,
            )
            changes = account.tier_changes
            if self.cause == "entry" and changes and _change_key(changes[0]) < _change_key(change):
                return  # the member had a tier by then already (recorded late): moot
            insort(changes, change, key=_change_key)
            if _effective(changes)[-1] != change:
                return  # an upgrade found late, dated before the tier in force: history only
            account.tier = self.tier
            account.tier_until = self.until
            account.tier_locked = self.locked
            account.tier_period_end = self.period_end
            account.tier_held_until = self.held_until
            account.tier_override_until = self.override_until

    def __init__(
        self, member_id: str, effective_at: datetime, provenance: Provenance, auto: bool
    ) -> None:
        self.member_id = member_id
        self.enrolled_at = effective_at
        self.auto_enrolled = auto
        self.lots: dict[str, Lot] = {}
        self.balances: dict[str, int] = dict.fromkeys(acc.ACCOUNTS, 0)
        self.tier: str | None = None
        self.orders: dict[str, OrderRecord] = {}
        self.redemptions: dict[str, RedemptionRecord] = {}
        self.activity_counts: dict[str, int] = {}
        self.daily_points: dict[str, int] = {}
        self.referred_by: str | None = None
        self.referees: dict[str, str] = {}
        # (occurred_at, event id) of the referral that pays for this member as referee: an
        # earlier one that arrives later takes its place (the earliest referral wins).
        self.referral_claim: tuple[datetime, str] | None = None
        self.last_spend_at: datetime | None = None  # the latest redemption's time
        # (effective at, seq, tier) of every tier change, in effective-time order: the tier
        # in force at an instant, for an event that arrives after later ones.
        self.tier_changes: list[TierChange] = []
        self.lifetime_earned = 0
        self.expired_by_lot: dict[str, int] = {}
        self.tier_until: datetime | None = None
        self.tier_locked = False
        self.tier_period_end: datetime | None = None
        self.tier_held_until: datetime | None = None
        self.tier_override_until: datetime | None = None
        self.qualifying: list[Qualifying] = []
        # The latest instant of time-driven work recorded (release, expiry, hold expiry,
        # tier review): an event dated before it is late (see `_late_note`).
        self.worked_to: datetime | None = None
        # Since when the balance is below zero (the effective time of the entry that took
        # it there; None when it is not, or when it is not known: an account loaded from
        # a snapshot written before this was kept).
        self.owed_since: datetime | None = None
        del provenance  # recorded on the event; nothing to keep in state

    @staticmethod
    def create_id(member_id: str) -> UUID:
        return account_id(member_id)

    @classmethod
    def enrol(
        cls, member_id: str, effective_at: datetime, provenance: Provenance, *, auto: bool
    ) -> MemberAccount:
        return cls._create(
            cls.Enrolled,
            member_id=member_id,
            effective_at=effective_at,
            provenance=provenance,
            auto=auto,
        )

    # ----------------------------------------------------------------- reading

    @property
    def balance(self) -> Balances:
        return Balances(
            self.balances[acc.AVAILABLE], self.balances[acc.PENDING], self.balances[acc.HELD]
        )

    @property
    def holds(self) -> dict[str, HoldRecord]:
        """Every hold by id (kept under a private name so older snapshots load without it)."""
        return cast(dict[str, HoldRecord], self.__dict__.setdefault("_holds", {}))

    @property
    def adjustment_requests(self) -> dict[str, tuple[int, int, str]]:
        """Adjustments by request id (seq, points, reason): a retried request is not re-applied."""
        return cast(
            dict[str, tuple[int, int, str]], self.__dict__.setdefault("_adjustment_requests", {})
        )

    @property
    def last_order_by_day(self) -> dict[str, datetime]:
        """The latest purchase time recorded per day (kept while the day's points are): a
        purchase read late finds at no cost whether its day has purchases after it. Built
        from the orders for a snapshot taken before it was kept."""
        found = cast(dict[str, datetime] | None, self.__dict__.get("_last_order_by_day"))
        if found is None:
            found = {}
            for o in self.orders.values():
                at = o.earned_at
                if at is not None and o.day in self.daily_points:
                    found[o.day] = max(at, found.get(o.day, at))
            self.__dict__["_last_order_by_day"] = found
        return found

    @property
    def lot_totals(self) -> tuple[int, int]:
        """(available, pending): what the available and the pending lots hold, kept entry by
        entry; counted from the lots for a snapshot taken before it was kept."""
        found = self.__dict__.get("_lot_totals")
        if found is None:
            found = _totals_after((0, 0), {}, self.lots.values())
            self.__dict__["_lot_totals"] = found
        available, pending = found  # a snapshot gives a list back
        return available, pending

    @property
    def settled_lots(self) -> dict[str, int]:
        """The lots with points that settled a balance below zero (`Lot.settled`), kept entry
        by entry so a late credit finds them without reading every lot; counted from the
        lots for a snapshot taken before it was kept."""
        found = self.__dict__.get("_settled_lots")
        if found is None:
            found = {lot_id: lot.settled for lot_id, lot in self.lots.items() if lot.settled}
            self.__dict__["_settled_lots"] = found
        settled: dict[str, int] = found
        return settled

    @property
    def is_member(self) -> bool:
        """False after `EnrolmentUndone` until the member's next entry (a private name, so
        snapshots written before load without it)."""
        return not self.__dict__.get("_no_member", False)

    @property
    def held_total(self) -> int:
        return sum(h.points for h in self.holds.values() if h.is_open)

    @property
    def debt(self) -> int:
        """Points owed after an unlimited clawback; later earnings settle it first."""
        return max(0, -self.balances[acc.AVAILABLE])

    def spendable(self, now: datetime) -> int:
        return spendable_total(self.lots.values(), now) - self.debt

    # ------------------------------------------------------------- time-driven

    def advance(self, program: Program, now: datetime) -> int:
        """Do the time-driven work due at or before `now`, in due-time order, one entry
        each at its due instant: pending lots released, lots expired, holds past their TTL
        returned, tier period-end reviews and override ends. Returns the entries made.

        Idempotent for an instant: what is done is no longer due.
        """
        made = 0
        while True:
            due = next_due(self.lots.values(), now)
            hold = self._next_hold_due(now)
            review = self._next_tier_due(program, now)
            first = min(
                (
                    t
                    for t in (due[0] if due else None, hold.expires_at if hold else None, review)
                    if t is not None
                ),
                default=None,
            )
            if first is None:
                return made
            if hold is not None and hold.expires_at == first:
                self._expire_hold(hold)
            elif due is not None and due[0] == first:
                at, kind, lot_id = due
                lot = self.lots[lot_id]
                prov = Provenance(SCHEDULER, program_version=lot.program_version, tier=self.tier)
                if kind == 0:
                    self._release(lot, at, prov.with_rule("pending_release"))
                    if not self._spends_take_again(program, lot_id, at, None, prov):
                        self._reallocate(program, lot_id, at, prov)
                else:
                    self._expire(lot, at, prov.with_rule("expiry"))
            else:
                self._review_tier(program, first)
            made += 1

    def prepare(self, program: Program, at: datetime, provenance: Provenance) -> None:
        """Bring the account to `at` before a command: the time-driven work due by then,
        and the entry tier for a member who has none yet (so the first earn uses it)."""
        self.advance(program, at)
        entry = program.entry_tier
        if entry is not None and self.tier is None and not self.tier_locked:
            self._record_tier(
                program,
                tier_policy.TierState(self.member_id),
                tier_policy.TierState(self.member_id, tier=entry.id),
                at=at,
                cause="entry",
                reason="entry tier",
                provenance=replace(provenance, rule_id="tier"),
            )

    def catch_up(self, program: Program) -> None:
        """After a late event: what its entry made due before the scheduler's time is done."""
        if self.worked_to is not None:
            self.advance(program, self.worked_to)

    # ------------------------------------------------------------------ tiers

    def tier_state(self, program: Program) -> tier_policy.TierState:
        """The tier policy's view of this account (qualifying value on the program's basis)."""
        spend = program.tier_qualification.basis == "spend"
        return tier_policy.TierState(
            self.member_id,
            tier=self.tier,
            period_end=self.tier_period_end,
            held_until=self.tier_held_until,
            override_until=self.tier_override_until,
            locked=self.tier_locked,
            contributions=tuple(
                tier_policy.Contribution(q.at, q.spend_minor if spend else q.points)
                for q in self.qualifying
                if (q.spend_minor if spend else q.points)
            ),
        )

    def tier_at(self, at: datetime, before_seq: int = _MAX_SEQ) -> str | None:
        """The tier in force at `at` (the current one unless later changes are recorded);
        with `before_seq`, only changes recorded before that entry count at `at` itself."""
        if not self.tier_changes or (self.tier_changes[-1].at, self.tier_changes[-1].seq) < (
            at,
            before_seq,
        ):
            return self.tier
        changes = _effective(self.tier_changes)
        index = bisect_left(changes, (at, before_seq), key=_change_key)
        if index:
            return changes[index - 1].tier
        # Before the member's first entry (an event that arrived after later ones): the
        # entry tier, which that event would have been the one to record.
        entry = next((c for c in self.tier_changes if c.cause == "entry"), None)
        return entry.tier if entry is not None else None

    def _top_up(self, program: Program, since: datetime, provenance: Provenance) -> bool:
        """Purchases dated after `since` (a late upgrade, or an upgrade retracted) earn what
        the tier then in force gives: the difference goes onto (or comes off) each one's own
        lot. Returns whether any did."""
        topped = False
        cap = program.earn.caps.per_member_per_day
        later = sorted(
            (o for o in self.orders.values() if o.earned_at is not None and o.earned_at > since),
            key=lambda o: (o.earned_at or since, o.order_id),
        )
        # Under a daily cap, each purchase gets what the day's earlier purchases (in event
        # time) left: `in_day` runs over the day's orders as they end.
        in_day = self._day_points_until(since, {o.day for o in later}) if cap is not None else {}
        for recorded in later:
            order = recorded
            before = in_day.get(order.day, 0)
            in_day[order.day] = before + order.points  # as recorded, unless repriced below
            tier = self.tier_at(order.earned_at or since, order.seq or _MAX_SEQ)
            if order.lot_id and order.lot_id not in self.lots:
                continue
            if tier == order.tier and (
                cap is None
                or (
                    order.lot_id is not None
                    and self.lots[order.lot_id].program_version != program.version
                )
            ):
                continue  # nothing to reprice (or a purchase earned under another version)
            if len(order.refunds) != len(order.refund_ids):
                continue  # refunded before 0.2 kept its refunds' steps: left as it is
            quote = quote_purchase(
                program,
                currency=order.currency,
                total_minor=order.total_minor,
                lines=order.basis,
                occurred_at=order.earned_at or since,
                source=order.source,
                tier_id=tier,
            )
            if cap is not None:
                quote = cap_quote(quote, max(0, cap - before), f"capped at {cap} per day")
            diff = quote.points - order.points
            if diff == 0:
                continue
            if not order.lot_id:
                # Capped to nothing when recorded (no lot): what it earns now gets a lot.
                if diff > 0 and not order.refunds and order.earned_at is not None:
                    self._top_up_lotless(program, order, quote, tier, provenance)
                    in_day[recorded.day] = before + quote.points
                    topped = True
                continue
            # Each refund recorded already takes back its share of the difference, as of
            # its own time: the order ends as if it had earned at this tier all along.
            taken_back: list[tuple[datetime, int]] = []
            shares: dict[str, int] = {}
            old_before = new_before = 0
            for step in order.refunds:
                old = reversal_target(order.points, order.lines, order.total_minor, step)
                new = reversal_target(quote.points, quote.lines, order.total_minor, step)
                if (new - new_before) - (old - old_before):
                    taken_back.append((step.at, (new - new_before) - (old - old_before)))
                    shares[step.refund_id] = (new - new_before) - (old - old_before)
                old_before, new_before = old, new
            taken = sum(points for _, points in taken_back)
            net = diff - taken
            lot = self.lots[order.lot_id]
            cut = None
            if diff < 0 and lot.status == AVAILABLE:
                # Spends dated after it may have used its lot: they take again, in event time.
                cut = self._cut_respent(program, order, lot, diff, shares)
            if cut is None and (
                lot.remaining + net < 0 or (net < 0 and lot.status not in (PENDING, AVAILABLE))
            ):
                continue  # spent or expired already: what it earned stays as recorded
            grown = replace(lot, amount=lot.amount + diff, remaining=lot.remaining + net)
            pending = lot.status == PENDING
            moves = () if pending or net < 0 else self._settle_moves(lot.lot_id, net)
            settles = _settles_of(moves)
            postings = transfer(acc.ISSUED, acc.PENDING if pending else acc.AVAILABLE, net)
            respent: Respent | None = None
            if tier != order.tier:
                note = (
                    f"{diff:+d} points: order {order.order_id} earns at tier {tier}, in force at "
                    f"its time once an earlier event arrived (recorded at {order.tier or 'none'})"
                )
            else:
                note = (
                    f"{diff:+d} points: order {order.order_id} gets what the daily cap of {cap} "
                    f"leaves after the purchases of {order.day} dated before it, in event time"
                )
            if taken:
                note += f"; its refunds take {taken} of them back"
            if cut is not None:
                lots, respent, again_postings, again_note, order, onto_lot = cut
                order = next((o for o in respent.orders if o.order_id == order.order_id), order)
                postings = transfer(acc.ISSUED, acc.AVAILABLE, onto_lot)
                # Moves after the cut (verify grows the lot by `points` first, then moves).
                cut_moves = {m.lot_id: m.amount for m in self._net_moves(lots)}
                settles = self._net_settles(lots)
                cut_moves[lot.lot_id] = cut_moves.get(lot.lot_id, 0) - net
                moves = tuple(LotMove(k, v) for k, v in cut_moves.items() if v)
                unexpired = sum(m.amount for m in respent.unexpired)
                postings = (
                    transfer(acc.EXPIRED, acc.AVAILABLE, unexpired)
                    + postings
                    + tuple(again_postings)
                )
                note += again_note
            self._record(
                self.PointsToppedUp,
                effective_at=order.earned_at or since,
                postings=postings,
                moves=moves,
                settles=settles,
                replaced_lots=(grown,),
                provenance=replace(
                    provenance,
                    rule_id="tier:reached_before"
                    if tier != order.tier
                    else "cap:per_member_per_day",
                    program_version=program.version,
                    tier=tier,
                ),
                note=note,
                order=replace(
                    order,
                    points=quote.points,
                    lines=quote.lines,
                    tier=tier,
                    reversed_points=order.reversed_points + taken,
                ),
                points=net,
                lot_id=lot.lot_id,
                taken_back=tuple(taken_back),
                respent=respent,
            )
            in_day[recorded.day] = before + quote.points
            if respent is not None:
                self.catch_up(program)  # points put back from expiry whose expiry has passed
            elif net > 0 and self.lots[lot.lot_id].status == AVAILABLE:
                # In event time its lot was that much larger when the spends dated after it
                # took: they take again (a redemption soonest-expiring first), as after a
                # late earn.
                at = order.earned_at or since
                if not self._spends_take_again(program, lot.lot_id, at, None, provenance):
                    self._reallocate(program, lot.lot_id, at, provenance)
            topped = True
        return topped

    def _top_up_lotless(
        self,
        program: Program,
        order: OrderRecord,
        quote: EarnQuote,
        tier: str | None,
        provenance: Provenance,
    ) -> None:
        """A purchase the daily cap left with nothing (no lot) earns `quote` now that the
        day's earlier purchases, repriced, leave room: a lot of its own, as at its time."""
        earned_at = order.earned_at
        assert earned_at is not None
        release_at = release_for(program, earned_at)
        # Its return window passed already: available at once, released as at its time.
        pending = release_at is not None and (self.worked_to is None or release_at > self.worked_to)
        lot = Lot(
            lot_id=self._next_lot_id(),
            amount=quote.points,
            remaining=quote.points,
            status=PENDING if pending else AVAILABLE,
            earned_at=earned_at,
            release_at=release_at,
            expires_at=expiry_for(program, earned_at),
            source=order.source or _label("purchase", f"order:{order.order_id}"),
            program_version=program.version,
        )
        moves = () if pending else self._settle_moves(lot.lot_id, quote.points)
        self._record(
            self.PointsToppedUp,
            effective_at=earned_at,
            postings=transfer(acc.ISSUED, acc.PENDING if pending else acc.AVAILABLE, quote.points),
            moves=moves,
            settles=_settles_of(moves),
            new_lots=(lot,),
            provenance=replace(
                provenance,
                rule_id="cap:per_member_per_day",
                program_version=program.version,
                tier=tier,
            ),
            note=f"{quote.points:+d} points: order {order.order_id} gets what the daily cap "
            f"leaves after the purchases of {order.day} dated before it, in event time (it "
            "earned nothing when recorded)",
            order=replace(
                order, points=quote.points, lines=quote.lines, tier=tier, lot_id=lot.lot_id
            ),
            points=quote.points,
            lot_id=lot.lot_id,
            taken_back=(),
            respent=None,
        )
        if (
            not pending
            and self.lots[lot.lot_id].remaining
            and not self._spends_take_again(program, lot.lot_id, earned_at, release_at, provenance)
        ):
            self._reallocate(program, lot.lot_id, earned_at, provenance)

    def _day_points_until(self, until: datetime, days: set[str]) -> dict[str, int]:
        """Points the purchases of `days` dated at or before `until` earned, by day."""
        found: dict[str, int] = {}
        for o in self.orders.values():
            if o.day in days and o.earned_at is not None and o.earned_at <= until:
                found[o.day] = found.get(o.day, 0) + o.points
        return found

    def _cut_respent(
        self,
        program: Program,
        order: OrderRecord,
        lot: Lot,
        diff: int,
        shares: Mapping[str, int],
    ) -> tuple[dict[str, Lot], Respent, list[Posting], str, OrderRecord, int] | None:
        """A purchase that earns `diff` (< 0) less than recorded, with spends dated after it
        recorded: on a copy of the lots with those spends given back and its lot cut, each
        takes again in event-time order (a redemption left unfunded is withdrawn and waits
        again); its refunds take their new size (`shares`, by refund id: what each takes
        back changes by), what they took from available lots first, the rest on the lot.
        Returns the lots after, the spends taken again, their postings and note, the order
        with its refunds' new sizes, and what the lot itself changes by. None when nothing
        was spent after it, or when it cannot be done (owed): the usual top-up then."""
        assert order.earned_at is not None
        later = self._later_spends(program, order.earned_at)
        if not later or self.debt:
            return None
        on_lot = 0  # of the refunds' shares, what changes the lot itself (pending takes)
        steps: list[RefundStep] = []
        sized: dict[str, int] = {}
        for step in order.refunds:
            share = shares.get(step.refund_id, 0)
            if step.taken_from is None:
                on_lot += share
                steps.append(step)
                continue
            part = max(share, -step.wanted)  # off (or onto) what it wants from available lots
            on_lot += share - part
            sized[f"{order.order_id}/{step.refund_id}"] = step.wanted + part
            steps.append(replace(step, wanted=step.wanted + part))
        later = [
            replace(sp, wanted=sized[sp.key]) if sp.kind == "refund" and sp.key in sized else sp
            for sp in later
        ]
        unexpired = self._unexpired(order.earned_at, later)
        lots = restored(self.lots, unexpired, later)
        own = lots[lot.lot_id]
        onto_lot = diff - on_lot
        if not 0 <= own.remaining + onto_lot <= own.amount + diff:
            return None
        lots[lot.lot_id] = replace(
            own, amount=own.amount + diff, remaining=own.remaining + onto_lot
        )
        sized_order = replace(order, refunds=tuple(steps))
        again = self._taken_again(lots, later, records={order.order_id: sized_order})
        if again is None:
            return None
        redemptions, orders, postings, note = again
        respent = Respent.of(redemptions, orders, unexpired)
        return lots, respent, postings, note, sized_order, onto_lot

    def _qualify(self, activity: Qualifying) -> None:
        horizon = activity.at - QUALIFYING_HORIZON
        if self.qualifying and self.qualifying[0].at < horizon:
            self.qualifying = [q for q in self.qualifying if q.at >= horizon]
        self.qualifying.append(activity)

    def _next_tier_due(self, program: Program, now: datetime) -> datetime | None:
        """The next period-end review or override end at or before `now`."""
        if not program.tiers:
            return None
        if self.tier_locked:
            due = self.tier_override_until
        elif self.tier_period_end is not None:
            due = self.tier_held_until
        else:
            due = None
        return due if due is not None and due <= now else None

    def _review_tier(self, program: Program, at: datetime) -> None:
        before = self.tier_state(program)
        after, decisions = tier_policy.advance(program, before, at)
        cause: str
        if decisions:
            cause = decisions[-1].reason
            reason = "; ".join(d.detail for d in decisions)
        else:
            cause = "kept"
            end = before.period_end.date().isoformat() if before.period_end else "-"
            reason = f"the period ending {end} qualified for {after.tier}"
        self._record_tier(
            program,
            before,
            after,
            at=at,
            cause=cause,
            reason=reason,
            provenance=Provenance(SCHEDULER, rule_id="tier"),
        )

    def _upgrade_after_earn(self, program: Program, at: datetime, provenance: Provenance) -> None:
        """An earn that brings the window to a higher tier upgrades at once (for the next
        earn); one that qualifies again for the tier held keeps it longer (on the earn)."""
        if not program.tiers:
            return
        before = self.tier_state(program)
        # A late earn (qualifying activity dated after it is recorded already) upgrades at
        # the first instant the window reaches a threshold, as it would have in time order.
        instants = sorted({at, *(q.at for q in self.qualifying if q.at > at)})
        for instant in instants:
            in_force = self.tier_at(instant)
            state = before if in_force == before.tier else replace(before, tier=in_force)
            after, decisions = tier_policy.upgrade(program, state, instant, None)
            if decisions:
                self._record_tier(
                    program,
                    state,
                    after,
                    at=instant,
                    cause="upgrade",
                    reason=decisions[-1].detail,
                    provenance=replace(provenance, rule_id="tier"),
                )
                if instant < instants[-1]:
                    if self._top_up(program, instant, provenance):
                        # Repriced down (a tier that earns less than the one before it),
                        # the window may no longer reach an upgrade recorded after:
                        # retracted.
                        self._retract_upgrades(
                            program,
                            instant,
                            provenance,
                            why=f"a late earn reached {after.tier} at {instant.isoformat()}, "
                            "which repriced the purchases since, after this upgrade",
                        )
                    # The earns recorded after it may reach a higher tier still.
                    self._upgrade_after_earn(program, instant, provenance)
                return

    def _retract_upgrades(
        self, program: Program, since: datetime, provenance: Provenance, *, why: str = ""
    ) -> None:
        """A refund dated `since`, before upgrades already recorded (it arrived late): an
        upgrade the window no longer reaches at its instant is retracted there, to the tier
        the window does reach, as if the refund had arrived in time; the purchases recorded
        since at the higher tier earn what the lower one gives; the window may then reach a
        tier later than recorded, which upgrades as a late earn would."""
        if not program.tiers or self.tier_locked:
            return
        retracted = False
        checked: set[int] = set()
        in_force = _effective(self.tier_changes)[-1] if self.tier_changes else None
        first = self.version + 1  # the seq of the first retraction recorded below
        while True:
            # One at a time, in effective order: a retraction may bring back a later
            # upgrade that the one it retracts had superseded, which is checked in turn.
            change = next(
                (
                    c
                    for c in _effective(self.tier_changes)
                    if c.at > since and c.cause == "upgrade" and c.seq not in checked
                ),
                None,
            )
            if change is None:
                break
            checked.add(change.seq)
            prior = [
                c for c in _effective(self.tier_changes) if _change_key(c) < _change_key(change)
            ]
            state = self.tier_state(program)
            before = replace(
                state,
                tier=prior[-1].tier if prior else None,
                period_end=prior[-1].period_end if prior else None,
                held_until=prior[-1].held_until if prior else None,
                override_until=None,
                locked=False,
            )
            after, _ = tier_policy.upgrade(program, before, change.at, None)
            if _rank(program, after.tier) >= change.rank:
                continue  # the window still reaches it
            value = tier_policy.window_value(program, state, change.at)
            self._record_tier(
                program,
                replace(state, tier=change.tier),
                after,
                at=change.at,
                cause="retracted",
                retracts=change.seq,
                reason=(why or f"a refund dated {since.isoformat()} arrived after this upgrade")
                + f" was recorded: the window holds {value} at {change.at.isoformat()}",
                provenance=replace(provenance, rule_id="tier"),
            )
            retracted = True
        last = _effective(self.tier_changes)[-1] if retracted else None
        if last is not None and last.seq < first and last != in_force:
            # A change recorded before, which the retracted upgrade had superseded, is in
            # force again (the window still reaches it): recorded as the tier from then on.
            want = tier_policy.TierState(
                self.member_id,
                tier=last.tier,
                period_end=last.period_end,
                held_until=last.held_until,
                override_until=last.override_until,
                locked=last.locked,
            )
            self._record_reviewed(program, want, at=last.at, since=since, provenance=provenance)
        if retracted:
            self._top_up(program, since, provenance)
            self._upgrade_after_earn(program, since, provenance)

    def _decide_reviews_again(
        self, program: Program, since: datetime, provenance: Provenance
    ) -> None:
        """A late earn or refund dated `since`, before period-end reviews already recorded:
        the reviews after it are decided again with it counted, as they would have been in
        time order, and what follows from them (the purchases earned since at a tier that
        changed, upgrades the window then reaches) is done again. Bounded: only changes
        dated after `since` are looked at, and a few rounds at most."""
        for _ in range(4):
            if not self._review_again(program, since, provenance):
                return
            self._top_up(program, since, provenance)
            self._upgrade_after_earn(program, since, provenance)

    def _review_again(self, program: Program, since: datetime, provenance: Provenance) -> bool:
        """Walk the tier policy from the last tier change at or before `since` over the
        qualifying activity recorded (reviews where they fall due, an earn's renewal at its
        instant, the upgrades and retractions recorded) up to the latest instant recorded;
        where a review recorded after `since` decided otherwise, or time order makes one
        elsewhere, record the decision time order gives at that instant (cause
        `reviewed`), and where the tier or its held-until ends otherwise, the state time
        order gives at the last instant walked. Returns whether any entry was recorded."""
        if not program.tiers:
            return False
        changes = _effective(self.tier_changes)
        if (not changes or changes[-1].at <= since) and all(q.at <= since for q in self.qualifying):
            return False  # the usual case: nothing recorded after it, at no cost
        # With no change by `since` (the account was opened by a later-dated event read
        # first), the walk starts at the first change recorded.
        index = max(1, bisect_right(changes, (since, _MAX_SEQ), key=_change_key))
        anchor, later = changes[index - 1], changes[index:]
        if any(c.cause in _NOT_REVIEWED_AGAIN for c in (anchor, *later)):
            return False  # 0.1's tiers service decided there: left as recorded
        state = replace(
            self.tier_state(program),
            tier=anchor.tier,
            period_end=anchor.period_end,
            held_until=anchor.held_until,
            override_until=anchor.override_until,
            locked=anchor.locked,
        )
        earns = sorted(
            {
                q.at
                for q in self.qualifying
                if q.at >= anchor.at and q.points >= 0 and q.spend_minor >= 0
            }
        )
        steps: list[tuple[datetime, tier_policy.TierState]] = [(anchor.at, state)]
        reviews: list[datetime] = []

        def due(state: tier_policy.TierState, until: datetime) -> tier_policy.TierState:
            """Reviews and override ends due by `until` (as `tier_policy.advance` makes them)."""
            while True:
                if state.locked:
                    review = state.override_until
                else:
                    review = state.held_until if state.period_end is not None else None
                if review is None or review > until:
                    return state
                state, _ = tier_policy.advance(program, state, review)
                reviews.append(review)
                steps.append((review, state))

        applied = {c.seq for c in changes[:index]}
        events = sorted(
            [(t, 0, 0) for t in earns]
            + [(c.at, 1, i) for i, c in enumerate(later) if c.cause not in _REVIEWS],
            key=lambda e: (e[0], e[1], later[e[2]].seq if e[1] else 0),
        )
        for t, kind, i in events:
            state = due(state, t)
            if kind == 0:
                if state.period_end is None or state.locked:
                    continue  # nothing to hold longer (the entry tier; a lock)
                after, decisions = tier_policy.upgrade(program, state, t, None)
                if decisions or (after.period_end, after.held_until) == (
                    state.period_end,
                    state.held_until,
                ):
                    continue  # an upgrade is recorded by the earn (or found after this)
            else:
                change = later[i]
                if change.cause == "upgrade" and 0 <= change.rank <= _rank(program, state.tier):
                    continue  # superseded: the tier was held already
                if change.cause == "retracted" and change.retracts not in applied:
                    continue
                applied.add(change.seq)
                after = replace(
                    state,
                    tier=change.tier,
                    period_end=change.period_end,
                    held_until=change.held_until,
                    override_until=change.override_until,
                    locked=change.locked,
                )
            state = after
            steps.append((t, state))
        horizon = max(
            t
            for t in (self.worked_to, changes[-1].at, earns[-1] if earns else None, since)
            if t is not None
        )
        state = due(state, horizon)

        def at_instant(instant: datetime) -> tier_policy.TierState:
            return [s for t, s in steps if t <= instant][-1]

        recorded = False
        instants = sorted({*reviews, *(c.at for c in later if c.cause in _REVIEWS)})
        for instant in instants:
            want = at_instant(instant)
            have = [c for c in _effective(self.tier_changes) if c.at <= instant][-1]
            if (
                have.tier,
                have.period_end,
                have.held_until,
                have.override_until,
                have.locked,
            ) == (want.tier, want.period_end, want.held_until, want.override_until, want.locked):
                continue
            self._record_reviewed(program, want, at=instant, since=since, provenance=provenance)
            recorded = True
        last, final = steps[-1]
        if (
            self.tier,
            self.tier_period_end,
            self.tier_held_until,
            self.tier_override_until,
            self.tier_locked,
        ) != (final.tier, final.period_end, final.held_until, final.override_until, final.locked):
            self._record_reviewed(program, final, at=last, since=since, provenance=provenance)
            recorded = True
        return recorded

    def _record_reviewed(
        self,
        program: Program,
        want: tier_policy.TierState,
        *,
        at: datetime,
        since: datetime,
        provenance: Provenance,
    ) -> None:
        """A tier decision at `at` taken again once an earlier-dated event arrived."""
        held = want.held_until.date().isoformat() if want.held_until else "-"
        self._record_tier(
            program,
            replace(want, tier=self.tier_at(at)),
            want,
            at=at,
            cause="reviewed",
            reason=f"decided again once an event dated {since.isoformat()} arrived: "
            f"{want.tier or 'none'} at {at.isoformat()}, held until {held}",
            provenance=replace(provenance, rule_id="tier"),
        )

    def _record_tier(
        self,
        program: Program,
        before: tier_policy.TierState,
        after: tier_policy.TierState,
        *,
        at: datetime,
        cause: str,
        reason: str,
        provenance: Provenance,
        retracts: int = 0,
    ) -> None:
        until = after.override_until if after.override_until is not None else after.held_until
        self._record(
            self.TierAssigned,
            effective_at=at,
            postings=(),
            moves=(),
            provenance=replace(provenance, program_version=program.version, tier=after.tier),
            note=f"tier {before.tier or 'none'} -> {after.tier or 'none'}: {reason}"
            if before.tier != after.tier
            else f"tier {after.tier or 'none'} kept: {reason}",
            tier=after.tier,
            previous=before.tier,
            reason=reason,
            until=until,
            locked=after.locked,
            cause=cause,
            period_end=after.period_end,
            held_until=after.held_until,
            override_until=after.override_until,
            rank=_rank(program, after.tier),
            retracts=retracts,
        )

    def _release(self, lot: Lot, at: datetime, prov: Provenance) -> None:
        amount = lot.remaining
        moves = self._settle_late((LotMove(lot.lot_id, amount),), at, at)
        note = (
            f"{amount} pending points from {lot.source} are now available"
            if amount
            else f"nothing left to release from {lot.source} (refunded)"
        )
        if moves and moves[0].lot_id == lot.lot_id:
            note += f"; {-moves[0].amount} settled the negative balance"
        if len(moves) > 1:
            note += " first (points that came after it settle again after it)"
        self._record(
            self.PendingReleased,
            effective_at=at,
            postings=transfer(acc.PENDING, acc.AVAILABLE, amount),
            moves=moves,
            settles=_settles_of(moves),
            released=(lot.lot_id,),
            provenance=prov,
            note=note,
            lot_id=lot.lot_id,
            points=amount,
        )

    def _reallocate(
        self, program: Program, lot_id: str, since: datetime, provenance: Provenance
    ) -> None:
        """Redemptions recorded after `since` that took from lots the new lot would have
        been spent before (soonest expiry first) take from it instead."""
        if self.last_spend_at is None or self.last_spend_at <= since:
            return  # nothing recorded after it: the usual case, at no cost
        lot = self.lots[lot_id]
        later = sorted(
            (
                r
                for r in self.redemptions.values()
                if r.status == "redeemed"
                and r.at is not None
                and r.at >= since
                # A redemption spends the lots as they stood at its own time: points still
                # pending then were not there for it, even if released before it was funded.
                and (lot.release_at is None or lot.release_at <= (r.dated or r.at))
            ),
            key=lambda r: (r.at or since, r.redemption_id),
        )
        free = lot.remaining
        # Together, the redemptions give back the points soonest-expiring-first would have
        # taken last, whichever redemption took them.
        taken = sorted(
            (
                (record, move)
                for record in later
                if lot.expires_at is None or record.at is None or lot.expires_at > record.at
                for move in record.moves
                if spend_order_key(self.lots[move.lot_id])[:2] > spend_order_key(lot)[:2]
            ),
            key=lambda rm: (spend_order_key(self.lots[rm[1].lot_id]), rm[0].at or since),
            reverse=True,
        )
        new_moves: dict[str, dict[str, int]] = {}
        moves: dict[str, int] = {}
        for record, move in taken:
            if free == 0:
                break
            swap = min(free, -move.amount)
            mine = new_moves.setdefault(
                record.redemption_id, {m.lot_id: m.amount for m in record.moves}
            )
            mine[move.lot_id] += swap
            mine[lot_id] = mine.get(lot_id, 0) - swap
            moves[move.lot_id] = moves.get(move.lot_id, 0) + swap
            moves[lot_id] = moves.get(lot_id, 0) - swap
            free -= swap
        changed = [
            replace(
                self.redemptions[rid],
                moves=tuple(LotMove(k, v) for k, v in amounts.items() if v),
            )
            for rid, amounts in new_moves.items()
        ]
        if not changed:
            return
        self._record(
            self.LotsReallocated,
            effective_at=since,
            postings=(),
            moves=tuple(LotMove(k, v) for k, v in moves.items() if v),
            provenance=self._provenance(program, provenance, "spend:soonest_expiring_first"),
            note=f"{-moves.get(lot_id, 0)} redeemed points now taken from {lot.source}, which "
            "expires sooner (it arrived after those redemptions)",
            lot_id=lot_id,
            redemptions=tuple(changed),
            respent=None,
        )

    def _spends_take_again(
        self,
        program: Program,
        lot_id: str,
        since: datetime,
        released_at: datetime | None,
        provenance: Provenance,
    ) -> bool:
        """An earn dated before spends already recorded (it arrived late, on another
        topic): in event time they found its points. Every spend dated after the earn takes
        again, in event-time order (domain/spends.py), with its lot there from `since`
        (spendable once `released_at` has passed, for a purchase whose return window had
        passed when it arrived): a redemption soonest-expiring first, a refund that was
        short of points takes them. False when nothing is recorded after it (the usual
        case, at no cost) or a later spend would be left owing: `_reallocate` applies."""
        if self.last_spend_at is None or self.last_spend_at <= since:
            return False
        later = self._later_spends(program, since) + self._waited_past(program, since)
        if not later:
            return False
        unexpired = self._unexpired(since, later)
        lots = restored(self.lots, unexpired, later)
        if released_at is not None and lots[lot_id].release_at is None:
            lots[lot_id] = replace(lots[lot_id], release_at=released_at)
        owed_then = self._unsettled(later, since, lots)
        if owed_then is None:
            return False
        again = self._taken_again(
            lots, later, since, owed=owed_then, unsettled=True, unexpired=unexpired
        )
        if again is None:
            return False
        redemptions, orders, postings, note = again
        lots[lot_id] = replace(lots[lot_id], release_at=self.lots[lot_id].release_at)
        if not redemptions and not orders and not self._settled_again(lots, since, unexpired):
            return True  # the spends stand as time order has them
        self._record(
            self.LotsReallocated,
            effective_at=since,
            postings=transfer(acc.EXPIRED, acc.AVAILABLE, sum(unexpired.values()))
            + tuple(postings),
            moves=self._net_moves(lots),
            settles=self._net_settles(lots),
            provenance=self._provenance(program, provenance, "spend:event_time_order"),
            note=f"{self.lots[lot_id].source} was there for the spends dated after it (it "
            "arrived after them)" + note,
            lot_id=lot_id,
            redemptions=(),
            respent=Respent.of(redemptions, orders, unexpired),
        )
        self.catch_up(program)  # points put back from expiry whose expiry has passed
        return True

    def _expire(self, lot: Lot, at: datetime, prov: Provenance) -> None:
        amount = lot.remaining
        self._record(
            self.PointsExpired,
            effective_at=at,
            postings=transfer(acc.AVAILABLE, acc.EXPIRED, amount),
            moves=(LotMove(lot.lot_id, -amount),),
            provenance=prov,
            note=f"{amount} unspent points of {lot.source} (earned "
            f"{lot.earned_at.date().isoformat()}) expired",
            lot_id=lot.lot_id,
            points=amount,
        )

    # ------------------------------------------------------------------- earn

    def earn_purchase(
        self,
        program: Program,
        *,
        order_id: str,
        currency: str,
        total_minor: int,
        lines: Sequence[Line],
        occurred_at: datetime,
        source: str | None,
        provenance: Provenance,
        now: datetime,
    ) -> None:
        if order_id in self.orders:
            raise Declined("duplicate_order", f"order {order_id} has already earned points")
        # Due work and the entry tier first: the tier in force at the purchase sets its rate.
        self.prepare(program, now, provenance)
        quote = quote_purchase(
            program,
            currency=currency,
            total_minor=total_minor,
            lines=lines,
            occurred_at=occurred_at,
            source=source,
            tier_id=self.tier_at(occurred_at),
        )
        day = local_date(program, occurred_at).isoformat()
        daily_cap = program.earn.caps.per_member_per_day
        # Purchases of the same day dated after it, recorded already (it arrived late): it
        # comes first under the day's cap, and they get what it leaves (`_top_up`).
        last = self.last_order_by_day.get(day)
        later_that_day = daily_cap is not None and last is not None and last > occurred_at
        if daily_cap is not None:
            used = (
                self._day_points_until(occurred_at, {day}).get(day, 0)
                if later_that_day
                else self.daily_points.get(day, 0)
            )
            quote = cap_quote(
                quote, max(0, daily_cap - used), f"capped at {daily_cap} per member per day"
            )
        lot_id = self._next_lot_id() if quote.points else None
        order = OrderRecord(
            order_id=order_id,
            lot_id=lot_id,
            currency=currency,
            total_minor=total_minor,
            points=quote.points,
            lines=quote.lines,
            basis=tuple(lines),
            source=source,
            earned_at=occurred_at,
            tier=self.tier_at(occurred_at),
            day=day,
            seq=self.version + 1,
        )
        self._earn(
            program,
            quote=quote,
            kind="purchase",
            reference=f"order:{order_id}",
            occurred_at=occurred_at,
            provenance=provenance,
            now=now,
            pending=True,
            order=order,
            day=day,
        )
        if later_that_day and self._top_up(program, occurred_at, provenance):
            self._retract_upgrades(
                program,
                occurred_at,
                provenance,
                why=f"order {order_id}, dated before purchases of its day under the daily cap, "
                "arrived after them: they earn less",
            )
            self._upgrade_after_earn(program, occurred_at, provenance)

    def earn_activity(
        self,
        program: Program,
        *,
        activity: str,
        reference: str | None,
        occurred_at: datetime,
        provenance: Provenance,
        now: datetime,
    ) -> None:
        rule = program.activities.get(activity)
        if rule is None:
            known = ", ".join(sorted(program.activities)) or "none"
            raise Declined(
                "unknown_activity", f"the program rewards no activity {activity!r} ({known})"
            )
        counters: list[str] = []
        skipped: str | None = None
        period = activity_period(program, rule.limit, occurred_at)
        if period is not None:
            key = f"{activity}|{period}"
            if self.activity_counts.get(key, 0) >= 1:
                skipped = f"{activity} already rewarded ({rule.limit.value.replace('_', ' ')})"
            counters.append(key)
        if reference is not None:
            key = f"{activity}|ref:{reference}"
            if self.activity_counts.get(key, 0) >= 1 and skipped is None:
                skipped = f"{activity} {reference} already rewarded"
            counters.append(key)
        points = 0 if skipped else rule.points
        explanation = skipped or f"{activity} earns {rule.points}"
        quote = EarnQuote(points, (), (f"activity:{activity}",), explanation)
        self.prepare(program, now, provenance)
        self._earn(
            program,
            quote=quote,
            kind="activity",
            reference=f"activity:{activity}" + (f":{reference}" if reference else ""),
            occurred_at=occurred_at,
            provenance=provenance,
            now=now,
            pending=False,
            counters=() if skipped else tuple(counters),
        )

    def complete_enrolment(self, program: Program, *, at: datetime, provenance: Provenance) -> None:
        if not self.auto_enrolled:
            raise Declined("already_enrolled", f"{self.member_id} is already a member")
        self.prepare(program, at, provenance)
        self._record(
            self.EnrolmentCompleted,
            effective_at=at,
            postings=(),
            moves=(),
            provenance=self._provenance(program, provenance, "enrolment"),
            note="enrolment completed (the member's first event had enrolled them already)",
        )
        self.catch_up(program)

    def earlier_referral(self, at: datetime, event_id: str) -> bool:
        """Whether a referral at (`at`, `event_id`) precedes the one that paid for this
        member as referee (the earliest by occurred_at, then event id, wins)."""
        claim = self.referral_claim
        return claim is not None and (at, event_id) < (claim[0], claim[1])  # a list in snapshots

    def reverse_referral(
        self,
        program: Program,
        *,
        role: str,
        other: str,
        undone: tuple[datetime, str],
        winner: str,
        circular: bool,
        occurred_at: datetime,
        provenance: Provenance,
    ) -> None:
        """Take back this member's bonus (`role` referrer: for referring `other`; referee:
        for joining through `other`) of the referral `undone` (occurred_at, event id), which
        an earlier one by `winner` displaced, as if it had never been given: what its lot
        still holds; what the lot lost to its expiry is gone already (not taken twice);
        what was spent from it is taken from what is available instead, and what is not
        available is owed (the balance goes below zero; later earnings settle it first), so
        the balance does not depend on when the earlier referral is read. Its qualifying
        activity is taken back at its own time."""
        earned_at = undone[0]
        if role == "referrer":
            referee, reference = other, f"referee:{other}"
            points = program.referral.referrer_points
            what = f"referral bonus for {other}"
        else:
            referee, reference = self.member_id, f"referred-by:{other}"
            points = program.referral.referee_points
            what = f"welcome bonus for joining through {other}"
        self.prepare(program, occurred_at, provenance)
        label = _label("referral", reference)
        lots = [lot for lot in self.lots.values() if lot.source == label]
        own = next((lot for lot in lots if lot.earned_at == earned_at), None)
        if own is None:  # recorded before the bonus's instant was known: its first lot held
            own = next((lot for lot in lots if lot.remaining > 0), None)
        if own is not None and self._reverse_respent(
            program, own, role, other, undone, winner, circular, occurred_at, provenance
        ):
            return
        moves: list[LotMove] = []
        gone = 0
        if own is not None:
            points = own.amount
            if own.remaining:
                moves.append(LotMove(own.lot_id, -own.remaining))
            gone = min(points - own.remaining, self.expired_by_lot.get(own.lot_id, 0))
        spent = points - gone - sum(-m.amount for m in moves)
        after = dict(self.lots)
        for move in moves:
            after[move.lot_id] = after[move.lot_id].moved(move.amount)
        take = min(spent, max(0, spendable_total(after.values(), occurred_at) - self.debt))
        if take:
            moves.extend(allocate(after.values(), take, occurred_at))
        owed = spent - take  # the balance goes below zero: later earnings settle it first
        taken = points - gone
        why = self._why_reversed(referee, role, other, winner, circular)
        self._record(
            self.ReferralReversed,
            effective_at=occurred_at,
            postings=transfer(acc.AVAILABLE, acc.ISSUED, taken),
            moves=merge_moves(moves),
            # What it settled is owed again (taken as spent above): it never settled it.
            settles=(LotMove(own.lot_id, -own.settled),) if own is not None and own.settled else (),
            provenance=self._provenance(program, provenance, "referral:earliest_wins"),
            note=f"{what} taken back ({taken} points"
            + (f", {owed} of them spent already and owed" if owed else "")
            + (f"; {gone} already expired" if gone else "")
            + f"): {why}",
            referee=referee,
            points=taken,
            forgiven=gone,
            winner=winner,
            role=role,
            earned_at=earned_at,
            undone=undone[1],
            respent=None,
        )
        # An upgrade recorded since that only the bonus reached goes, as after a refund
        # (one at the bonus's own instant too: `since` is just before it), and so do
        # reviews it decided.
        self._bonus_undone_tiers(program, earned_at, provenance)
        self.catch_up(program)

    def _forget_expired(self, role: str, referee: str, earned_at: datetime, points: int) -> None:
        """The expired points of a displaced bonus (forgiven by its reversal) were never
        there in event time: no spend taken again as of before their expiry finds them."""
        for lot in self.lots.values():
            if (
                lot.earned_at == earned_at
                and (
                    lot.source == f"referral of {referee}"
                    if role == "referrer"
                    else lot.source.startswith("referral by ")
                )
                and self.expired_by_lot.get(lot.lot_id, 0) >= points
            ):
                self.expired_by_lot[lot.lot_id] -= points
                return

    def undo_enrolment(
        self, program: Program, *, undone: str, occurred_at: datetime, provenance: Provenance
    ) -> bool:
        """After its bonus of the displaced referral `undone` was taken back: a member whom
        that referral enrolled automatically and who has nothing else (no other earn,
        order, redemption, hold, adjustment, referral, override; nothing held, owed or
        earned) is no member again, as in time order, where that referral was declined.
        Returns whether it was undone."""
        quiet = {"entry", "upgrade", "retracted", "reviewed", "kept", "downgrade"}
        if not (
            self.is_member
            and self.auto_enrolled
            and not self.orders
            and not self.redemptions
            and not self.holds
            and not self.adjustment_requests
            and not self.activity_counts
            and not self.referees
            and self.referred_by is None
            and self.lifetime_earned == 0
            and self.balance == Balances(0, 0, 0)
            and not self.debt
            and not self.tier_locked
            and all(c.cause in quiet for c in self.tier_changes)
            and all(
                lot.source.startswith("referral ") and not lot.remaining
                for lot in self.lots.values()
            )
        ):
            return False
        self._record(
            self.EnrolmentUndone,
            effective_at=occurred_at,
            postings=(),
            moves=(),
            provenance=self._provenance(program, provenance, "referral:earliest_wins"),
            note=f"enrolment undone: the referral {undone} that enrolled {self.member_id} "
            "automatically was displaced by an earlier one; in time order it enrolled nobody",
            undone=undone,
        )
        return True

    def _bonus_undone_tiers(
        self, program: Program, earned_at: datetime, provenance: Provenance
    ) -> None:
        """A bonus taken back as if never given: the upgrades recorded since that only it
        reached are retracted, and the period-end reviews recorded since (that it made keep
        a tier) are decided again without it, as after a late refund."""
        since = earned_at - _JUST_BEFORE
        self._retract_upgrades(program, since, provenance)
        self._decide_reviews_again(program, since, provenance)

    def _why_reversed(
        self, referee: str, role: str, other: str, winner: str, circular: bool
    ) -> str:
        referrer = self.member_id if role == "referrer" else other
        if circular:  # the winning referral is the other way round
            return f"{referee} referred {referrer} first, so this referral does not count"
        return f"{winner}'s earlier referral of {referee} is the one that counts"

    def _reverse_respent(
        self,
        program: Program,
        own: Lot,
        role: str,
        other: str,
        undone: tuple[datetime, str],
        winner: str,
        circular: bool,
        occurred_at: datetime,
        provenance: Provenance,
    ) -> bool:
        """A displaced bonus that spends dated after it took from: in event time it was
        never there, so those spends take again, in event-time order, without it (a
        redemption it alone funded is withdrawn and waits again; a refund takes what is
        there). What expired from it expired from points it never had: that expiry is
        undone, and the points those spends took instead expire at their own times. False
        when nothing was spent from it, or what took from it is not all such a spend (a
        hold), or a spend would be left owing: the bonus is taken back from what is
        available then (`reverse_referral`)."""
        earned_at = undone[0]
        if own.remaining == own.amount and (
            self.last_spend_at is None or self.last_spend_at <= earned_at
        ):
            # Nothing spent from it (a redemption that took from it and was cancelled
            # since gave it back, but the spends while it held it took again: not here).
            return False
        # A redemption dated before the bonus that waited past it took from it too.
        later = self._later_spends(program, earned_at) + self._waited_past(program, earned_at)
        unexpired = self._unexpired(earned_at, later)
        lots = restored(self.lots, unexpired, later)
        # Under the unlimited policy: what the lots that came since settled goes back, and
        # what was owed at the bonus's time is settled again in event-time order.
        owed_then = self._unsettled(later, earned_at, lots)
        if owed_then is None or lots[own.lot_id].remaining != own.amount:
            return False
        lots[own.lot_id] = replace(lots[own.lot_id], remaining=0)
        again = self._taken_again(
            lots, later, earned_at, owed=owed_then, unsettled=True, unexpired=unexpired
        )
        if again is None:
            return False
        redemptions, orders, postings, note = again
        referee = other if role == "referrer" else self.member_id
        why = self._why_reversed(referee, role, other, winner, circular)
        what = (
            f"referral bonus for {other}"
            if role == "referrer"
            else (f"welcome bonus for joining through {other}")
        )
        self._record(
            self.ReferralReversed,
            effective_at=occurred_at,
            postings=transfer(acc.EXPIRED, acc.AVAILABLE, sum(unexpired.values()))
            + tuple(postings)
            + transfer(acc.AVAILABLE, acc.ISSUED, own.amount),
            moves=self._net_moves(lots),
            settles=self._net_settles(lots),
            provenance=self._provenance(program, provenance, "referral:earliest_wins"),
            note=f"{what} taken back ({own.amount} points; the spends dated after it take "
            f"again without it): {why}" + note,
            referee=referee,
            points=own.amount,
            forgiven=0,
            winner=winner,
            role=role,
            earned_at=earned_at,
            undone=undone[1],
            respent=Respent.of(redemptions, orders, unexpired),
        )
        self._bonus_undone_tiers(program, earned_at, provenance)
        self.catch_up(program)
        return True

    def displaced_referrals(
        self, referrer: MemberAccount, at: datetime, event_id: str
    ) -> list[tuple[str, str]]:
        """The recorded referrals, as (referrer, referee), that a referral of this member by
        `referrer` at (`at`, `event_id`) displaces: in time order it comes first, so they
        would have been declined. A member is referred once (the earliest referral by
        occurred_at, then event id, counts) and never by a member they referred first.
        Declined if a recorded referral that rules it out comes before it."""
        displaced: list[tuple[str, str]] = []
        if self.referred_by is not None:
            if not self.earlier_referral(at, event_id):
                raise Declined(
                    "referee_already_referred",
                    f"{self.member_id} was already referred by {self.referred_by}",
                )
            displaced.append((self.referred_by, self.member_id))
        if referrer.referred_by == self.member_id:
            if not referrer.earlier_referral(at, event_id):
                raise Declined(
                    "circular_referral", f"{self.member_id} referred {referrer.member_id} already"
                )
            displaced.append((self.member_id, referrer.member_id))
        return displaced

    def check_can_be_referred(self, referrer: str) -> None:
        if self.referred_by is not None:
            raise Declined(
                "referee_already_referred",
                f"{self.member_id} was already referred by {self.referred_by}",
            )
        if referrer in self.referees:
            raise Declined("circular_referral", f"{self.member_id} referred {referrer} already")

    def earn_referral(
        self,
        program: Program,
        *,
        role: str,
        other_member: str,
        occurred_at: datetime,
        provenance: Provenance,
        now: datetime,
    ) -> None:
        """Referral bonus for one side: role `referrer` (other = referee) or `referee`."""
        if role == "referrer":
            points = program.referral.referrer_points
            reference = f"referee:{other_member}"
            text = f"referral bonus for referring {other_member}"
        else:
            points = program.referral.referee_points
            reference = f"referred-by:{other_member}"
            text = f"welcome bonus for joining through {other_member}"
        quote = EarnQuote(points, (), (f"referral:{role}",), text)
        self.prepare(program, now, provenance)
        self._earn(
            program,
            quote=quote,
            kind="referral",
            reference=reference,
            occurred_at=occurred_at,
            provenance=provenance,
            now=now,
            pending=False,
        )

    def _earn(
        self,
        program: Program,
        *,
        quote: EarnQuote,
        kind: str,
        reference: str,
        occurred_at: datetime,
        provenance: Provenance,
        now: datetime,
        pending: bool,
        order: OrderRecord | None = None,
        counters: tuple[str, ...] = (),
        day: str = "",
    ) -> None:
        points = quote.points
        release_at = release_for(program, occurred_at) if pending else None
        # A return window that has already passed (a late event) releases at once.
        if release_at is not None and release_at <= now:
            release_at = None
        prov = replace(
            provenance,
            rule_id=",".join(quote.rule_ids),
            program_version=program.version,
            tier=self.tier_at(occurred_at),
        )
        new_lots: tuple[Lot, ...] = ()
        moves: tuple[LotMove, ...] = ()
        postings: tuple[Posting, ...] = ()
        expired = 0
        note = quote.explanation
        if points:
            lot_id = order.lot_id if order and order.lot_id else self._next_lot_id()
            lot = Lot(
                lot_id=lot_id,
                amount=points,
                remaining=points,
                status=PENDING if release_at else AVAILABLE,
                earned_at=occurred_at,
                release_at=release_at,
                expires_at=expiry_for(program, occurred_at),
                source=_label(kind, reference),
                program_version=program.version,
            )
            new_lots = (lot,)
            if release_at:
                postings = transfer(acc.ISSUED, acc.PENDING, points)
                note += f"; pending until {release_at.isoformat()}"
            else:
                postings = transfer(acc.ISSUED, acc.AVAILABLE, points)
                came_at = (release_for(program, occurred_at) if pending else None) or occurred_at
                dead = self._expired_unowed(program, lot, came_at)
                if not dead:
                    moves = self._settle_late((LotMove(lot_id, points),), came_at, now)
                if moves and moves[0].lot_id == lot_id:
                    note += f"; {-moves[0].amount} settled the negative balance"
                if len(moves) > 1:
                    note += " first (points that came after it settle again after it)"
                if dead and lot.expires_at is not None:
                    # Read after its expiry, while the balance is below zero since after
                    # it: in event time these points expired before anything was owed.
                    expired = points
                    postings += transfer(acc.AVAILABLE, acc.EXPIRED, points)
                    note += (
                        f"; expired {lot.expires_at.isoformat()}, before the balance went "
                        "below zero: they settle nothing"
                    )
        renewal = self._renewal(
            program, Qualifying(occurred_at, points, order.total_minor if order else 0)
        )
        if renewal is not None:
            note += f"; tier {self.tier} held until {renewal[1].date().isoformat()}"
        self._record(
            self.PointsEarned,
            effective_at=occurred_at,
            postings=postings,
            moves=(*moves, LotMove(new_lots[0].lot_id, -expired)) if expired else moves,
            settles=_settles_of(moves),
            new_lots=new_lots,
            provenance=prov,
            note=f"{points} points: {note}",
            points=points,
            kind=kind,
            reference=reference,
            order=order,
            counters=counters,
            day=day,
            tier_period_end=renewal[0] if renewal else None,
            tier_held_until=renewal[1] if renewal else None,
            expired=expired,
        )
        if new_lots and new_lots[0].status == AVAILABLE:
            released_at = release_for(program, occurred_at) if pending else None
            lot_id = new_lots[0].lot_id
            if not self._spends_take_again(program, lot_id, occurred_at, released_at, provenance):
                self._reallocate(program, lot_id, occurred_at, provenance)
        self._upgrade_after_earn(program, occurred_at, provenance)
        self._decide_reviews_again(program, occurred_at, provenance)
        self.catch_up(program)

    def _renewal(self, program: Program, activity: Qualifying) -> tuple[datetime, datetime] | None:
        """(period end, held until) when this earn qualifies again for the tier held, in a
        later period, without reaching a higher one; None otherwise."""
        if not program.tiers:
            return None
        spend = program.tier_qualification.basis == "spend"
        value = activity.spend_minor if spend else activity.points
        state = self.tier_state(program)
        if value:
            state = replace(
                state,
                contributions=(
                    *state.contributions,
                    tier_policy.Contribution(activity.at, value),
                ),
            )
        after, decisions = tier_policy.upgrade(program, state, activity.at, None)
        if decisions or after.held_until is None or after.period_end is None:
            return None
        if (after.period_end, after.held_until) == (state.period_end, state.held_until):
            return None
        return after.period_end, after.held_until

    # ----------------------------------------------------------------- refunds

    def reverse_purchase(
        self,
        program: Program,
        *,
        order_id: str,
        refund_id: str,
        amount_minor: int | None,
        lines: Mapping[str, int] | None,
        occurred_at: datetime,
        provenance: Provenance,
        now: datetime,
    ) -> None:
        order = self.orders.get(order_id)
        if order is None:
            raise Declined("unknown_order", f"order {order_id} earned nothing for this member")
        if (deadline := _stopped_waiting(program, occurred_at, order.earned_at)) is not None:
            raise Declined(
                "unknown_order",
                f"order {order_id} was placed after this refund's deadline "
                f"({deadline.isoformat()})",
            )
        if refund_id in order.refund_ids:
            raise Declined("duplicate_refund", f"refund {refund_id} was already applied")
        refunded_minor = order.refunded_minor
        quantities = dict(order.refunded_quantities)
        if amount_minor is not None:
            refunded_minor += amount_minor
            if refunded_minor > order.total_minor:
                raise Declined(
                    "refund_exceeds_order",
                    f"refunds of order {order_id} would total {refunded_minor}, "
                    f"more than its {order.total_minor}",
                )
        for sku, qty in (lines or {}).items():
            bought = {lp.sku: lp.quantity for lp in order.lines}.get(sku)
            if bought is None:
                raise Declined("unknown_line", f"order {order_id} has no line {sku}")
            quantities[sku] = quantities.get(sku, 0) + qty
            if quantities[sku] > bought:
                raise Declined(
                    "refund_exceeds_order",
                    f"refunds of {sku} would total {quantities[sku]}, more than the {bought} "
                    "bought",
                )
        step = RefundStep(occurred_at, refunded_minor, tuple(sorted(quantities.items())))
        target = reversal_target(order.points, order.lines, order.total_minor, step)
        to_reverse = max(0, target - order.reversed_points)
        self.prepare(program, now, provenance)
        respent: Respent | None = None
        respent_note = ""
        late = self._respend_refund(program, order, to_reverse, occurred_at)
        settles: tuple[LotMove, ...] = ()
        if late is not None:
            moves, postings, forgiven, already_expired, spend, respent, respent_note = late[:7]
            settles = late[7]
        else:
            moves, postings, forgiven, already_expired, spend = self._clawback(
                program, order, to_reverse, now
            )
        if spend is not None:
            step = replace(
                step,
                refund_id=refund_id,
                taken_from=spend.moves,
                wanted=spend.wanted,
                owes=spend.owes,
                expired=already_expired,
            )
        elif already_expired and program.returns.policy is not ReturnPolicy.PENDING_ONLY:
            # All of it had expired: it takes nothing, unless a spend read later shows the
            # lot was spent before its expiry (see spends.expired_again).
            step = replace(
                step,
                refund_id=refund_id,
                taken_from=(),
                owes=program.returns.policy is ReturnPolicy.UNLIMITED,
                expired=already_expired,
            )
        taken = to_reverse - forgiven - already_expired
        base = order
        if respent is not None:
            base = next((o for o in respent.orders if o.order_id == order_id), order)
        new_order = replace(
            base,
            expired_credited=base.expired_credited + already_expired,
            refunded_minor=refunded_minor,
            refunded_quantities=tuple(sorted(quantities.items())),
            reversed_points=order.reversed_points + to_reverse,
            refund_ids=(*order.refund_ids, refund_id),
            refunds=(*base.refunds, step),
        )
        policy = program.returns.policy.value
        note = f"refund {refund_id} of order {order_id}: {taken} points taken back"
        if already_expired:
            note += f", {already_expired} had already expired"
        if forgiven:
            note += f", {forgiven} kept by the member (return policy {policy})"
        note += respent_note
        self._record(
            self.PointsReversed,
            effective_at=occurred_at,
            postings=postings,
            moves=moves,
            settles=settles,
            provenance=replace(
                provenance,
                rule_id=f"returns:{policy}",
                program_version=program.version,
                tier=self.tier,
            ),
            note=note,
            order_id=order_id,
            refund_id=refund_id,
            points=taken,
            forgiven=forgiven,
            already_expired=already_expired,
            order=new_order,
            respent=respent,
        )
        if respent is not None:
            self.catch_up(program)  # points put back from expiry whose expiry has passed
        self._retract_upgrades(program, occurred_at, provenance)
        self._decide_reviews_again(program, occurred_at, provenance)

    def _clawback(
        self, program: Program, order: OrderRecord, amount: int, now: datetime
    ) -> tuple[tuple[LotMove, ...], tuple[Posting, ...], int, int, Spend | None]:
        """Take back `amount` per the return policy: the order's own pending points first.

        Returns the moves, the postings, what is forgiven, what had already expired from
        the order's own lot (those points are gone already, so they are not taken twice),
        and what it took from available lots as a spend (None when the policy takes none).
        """
        policy = program.returns.policy
        moves: list[LotMove] = []
        postings: list[Posting] = []
        left = amount
        own = self.lots.get(order.lot_id) if order.lot_id else None
        # Pending at its time: also when released since (a late refund, read after the
        # scheduler released them), from the sub-account they are in now; not a spend.
        pending_then = own is not None and (
            own.status == PENDING or (own.release_at is not None and own.release_at > now)
        )
        if left and own is not None and pending_then and own.remaining:
            take = min(left, own.remaining)
            moves.append(LotMove(own.lot_id, -take))
            source = acc.PENDING if own.status == PENDING else acc.AVAILABLE
            postings += transfer(source, acc.ISSUED, take)
            left -= take
        already_expired = 0
        if left and own is not None:
            expired = self.expired_by_lot.get(own.lot_id, 0) - order.expired_credited
            already_expired = min(left, max(0, expired))
            left -= already_expired
        spend: Spend | None = None
        if left and policy is not ReturnPolicy.PENDING_ONLY:
            wanted = left
            pending_moves = len(moves)
            # What was there at its time: not points earned after it (read before it), nor
            # pending then (released since, for a late refund).
            lots = {
                k: v
                for k, v in self.lots.items()
                if v.earned_at <= now and (v.release_at is None or v.release_at <= now)
            }
            from_available = 0
            if (
                own is not None
                and not pending_then
                and own.status == AVAILABLE
                and own.remaining
                and (own.expires_at is None or own.expires_at > now)
            ):
                take = min(left, own.remaining)
                moves.append(LotMove(own.lot_id, -take))
                lots[own.lot_id] = own.moved(-take)
                from_available += take
                left -= take
            avail_left = max(0, spendable_total(lots.values(), now) - self.debt)
            take = min(left, avail_left)
            if take:
                moves.extend(allocate(lots.values(), take, now))
                from_available += take
                left -= take
            owes = policy is ReturnPolicy.UNLIMITED
            spend = Spend(
                "refund", now, "", wanted, merge_moves(moves[pending_moves:]), order.lot_id, owes
            )
            if left and owes:
                from_available += left  # the balance goes negative by what is left
                left = 0
            postings += transfer(acc.AVAILABLE, acc.ISSUED, from_available)
        return merge_moves(moves), tuple(postings), left, already_expired, spend

    # ------------------------------------------------------------- redemptions

    def redeem(
        self,
        program: Program,
        *,
        redemption_id: str,
        reward_id: str | None,
        points: int | None,
        occurred_at: datetime,
        provenance: Provenance,
        now: datetime,
    ) -> None:
        known = self.redemptions.get(redemption_id)
        if known is not None and known.status != "withdrawn":
            raise Declined("duplicate_redemption", f"redemption {redemption_id} already exists")
        if reward_id is not None:
            reward = program.rewards.get(reward_id)
            if reward is None:
                raise Declined("unknown_reward", f"no reward {reward_id!r} in the catalog")
            points = reward.points
            what = f"{reward.name} ({reward_id})"
        else:
            what = "points"
        if points is None or points <= 0:
            raise Declined("invalid_points", "a redemption needs a positive number of points")
        self.prepare(program, now, provenance)
        if self._redeem_respent(
            program, redemption_id, reward_id, points, what, occurred_at, provenance
        ):
            return
        lots, instant = self._funding_at(program, occurred_at, points)
        available = spendable_total(lots.values(), occurred_at) - self.debt
        if points > available:
            raise Declined(
                "insufficient_points", f"{points} points requested, {available} available"
            )
        moves = allocate(lots.values(), points, occurred_at)
        # Of what a late redemption takes, points that have expired since its own time come
        # back from breakage (they were spent before they expired); the rest from the lots.
        from_lots: list[LotMove] = []
        from_expired = 0
        for move in moves:
            expired = lots[move.lot_id].remaining - self.lots[move.lot_id].remaining
            back = min(-move.amount, expired)
            from_expired += back
            if -move.amount - back:
                from_lots.append(LotMove(move.lot_id, move.amount + back))
        # When it took effect in event time: its own time, or later when it waited (parked)
        # for points earned after it; an earlier-dated earn arriving after that may take
        # its place (see _reallocate).
        spent_at = max([instant, *(lots[m.lot_id].earned_at for m in moves)])
        record = RedemptionRecord(
            redemption_id,
            points,
            reward_id,
            moves,
            "redeemed",
            spent_at,
            provenance.event_id,
            occurred_at,
        )
        note = f"redeemed {points} points for {what} (redemption {redemption_id})"
        if from_expired:
            note += f"; {from_expired} of them had expired since and come back from breakage"
        self._record(
            self.PointsRedeemed,
            effective_at=occurred_at,
            postings=transfer(acc.EXPIRED, acc.REDEEMED, from_expired)
            + transfer(acc.AVAILABLE, acc.REDEEMED, points - from_expired),
            moves=tuple(from_lots),
            provenance=replace(
                provenance,
                rule_id=f"reward:{reward_id}" if reward_id else "redeem:points",
                program_version=program.version,
                tier=self.tier_at(occurred_at),
            ),
            note=note,
            redemption=record,
        )

    def _funding(self, program: Program, at: datetime, points: int) -> dict[str, Lot]:
        """The lots a redemption dated `at` spends, as event-time order decides it: the lots
        as they stood at `at` (see _lots_as_of), and of the lots earned after it, those
        earned up to the first instant that covers `points`, before its parking deadline.
        In event time it waited (parked) for each later earn and was retried then, and was
        declined at the deadline; so a redemption that arrives after later earns never
        counts points earned after it stopped waiting, or after the earn that funded it."""
        return self._funding_at(program, at, points)[0]

    def _funding_at(
        self, program: Program, at: datetime, points: int
    ) -> tuple[dict[str, Lot], datetime]:
        """`_funding`, and the instant the redemption was funded at (a cancellation before
        its deadline giving back points held at `at` funds it as an earn does)."""
        back: list[GiveBack] = []
        lots = self._lots_as_of(at, back)
        deadline = at + timedelta(hours=program.arrival.park_hours)
        back = [b for b in back if b.moves and b.at < deadline]
        if not back and all(lot.earned_at <= at for lot in lots.values()):
            return lots, at  # the usual case: nothing recorded was earned after it
        funded = funded_with_back(lots, at, points + self.debt, deadline, back)
        if funded is None:  # never covered: what it had by its deadline, for the decline
            return {k: v for k, v in lots.items() if v.earned_at < deadline}, at
        instant, lots = funded
        return {k: v for k, v in lots.items() if v.earned_at <= instant}, instant

    # ------------------------------------------------------------ spends in time order

    def _spent(self, at: datetime) -> None:
        if self.last_spend_at is None or at > self.last_spend_at:
            self.last_spend_at = at

    def _apply_respent(self, respent: Respent) -> None:
        for record in respent.redemptions:
            self.redemptions[record.redemption_id] = record
            if record.at is not None:
                self._spent(record.at)  # funded anew, perhaps later than before
        for order in respent.orders:
            self.orders[order.order_id] = order
        for move in respent.unexpired:
            self.expired_by_lot[move.lot_id] = self.expired_by_lot.get(move.lot_id, 0) - move.amount

    def _later_spends(self, program: Program, at: datetime) -> list[Spend]:
        """The spends of available points recorded with an event time after `at`: none in
        the usual case (nothing recorded since), found at no cost."""
        if self.last_spend_at is None or self.last_spend_at <= at:
            return []
        wait = timedelta(hours=program.arrival.park_hours)
        found = [
            Spend(
                "redemption",
                r.at,
                r.redemption_id,
                r.points,
                r.moves,
                dated=r.dated,
                deadline=None if r.dated is None else r.dated + wait,
            )
            for r in self.redemptions.values()
            # A redemption dated before `at` keeps its points even if it was funded after
            # (it waited): redemptions take in the order of their own times, as parked
            # events are retried oldest first.
            if r.status == "redeemed" and r.at is not None and (r.dated or r.at) > at
        ]
        # A redemption cancelled since held its points from its time until it was
        # cancelled: spends in between found them taken.
        found += [
            Spend(
                "redemption",
                r.at,
                r.redemption_id,
                r.points,
                r.moves,
                dated=r.dated,
                deadline=None if r.dated is None else r.dated + wait,
                cancelled_at=r.cancelled_at,
            )
            for r in self.redemptions.values()
            if r.status == "cancelled"
            and r.cancelled_at is not None
            and r.at is not None
            and (
                (r.dated or r.at) > at
                # One that waited past `at` (funded after it, or it took nothing: in event
                # time it waited and was cancelled while waiting): a late earn dated `at`
                # may fund it then.
                or ((r.dated or r.at) <= at < r.cancelled_at and (not r.moves or r.at > at))
            )
        ]
        # One dated and funded before and cancelled after held what it took until its
        # cancellation.
        found += [
            Spend("held", r.at, r.redemption_id, r.points, r.moves, cancelled_at=r.cancelled_at)
            for r in self.redemptions.values()
            if r.status == "cancelled"
            and r.cancelled_at is not None
            and r.at is not None
            and r.moves
            and r.at <= at
            and (r.dated or r.at) <= at < r.cancelled_at
        ]
        for order in self.orders.values():
            for step in order.refunds:
                if step.at > at and step.taken_from is not None:
                    key = f"{order.order_id}/{step.refund_id}"
                    found.append(
                        Spend(
                            "refund",
                            step.at,
                            key,
                            step.wanted,
                            step.taken_from,
                            order.lot_id,
                            step.owes,
                            expired=step.expired,
                        )
                    )
        return found

    def _settled_since(
        self, later: list[Spend], since: datetime, lots: Mapping[str, Lot]
    ) -> tuple[dict[str, int], int] | None:
        """What the points that came at or after `since` (lots earned or released) settled
        of a balance below zero, by lot (`Lot.settled`), and what was owed at `since` in
        event time, so a re-take can give it back and settle again in event-time order
        (`lots`: the copy, the spends in `later` and the points expired since given back).
        What was owed at `since` is what they settled (also of a debt older than `since`),
        plus what is owed now, less what the refunds in `later` owed when recorded. None
        when not known (a cancellation or a hold since, which may have settled some of it
        with points of a lot that came before; some of their points expired before
        `since`; or the figures do not add up): then the re-take keeps the recorded
        spends."""
        owing = [
            s
            for s in later
            if s.kind == "refund" and s.owes and s.wanted + sum(m.amount for m in s.moves)
        ]
        owed_later = sum(s.wanted + sum(m.amount for m in s.moves) for s in owing)
        first = min([since, *(s.at for s in owing)])

        def came(lot_id: str) -> datetime:
            lot = lots[lot_id]
            return max(lot.earned_at, lot.release_at or lot.earned_at)

        gaps = {
            lot_id: lot.settled
            for lot_id in self.settled_lots
            if (lot := lots[lot_id]).settled and lot.status == AVAILABLE and came(lot_id) >= first
        }
        # A cancellation since settled with the points it gave back to lots that came
        # before: what it settled (kept on its record) goes back too.
        for r in self.redemptions.values():
            if r.cancelled_at is None or r.cancelled_at <= first:
                continue
            if r.settled is None:
                if any(lots[m.lot_id].settled and came(m.lot_id) < first for m in r.moves):
                    return None  # cancelled before what it settled was kept: not known
                continue
            for m in r.settled:
                if came(m.lot_id) < first and lots[m.lot_id].status == AVAILABLE:
                    gaps[m.lot_id] = gaps.get(m.lot_id, 0) + m.amount
        if any(points > lots[lot_id].settled for lot_id, points in gaps.items()):
            return None  # the figures do not add up
        if not owed_later and not self.debt and not gaps:
            return {}, 0
        owed_then = sum(gaps.values()) + self.debt - owed_later
        if owed_then < 0:
            return None
        held = {m.lot_id for h in self.holds.values() for m in h.moves}
        if any(
            lot_id in held
            or (
                self.expired_by_lot.get(lot_id, 0)
                and (exp := lots[lot_id].expires_at) is not None
                and exp <= since
            )
            for lot_id in gaps
        ):
            # A hold took from them, or some of their points expired before `since` (those
            # expired since are back in `lots`, and expire again after the re-take).
            return None
        return gaps, owed_then

    def _unsettled(self, later: list[Spend], since: datetime, lots: dict[str, Lot]) -> int | None:
        """`lots` (the copy) with what points that came at or after `since` settled given
        back (`_settled_since`); what was owed at `since` (to settle again first), None
        when not known."""
        settled = self._settled_since(later, since, lots)
        if settled is None:
            return None
        gaps, owed_then = settled
        for lot_id, points in gaps.items():
            lot = lots[lot_id]
            lots[lot_id] = replace(lot, remaining=lot.remaining + points).settling(-points)
        return owed_then

    def _settled_again(
        self, lots: Mapping[str, Lot], since: datetime, unexpired: Mapping[str, int]
    ) -> bool:
        """Whether a lot that came at or after `since` holds other points in the re-take's
        copy `lots` than now (points expired since, put back in the copy, left aside)."""
        return any(
            lot.remaining - unexpired.get(lot_id, 0) != self.lots[lot_id].remaining
            for lot_id, lot in lots.items()
            if lot.status == AVAILABLE
            and max(lot.earned_at, lot.release_at or lot.earned_at) >= since
        )

    def _waited_past(self, program: Program, at: datetime) -> list[Spend]:
        """Redemptions dated before `at` but funded after it: they waited (parked) for
        points, so an earn dated `at`, read late, would have funded them from its time.
        `_later_spends` leaves them out (a late spend dated `at` comes after them)."""
        wait = timedelta(hours=program.arrival.park_hours)
        return [
            Spend(
                "redemption",
                r.at,
                r.redemption_id,
                r.points,
                r.moves,
                dated=r.dated,
                deadline=r.dated + wait,
            )
            for r in self.redemptions.values()
            if r.status == "redeemed" and r.at is not None and r.dated is not None
            if r.dated <= at <= r.at and r.dated < r.at
        ]

    def _unexpired(self, at: datetime, later: Iterable[Spend] = ()) -> dict[str, int]:
        """The points that expired after `at`, by lot: spends dated before could use them.
        Also those a redemption cancelled after `at` (in `later`, held then) gave back to
        a lot whose expiry had passed: they expired at once, after its cancellation."""
        out = {
            lot_id: points
            for lot_id, points in self.expired_by_lot.items()
            if points and (exp := self.lots[lot_id].expires_at) is not None and exp > at
        }
        for spend in later:
            if spend.kind != "held" or spend.cancelled_at is None:
                continue
            for move in merge_moves(spend.moves):
                lot = self.lots[move.lot_id]
                if lot.expires_at is None or lot.expires_at > at:
                    continue
                room = self.expired_by_lot.get(move.lot_id, 0) - out.get(move.lot_id, 0)
                back = min(-move.amount, room)
                if back > 0:
                    out[move.lot_id] = out.get(move.lot_id, 0) + back
        return out

    def _taken_again(
        self,
        lots: dict[str, Lot],
        later: list[Spend],
        since: datetime | None = None,
        records: Mapping[str, OrderRecord] | None = None,
        owed: int = 0,
        unsettled: bool = False,
        unexpired: dict[str, int] | None = None,
    ) -> tuple[list[RedemptionRecord], dict[str, OrderRecord], list[Posting], str] | None:
        """Each later spend takes again from `lots` (in place), in event-time order. A
        refund that finds too few points under the unlimited policy owes the rest (the
        balance goes below zero), and the points that come after it in event time (earned,
        released, given back by a cancellation) settle that debt first, as in time order
        (`_settle_again`); a redemption decided while points are still owed finds none
        (withdrawn: it waits again). None when a later spend had left points owed when
        recorded (the earnings that settled them
        are not known, unless `unsettled`: `lots` have what they settled back, see
        `_unsettled`): those cases keep the recorded spends. `owed`: what the late spend
        itself left owed at `since`.

        `since` is the late event's time (default: the earliest later spend's): a refund
        whose order's lot expires after it, and that counted points of that lot as already
        expired, counts again what the lot held at its expiry (spends.expired_again).
        `records`: order records to start from instead of the account's (changed since).
        `unexpired`: the points put back in `lots` from expiry (the caller's, in place):
        those left in a lot that expired before points were owed stay expired (they could
        not settle the debt)."""
        redemptions: list[RedemptionRecord] = []
        orders: dict[str, OrderRecord] = {}
        postings: list[Posting] = []
        notes: list[str] = []
        done: list[Taken] = []
        # Cancelled redemptions, until their cancellation (those dated before: from now).
        holding = [Taken(s, s.moves, s.wanted, 0) for s in later if s.kind == "held"]
        if since is None:
            since = min((s.dated or s.at for s in later if s.kind != "held"), default=None)
        credited: dict[str, int] = {}  # expired points counted by the refunds taken again
        was_expired: dict[str, int] = {}  # by spend key, as recorded
        was_owed: dict[str, int] = {}  # by spend key: what it left owed, as recorded
        for s in later:
            if s.kind == "refund" and s.owes:
                was_owed[s.key] = s.wanted + sum(m.amount for m in s.moves)
        if any(was_owed.values()) and not unsettled:
            return None  # the earnings that settled it are not known here
        debt = _Debt(owed, since if owed else None)
        gave: dict[str, list[LotMove]] = {}  # what each cancelled one's points settled
        for recorded in in_order(s for s in later if s.kind != "held"):
            spend = recorded
            if not _give_back(lots, holding, spend.dated or spend.at, debt, gave):
                return None  # what they held is not back in the copy: as recorded
            _settle_again(lots, debt, spend.dated or spend.at)
            own = lots.get(spend.own_lot) if spend.own_lot else None
            if (
                spend.kind == "refund"
                and own is not None
                and since is not None
                and own.expires_at is not None
                and own.expires_at > since
            ):
                was_expired[spend.key] = spend.expired
                spend = expired_again(lots, spend, credited.get(own.lot_id, 0))
                credited[own.lot_id] = credited.get(own.lot_id, 0) + spend.expired
            elif spend.kind == "refund" and own is not None and own.remaining:
                # Its lot had expired by the late event, which put points back into it (a
                # cancellation): they expired at once, before this refund.
                was_expired[spend.key] = spend.expired
                spend = expired_more(lots, spend, credited.get(own.lot_id, 0))
                credited[own.lot_id] = credited.get(own.lot_id, 0) + (
                    spend.expired - was_expired[spend.key]
                )
            if spend.kind == "redemption":
                back = [
                    GiveBack(t.spend.cancelled_at, t.moves) for t in holding if t.spend.cancelled_at
                ]
                # With points still owed at its time, every point there then went to settle
                # them (`_settle_again`): it finds none, as a redemption read in time does.
                again = None if debt.owed else redeem_again(lots, spend, back)
                if again is not None and spend.cancelled_at is not None:
                    holding.append(again)
                if again is None and spend.cancelled_at is not None:
                    # In event time it waited and was cancelled while waiting: it took
                    # nothing, held nothing and gave nothing back.
                    record = self.redemptions[spend.key]
                    if record.moves:
                        redemptions.append(replace(record, moves=(), settled=()))
                        notes.append(
                            f"redemption {spend.key} took nothing: in event time it waited "
                            "for points and was cancelled while waiting"
                        )
                    continue
                if again is None:
                    # Never funded in event time: it goes back to waiting for points.
                    record = self.redemptions[spend.key]
                    if record.event_id is None or record.dated is None:
                        return None  # recorded before 0.3: kept as it is
                    redemptions.append(replace(record, moves=(), status="withdrawn"))
                    postings += transfer(acc.REDEEMED, acc.AVAILABLE, spend.wanted)
                    notes.append(
                        f"redemption {spend.key} withdrawn: in event time the points it "
                        "spent were not there; it waits for points again"
                    )
                    continue
                done.append(again)
                continue
            taken = take(lots, spend, spend.at)
            if taken.owed:
                debt.since = debt.since if debt.owed else spend.at
                debt.owed += taken.owed
            done.append(taken)
        if not _give_back(lots, holding, None, debt, gave):
            return None  # what they held is not back in the copy: as recorded
        if any(lot.remaining < 0 for lot in lots.values()):
            return None  # a lot the copy cannot make whole: as recorded
        _settle_again(lots, debt, None)
        if debt.owed and unexpired is not None and debt.since is not None:
            _expired_again(lots, unexpired, debt.since)
        if debt.owed and any(v.remaining > 0 for v in lots.values() if v.status == AVAILABLE):
            return None  # points left that did not settle it (expired before): as recorded
        for t in done:
            spend = t.spend
            if spend.kind == "redemption":
                record = self.redemptions[spend.key]
                if spend.key in gave:
                    record = replace(record, settled=merge_moves(gave.pop(spend.key)))
                if set(t.moves) == set(record.moves) and t.at == record.at:
                    if record != self.redemptions[spend.key]:
                        redemptions.append(record)  # its cancellation settles otherwise
                    continue
                redemptions.append(replace(record, moves=t.moves, at=t.at))
                notes.append(f"redemption {spend.key} now takes from {self._lot_names(t.moves)}")
                continue
            expired_before = was_expired.get(spend.key, spend.expired)
            if set(t.moves) == set(spend.moves) and spend.expired == expired_before:
                continue
            order_id, refund_id = spend.key.split("/", 1)
            before = -sum(m.amount for m in spend.moves) + was_owed.get(spend.key, 0)
            order = orders.get(order_id) or (records or {}).get(order_id) or self.orders[order_id]
            steps = tuple(
                replace(st, taken_from=t.moves, wanted=spend.wanted, expired=spend.expired)
                if st.refund_id == refund_id
                else st
                for st in order.refunds
            )
            orders[order_id] = replace(
                order,
                refunds=steps,
                expired_credited=order.expired_credited + spend.expired - expired_before,
            )
            if t.taken + t.owed > before:
                postings += transfer(acc.AVAILABLE, acc.ISSUED, t.taken + t.owed - before)
            elif t.taken + t.owed < before:
                postings += transfer(acc.ISSUED, acc.AVAILABLE, before - t.taken - t.owed)
            notes.append(
                f"refund {refund_id} of order {order_id} now takes back {t.taken + t.owed} "
                + (f"({t.owed} of them owed) " if t.owed else "")
                + f"(was {before}; {t.short} kept by the member"
                + (
                    f"; {spend.expired} had expired, was {expired_before})"
                    if spend.expired != expired_before
                    else ")"
                )
            )
        for key, moves in gave.items():  # held from before: their cancellations settle anew
            record = self.redemptions[key]
            if record.settled != (now := merge_moves(moves)):
                redemptions.append(replace(record, settled=now))
        note = "; " + "; ".join(notes) + " (dated after it, recorded before)" if notes else ""
        return redemptions, orders, postings, note

    def _lot_names(self, moves: Iterable[LotMove]) -> str:
        return ", ".join(f"{-m.amount} of {self.lots[m.lot_id].source}" for m in moves)

    def _net_moves(self, lots: Mapping[str, Lot]) -> tuple[LotMove, ...]:
        return tuple(
            LotMove(lot_id, lot.remaining - self.lots[lot_id].remaining)
            for lot_id, lot in lots.items()
            if lot.remaining != self.lots[lot_id].remaining
        )

    def _redeem_respent(
        self,
        program: Program,
        redemption_id: str,
        reward_id: str | None,
        points: int,
        what: str,
        occurred_at: datetime,
        provenance: Provenance,
    ) -> bool:
        """A redemption dated before spends already recorded (read late): it spends as of
        its own time, and each later spend takes again after it (domain/spends.py).
        False when there is nothing later, or when a later spend would be left owing."""
        later = self._later_spends(program, occurred_at)
        if not later:
            return False
        # Redemptions dated before it that waited past its time (funded after it, or
        # cancelled since) were retried first in event time (oldest first): they are
        # funded again first in the copy, a cancelled one holding until its cancellation.
        waited = [
            s for s in self._waited_past(program, occurred_at) if (s.dated or s.at) < occurred_at
        ]
        waited += [
            s
            for s in later
            if s.kind == "redemption"
            and s.cancelled_at is not None
            and (s.dated or s.at) < occurred_at
        ]
        for spend in waited:
            if spend in later:
                later.remove(spend)
        unexpired = self._unexpired(occurred_at, later)
        lots = restored(self.lots, unexpired, [*later, *waited])
        if self._unsettled(later, occurred_at, lots) != 0:
            return False  # not known, or decided while points are owed: the usual path
        deadline = occurred_at + timedelta(hours=program.arrival.park_hours)
        # Cancellations dated after it give back what they held: they may fund it too.
        back = [
            GiveBack(s.cancelled_at, s.moves) for s in later if s.kind == "held" if s.cancelled_at
        ]
        first: dict[str, RedemptionRecord] = {}
        for spend in in_order(waited):
            record = self.redemptions[spend.key]
            taken = redeem_again(lots, spend, back)
            if taken is None and spend.cancelled_at is None:
                return False  # one it waited behind would wait again: the usual path
            if taken is None:  # cancelled while it waited: it took nothing
                first[spend.key] = replace(record, moves=(), settled=())
                continue
            first[spend.key] = replace(record, moves=taken.moves, at=taken.at)
            if spend.cancelled_at is None:
                continue  # it keeps what it takes
            held = replace(spend, kind="held", moves=taken.moves, at=taken.at or spend.at)
            later.append(held)
            back.append(GiveBack(spend.cancelled_at, taken.moves))
        funded = funded_with_back(lots, occurred_at, points, deadline, back)
        if funded is None:
            return False  # the usual path declines it (it may wait)
        instant, work = funded
        mine = take_given_back(
            lots,
            work,
            Spend("redemption", occurred_at, redemption_id, points),
            occurred_at,
            instant,
        )
        again = self._taken_again(lots, later, occurred_at, unsettled=True, unexpired=unexpired)
        if again is None:
            return False
        redemptions, orders, postings, note = again
        if first:  # what the re-take says of them (their settles) on their new moves
            settled = {r.redemption_id: r.settled for r in redemptions}
            first = {
                key: replace(r, settled=settled.get(key, r.settled)) for key, r in first.items()
            }
            redemptions = [r for r in redemptions if r.redemption_id not in first] + [
                r for key, r in first.items() if r != self.redemptions[key]
            ]
            for key, r in first.items():
                if r.moves != self.redemptions[key].moves:
                    note += (
                        f"; redemption {key}, dated before it and waiting then, now takes "
                        f"from {self._lot_names(r.moves)}"
                        if r.moves
                        else f"; redemption {key} took nothing: it waited and was cancelled"
                    )
        record = RedemptionRecord(
            redemption_id,
            points,
            reward_id,
            mine.moves,
            "redeemed",
            instant,
            provenance.event_id,
            occurred_at,
        )
        self._record(
            self.PointsRedeemed,
            effective_at=occurred_at,
            postings=transfer(acc.EXPIRED, acc.AVAILABLE, sum(unexpired.values()))
            + tuple(postings)
            + transfer(acc.AVAILABLE, acc.REDEEMED, points),
            moves=self._net_moves(lots),
            settles=self._net_settles(lots),
            provenance=replace(
                provenance,
                rule_id=f"reward:{reward_id}" if reward_id else "redeem:points",
                program_version=program.version,
                tier=self.tier_at(occurred_at),
            ),
            note=f"redeemed {points} points for {what} (redemption {redemption_id})" + note,
            redemption=record,
            respent=Respent.of(redemptions, orders, unexpired),
        )
        self.catch_up(program)  # points put back from expiry whose expiry has passed
        return True

    def _cancel_respent(
        self,
        program: Program,
        record: RedemptionRecord,
        reason: str | None,
        occurred_at: datetime,
        provenance: Provenance,
    ) -> bool:
        """A cancellation dated before spends already recorded (read late): its points go
        back as of its own time, and each later spend takes again after it. False when
        there is nothing later, or when a later spend would be left owing."""
        rid = record.redemption_id
        if self.last_spend_at is None or self.last_spend_at <= occurred_at:
            return False  # nothing spent, funded or cancelled after it: the usual case
        # A redemption dated before it and funded after it waited for points: the points
        # given back at its time would have funded it then, as a late earn's would.
        later = [
            s
            for s in self._later_spends(program, occurred_at)
            + self._waited_past(program, occurred_at)
            if not (s.kind == "redemption" and s.key == rid)
        ]
        if not later:
            return False
        unexpired = self._unexpired(occurred_at, later)
        lots = restored(self.lots, unexpired, later)
        owed_then = self._unsettled(later, occurred_at, lots)
        if owed_then is None:
            return False  # not known: the usual path
        settled: list[LotMove] = []
        # Redemptions dated before it that waited past its time: it held its points from
        # its own time until now in event time (a redemption dated before theirs takes
        # first), so in the copy it holds them until its time and gives them back then.
        held = not owed_then and any(
            s.kind == "redemption" and (s.dated or s.at) < occurred_at for s in later
        )
        if held:
            at = record.at or record.dated or occurred_at
            later.append(
                Spend("held", at, rid, record.points, record.moves, cancelled_at=occurred_at)
            )
        else:
            for move in record.moves:
                lots[move.lot_id] = replace(
                    lots[move.lot_id], remaining=lots[move.lot_id].remaining - move.amount
                )
            # What it gives back settles what was owed at its time first, as a
            # cancellation read in time settles a balance below zero (`_settle_late`).
            for move in record.moves:
                take = min(owed_then, -move.amount)
                if take:
                    lots[move.lot_id] = lots[move.lot_id].moved(-take).settling(take)
                    owed_then -= take
                    settled.append(LotMove(move.lot_id, take))
        again = self._taken_again(
            lots, later, occurred_at, owed=owed_then, unsettled=True, unexpired=unexpired
        )
        if again is None:
            return False
        redemptions, orders, postings, note = again
        if held:  # what its points settled in the copy is on its own entry
            mine = [r for r in redemptions if r.redemption_id == rid]
            redemptions = [r for r in redemptions if r.redemption_id != rid]
            settled = list(mine[0].settled or ()) if mine else []
        self._record(
            self.RedemptionCancelled,
            effective_at=occurred_at,
            postings=transfer(acc.EXPIRED, acc.AVAILABLE, sum(unexpired.values()))
            + tuple(postings)
            + transfer(acc.REDEEMED, acc.AVAILABLE, record.points),
            moves=self._net_moves(lots),
            settles=self._net_settles(lots),
            provenance=replace(
                provenance, rule_id="redeem:cancel", program_version=program.version, tier=self.tier
            ),
            note=f"redemption {rid} cancelled: {record.points} points back to their lots with "
            "their original expiry" + note,
            redemption_id=rid,
            points=record.points,
            reason=reason,
            respent=Respent.of(redemptions, orders, unexpired),
            settled=merge_moves(settled),
        )
        self.advance(program, occurred_at)  # points back to a lot past its expiry expire
        self.catch_up(program)
        return True

    def _respend_refund(
        self, program: Program, order: OrderRecord, amount: int, at: datetime
    ) -> (
        tuple[
            tuple[LotMove, ...],
            tuple[Posting, ...],
            int,
            int,
            Spend | None,
            Respent,
            str,
            tuple[LotMove, ...],
        ]
        | None
    ):
        """A refund dated before spends already recorded (read late): it takes back as of
        its own time, and each later spend takes again after it. None when there is
        nothing later, or when it or a later spend would be left owing: then the usual
        clawback applies, on the lots as they are."""
        policy = program.returns.policy
        if policy is ReturnPolicy.PENDING_ONLY:
            return None
        later = self._later_spends(program, at)
        late = self.worked_to is not None and at < self.worked_to
        unexpired = self._unexpired(at, later) if later or late else {}
        # Its own points expired after its time: in event time it took them back first.
        own_expired_since = order.lot_id is not None and order.lot_id in self._unexpired(at)
        # Late under the unlimited policy: what it owes is settled first by the points that
        # came after its time (earned, released), as in time order.
        owes_late = policy is ReturnPolicy.UNLIMITED and any(
            max(v.earned_at, v.release_at or v.earned_at) > at
            for v in self.lots.values()
            if v.status == AVAILABLE and v.remaining > 0
        )
        if not later and not own_expired_since and not owes_late and not unexpired:
            return None
        lots = restored(self.lots, unexpired, later)
        owed_then = self._unsettled(later, at, lots)
        if owed_then is None:
            return None
        postings: list[Posting] = []
        left = amount
        own = lots.get(order.lot_id) if order.lot_id else None
        pending_then = own is not None and (
            own.status == PENDING or (own.release_at is not None and own.release_at > at)
        )
        if left and own is not None and pending_then and own.remaining:
            # Its own points were pending at its time: taken first, from the sub-account
            # they are in now (released since, they are available).
            pending = min(left, own.remaining)
            lots[own.lot_id] = own.moved(-pending)
            source = acc.PENDING if own.status == PENDING else acc.AVAILABLE
            postings += transfer(source, acc.ISSUED, pending)
            left -= pending
        already_expired = 0
        if left and own is not None and own.lot_id not in unexpired:
            expired = self.expired_by_lot.get(own.lot_id, 0) - order.expired_credited
            already_expired = min(left, max(0, expired))
            left -= already_expired
        spend = Spend("refund", at, "", left, (), order.lot_id, policy is ReturnPolicy.UNLIMITED)
        mine = take(lots, spend, at) if left else Taken(spend, (), 0, 0)
        if (
            not later
            and not own_expired_since
            and not mine.owed
            and not any(m.lot_id in unexpired for m in mine.moves)
        ):
            # Nothing owed, nothing to take again, nothing taken of points that expired
            # since (the lots as they are no longer hold them): the usual clawback.
            return None
        again = self._taken_again(
            lots, later, at, owed=owed_then + mine.owed, unsettled=True, unexpired=unexpired
        )
        if again is None:
            return None
        redemptions, orders, again_postings, note = again
        postings += transfer(acc.AVAILABLE, acc.ISSUED, mine.taken + mine.owed)
        postings = [
            *transfer(acc.EXPIRED, acc.AVAILABLE, sum(unexpired.values())),
            *postings,
            *again_postings,
        ]
        respent = Respent.of(redemptions, orders, unexpired)
        spent = replace(spend, moves=mine.moves)
        return (
            self._net_moves(lots),
            tuple(postings),
            mine.short,
            already_expired,
            spent,
            respent,
            note,
            self._net_settles(lots),
        )

    def _lots_as_of(self, at: datetime, back: list[GiveBack] | None = None) -> dict[str, Lot]:
        """The lots as they stood at `at` for spending: as they are, except for an event
        dated before work already recorded (late), where points that expired after `at`
        count as still there, lots released after `at` as still pending, and the points a
        redemption cancelled after `at` held then (a cancellation is a spend: it moves
        `last_spend_at`) as not there (added to `back`: what each gives back then)."""
        late = self.worked_to is not None and at < self.worked_to
        held = self.last_spend_at is not None and at < self.last_spend_at
        if not late and not held:
            return self.lots
        lots = dict(self.lots)
        for lot_id, lot in self.lots.items() if late else ():
            if lot.release_at is not None and lot.release_at > at and lot.status == AVAILABLE:
                lots[lot_id] = replace(lot, status=PENDING)
            expired = self.expired_by_lot.get(lot_id, 0)
            if expired and lot.expires_at is not None and lot.expires_at > at:
                lots[lot_id] = replace(lots[lot_id], remaining=lot.remaining + expired)
        if held:
            given = self._held_then(lots, at)
            if back is not None:
                back += given
        return lots

    def _held_then(self, lots: dict[str, Lot], at: datetime) -> list[GiveBack]:
        """The points redemptions cancelled after `at` held then, taken out of `lots` (in
        place); what each gives back at its cancellation."""
        back: list[GiveBack] = []
        for r in self.redemptions.values():
            if (
                r.status == "cancelled"
                and r.cancelled_at is not None
                and r.at is not None
                and r.at <= at < r.cancelled_at
            ):
                out: list[LotMove] = []
                for move in r.moves:
                    lot = lots[move.lot_id]
                    if lot.expires_at is not None and lot.expires_at <= at:
                        continue  # expired by then: nothing of it is spendable anyway
                    held = min(lot.remaining, -move.amount)
                    lots[move.lot_id] = replace(lot, remaining=lot.remaining - held)
                    if held:
                        out.append(LotMove(move.lot_id, -held))
                back.append(GiveBack(r.cancelled_at, tuple(out)))
        return back

    def cancel_redemption(
        self,
        program: Program,
        *,
        redemption_id: str,
        reason: str | None,
        occurred_at: datetime,
        provenance: Provenance,
        now: datetime,
    ) -> None:
        record = self.redemptions.get(redemption_id)
        if record is None:
            raise Declined("unknown_redemption", f"no redemption {redemption_id}")
        if (deadline := _stopped_waiting(program, occurred_at, record.at)) is not None:
            raise Declined(
                "unknown_redemption",
                f"redemption {redemption_id} was made after this cancellation's deadline "
                f"({deadline.isoformat()})",
            )
        if record.status == "withdrawn":
            raise Declined("unknown_redemption", f"redemption {redemption_id} waits for points")
        if record.status != "redeemed":
            raise Declined("already_cancelled", f"redemption {redemption_id} was cancelled")
        self.prepare(program, now, provenance)
        if self._cancel_respent(program, record, reason, occurred_at, provenance):
            return
        restore = tuple(LotMove(m.lot_id, -m.amount) for m in record.moves)
        # What it gives back settles a balance below zero first, before points that came
        # after its time in event time (`_settle_late`).
        settle = self._settle_late(restore, occurred_at, now)
        own = {m.lot_id for m in restore}
        note = f"redemption {redemption_id} cancelled: {record.points} points back to their lots"
        self._record(
            self.RedemptionCancelled,
            effective_at=occurred_at,
            postings=transfer(acc.REDEEMED, acc.AVAILABLE, record.points),
            moves=restore + settle,
            settles=_settles_of(settle),
            provenance=replace(
                provenance,
                rule_id="redeem:cancel",
                program_version=program.version,
                tier=self.tier,
            ),
            note=note + " with their original expiry",
            redemption_id=redemption_id,
            points=record.points,
            reason=reason,
            settled=merge_moves(
                LotMove(m.lot_id, -m.amount) for m in settle if m.lot_id in own and m.amount < 0
            ),
        )
        # Points that went back to a lot whose expiry has passed expire at once.
        self.advance(program, now)
        self.catch_up(program)

    # ------------------------------------------------------------------ holds

    def place_hold(
        self,
        program: Program,
        *,
        reference: str,
        points: int,
        expires_at: datetime,
        provenance: Provenance,
        now: datetime,
    ) -> HoldRecord:
        """Set `points` aside until `expires_at`; the same reference again returns that hold."""
        hid = hold_id(self.member_id, reference)
        existing = self.holds.get(hid)
        if existing is not None:
            if existing.points != points:
                raise Declined(
                    "reference_conflict",
                    f"reference {reference} already holds {existing.points} points, not {points}",
                )
            return existing
        if points <= 0:
            raise Declined("invalid_points", "a hold needs a positive number of points")
        if expires_at <= now:
            raise Declined("invalid_ttl", "a hold must expire in the future")
        self.prepare(program, now, provenance)
        available = self.spendable(now)
        if points > available:
            raise Declined(
                "insufficient_points", f"{points} points requested, {available} available"
            )
        moves = allocate(self.lots.values(), points, now)
        record = HoldRecord(hid, reference, points, moves, now, expires_at)
        self._record(
            self.HoldPlaced,
            effective_at=now,
            postings=transfer(acc.AVAILABLE, acc.HELD, points),
            moves=moves,
            provenance=self._provenance(program, provenance, "hold:place"),
            note=f"{points} points held for {reference} until {expires_at.isoformat()}",
            holds_after={**self.holds, hid: record},
            hold_id=hid,
            reference=reference,
            points=points,
            hold=record,
        )
        return record

    def capture_hold(
        self,
        program: Program,
        *,
        hold: str,
        points: int | None,
        provenance: Provenance,
        now: datetime,
    ) -> HoldRecord:
        """Redeem `points` of a hold (all of it by default); the rest goes back to its lots."""
        record = self._open_hold(program, hold, now)
        captured = record.points if points is None else points
        if not 0 < captured <= record.points:
            raise Declined(
                "invalid_points",
                f"capture between 1 and {record.points} points, not {captured}",
            )
        _, back = split_capture(record.moves, captured)  # the captured part left at placing
        released = record.points - captured
        done = replace(record, status=CAPTURED, captured=captured, resolved_at=now)
        note = f"hold for {record.reference}: {captured} points redeemed"
        if released:
            note += f", {released} back to their lots with their original expiry"
        self._record(
            self.HoldCaptured,
            effective_at=now,
            postings=transfer(acc.HELD, acc.REDEEMED, captured)
            + transfer(acc.HELD, acc.AVAILABLE, released),
            moves=merge_moves((*back, *self._settle_back(back))),
            settles=_settles_of(self._settle_back(back)),
            provenance=self._provenance(program, provenance, "hold:capture"),
            note=note,
            holds_after={**self.holds, hold: done},
            hold_id=hold,
            points=captured,
            returned=released,
            hold=done,
        )
        self.advance(program, now)  # returned points on a lot already past its expiry expire now
        return done

    def void_hold(
        self,
        program: Program,
        *,
        hold: str,
        reason: str | None,
        provenance: Provenance,
        now: datetime,
    ) -> HoldRecord:
        """Cancel a hold: every point goes back to the lot it came from."""
        record = self._open_hold(program, hold, now)
        done = replace(record, status=VOIDED, resolved_at=now)
        self._record(
            self.HoldVoided,
            effective_at=now,
            postings=transfer(acc.HELD, acc.AVAILABLE, record.points),
            moves=merge_moves((*_returned(record), *self._settle_back(_returned(record)))),
            settles=_settles_of(self._settle_back(_returned(record))),
            provenance=self._provenance(program, provenance, "hold:void"),
            note=f"hold for {record.reference} voided: {record.points} points back to "
            "their lots with their original expiry" + (f" ({reason})" if reason else ""),
            holds_after={**self.holds, hold: done},
            hold_id=hold,
            points=record.points,
            reason=reason,
            hold=done,
        )
        self.advance(program, now)
        return done

    def _open_hold(self, program: Program, hold: str, now: datetime) -> HoldRecord:
        if hold not in self.holds:
            raise Declined("unknown_hold", f"{self.member_id} has no hold {hold}")
        self.advance(program, now)  # a hold past its TTL expires first; not resolved again
        record = self.holds[hold]
        if not record.is_open:
            raise Declined("hold_resolved", f"hold {hold} was already {record.status}")
        return record

    def _next_hold_due(self, now: datetime) -> HoldRecord | None:
        due = [h for h in self.holds.values() if h.is_open and h.expires_at <= now]
        return min(due, key=lambda h: (h.expires_at, h.hold_id)) if due else None

    def _expire_hold(self, record: HoldRecord) -> None:
        at = record.expires_at
        done = replace(record, status=EXPIRED, resolved_at=at)
        prov = Provenance(SCHEDULER, program_version=None, tier=self.tier, rule_id="hold:expiry")
        self._record(
            self.HoldExpired,
            effective_at=at,
            postings=transfer(acc.HELD, acc.AVAILABLE, record.points),
            moves=merge_moves((*_returned(record), *self._settle_back(_returned(record)))),
            settles=_settles_of(self._settle_back(_returned(record))),
            provenance=prov,
            note=f"hold for {record.reference} expired: {record.points} points back to "
            "their lots with their original expiry",
            holds_after={**self.holds, record.hold_id: done},
            hold_id=record.hold_id,
            points=record.points,
            hold=done,
        )

    def _settle_back(self, back: tuple[LotMove, ...]) -> tuple[LotMove, ...]:
        """What of the points going back to lots settles a negative balance first (as later
        earnings do): moves taking them again."""
        settle: list[LotMove] = []
        debt = self.debt
        for move in back:
            if debt <= 0:
                break
            take = min(debt, move.amount)
            settle.append(LotMove(move.lot_id, -take))
            debt -= take
        return tuple(settle)

    def _provenance(self, program: Program, provenance: Provenance, rule: str) -> Provenance:
        """The command's provenance with its rule, the program version and the tier."""
        return replace(provenance, rule_id=rule, program_version=program.version, tier=self.tier)

    # ------------------------------------------------------------- operations

    def adjust(
        self,
        program: Program,
        *,
        points: int,
        reason: str,
        actor: str,
        allow_negative: bool,
        provenance: Provenance,
        now: datetime,
    ) -> None:
        if not reason.strip():
            raise Declined("reason_required", "an adjustment needs a reason")
        if not actor.strip():
            raise Declined("actor_required", "an adjustment needs the operator's id")
        if points == 0:
            raise Declined("invalid_points", "an adjustment of zero points changes nothing")
        request_id = provenance.origin.request_id
        if request_id and request_id in self.adjustment_requests:
            _, earlier_points, earlier_reason = self.adjustment_requests[request_id]
            if (earlier_points, earlier_reason) != (points, reason):
                raise Declined(
                    "request_conflict",
                    f"request {request_id} already adjusted {earlier_points:+d} ({earlier_reason})",
                )
            return  # a retry of a request already applied: nothing new
        self.prepare(program, now, provenance)
        prov = replace(
            provenance, rule_id="adjustment", program_version=program.version, tier=self.tier
        )
        new_lots: tuple[Lot, ...] = ()
        if points > 0:
            lot_id = self._next_lot_id()
            new_lots = (
                Lot(
                    lot_id=lot_id,
                    amount=points,
                    remaining=points,
                    status=AVAILABLE,
                    earned_at=now,
                    release_at=None,
                    expires_at=expiry_for(program, now),
                    source="adjustment",
                    program_version=program.version,
                ),
            )
            moves = self._settle_moves(lot_id, points)
            settles = _settles_of(moves)
        else:
            wanted = -points
            available = max(0, self.spendable(now))
            if wanted > available and not allow_negative:
                raise Declined(
                    "insufficient_points",
                    f"cannot remove {wanted} points, {available} available "
                    "(allow a negative balance to remove more)",
                )
            moves = allocate(self.lots.values(), min(wanted, available), now)
            settles = ()
        self._record(
            self.PointsAdjusted,
            effective_at=now,
            postings=transfer(acc.ADJUSTMENTS, acc.AVAILABLE, points)
            if points > 0
            else transfer(acc.AVAILABLE, acc.ADJUSTMENTS, -points),
            moves=moves,
            settles=settles,
            new_lots=new_lots,
            provenance=prov,
            note=f"adjusted by {points:+d} points by {actor}: {reason}",
            points=points,
            reason=reason,
            actor=actor,
        )

    def assign_tier(
        self,
        program: Program,
        *,
        tier_id: str | None,
        reason: str,
        provenance: Provenance,
        now: datetime,
        until: datetime | None = None,
        locked: bool = False,
    ) -> None:
        """An ops override of the tier. It may end at `until` (then the window decides again)
        and, when `locked`, the ledger makes no automatic change until then (forever without
        `until`), so a manual level is never silently replaced."""
        if tier_id is not None and program.tier(tier_id) is None:
            known = ", ".join(t.id for t in program.tiers) or "none"
            raise Declined("unknown_tier", f"no tier {tier_id!r} in the program ({known})")
        if tier_id == self.tier and (until, locked) == (None, False):
            raise Declined("tier_unchanged", f"{self.member_id} is already in tier {tier_id}")
        self.advance(program, now)
        before = self.tier_state(program)
        after = tier_policy.override(program, before, tier_id, until, locked, now)
        self._record_tier(
            program, before, after, at=now, cause="override", reason=reason, provenance=provenance
        )

    # --------------------------------------------------------------- internals

    def _next_lot_id(self) -> str:
        return f"L{self.version + 1}"

    def _net_settles(self, lots: Mapping[str, Lot]) -> tuple[LotMove, ...]:
        """What each lot of a re-take's copy settles more (or less) than now."""
        return tuple(
            LotMove(lot_id, lot.settled - self.lots[lot_id].settled)
            for lot_id, lot in lots.items()
            if lot_id in self.lots and lot.settled != self.lots[lot_id].settled
        )

    def _settle_moves(self, lot_id: str, credit: int) -> tuple[LotMove, ...]:
        settle = min(self.debt, credit)
        return (LotMove(lot_id, -settle),) if settle else ()

    def _settle_late(
        self, credits: Sequence[LotMove], came_at: datetime, now: datetime
    ) -> tuple[LotMove, ...]:
        """The settle of a balance below zero by points coming in (`credits`, in order: an
        earn, a release, or a cancellation giving points back), also when they came (in
        event time, `came_at`) before points that already settled it (read earlier, or
        released by the scheduler after them): with no spend dated after them, what a lot
        that came since lost is exactly what it settled (a spend takes only the lots there
        at its own time), so those lots give it back, the incoming points settle the whole
        debt first, and those lots settle again in the order they came. The plain settle
        when a spend, a cancellation or a hold may have taken from those lots, a refund
        took their pending points, or some of their points expired."""
        later = self._came_after(came_at, now, {c.lot_id for c in credits})
        settled = dict(later or ())
        owed = self.debt + sum(settled.values())
        moves: list[LotMove] = []
        for credit in credits:
            take = min(owed, credit.amount)
            if take:
                moves.append(LotMove(credit.lot_id, -take))
            owed -= take
        for lot_id, points in later or ():
            lot = self.lots[lot_id]
            has = lot.remaining + points
            take = min(owed, has)
            owed -= take
            if has - take != lot.remaining:
                moves.append(LotMove(lot_id, has - take - lot.remaining))
        return tuple(moves)

    def _expired_unowed(self, program: Program, lot: Lot, came_at: datetime) -> bool:
        """Whether the points of `lot`, an earn read late while the balance is below zero,
        expired unused before that: nothing was owed when they came (what the lots that
        came since settled, plus what is owed now, less what the refunds dated since owed,
        is 0: `_settled_since`) and the balance went below zero only after their expiry.
        Then in event time they settled nothing and expired; else they settle as they
        come and the spends dated after them take again (`_spends_take_again`)."""
        since = self.__dict__.get("owed_since")
        if not self.debt or since is None or lot.expires_at is None or lot.expires_at > since:
            return False
        settled = self._settled_since(self._later_spends(program, came_at), came_at, self.lots)
        return settled is not None and settled[1] == 0

    def _came_after(
        self, came_at: datetime, now: datetime, incoming: set[str]
    ) -> list[tuple[str, int]] | None:
        """The available lots that came after `came_at` in the order they came, each with
        what it settled of a balance below zero (`_settle_late`); None when none settled
        anything or it is not known."""
        if self.last_spend_at is not None and self.last_spend_at > came_at:
            return None
        if not self.settled_lots:
            return None  # nothing settled: nothing to give back (no scan of the lots)

        def came(lot: Lot) -> datetime:
            return max(lot.earned_at, lot.release_at or lot.earned_at)

        later = sorted(
            (v for v in self.lots.values() if v.status == AVAILABLE and came(v) > came_at),
            key=lambda v: (came(v), spend_order_key(v)),
        )
        settled = {v.lot_id: v.settled for v in later if v.settled}
        if not settled:
            return None
        held = {m.lot_id for h in self.holds.values() for m in h.moves}
        if any(
            v.lot_id in held
            or v.lot_id in incoming
            or self.expired_by_lot.get(v.lot_id, 0)
            or (v.expires_at is not None and v.expires_at <= now)
            for v in later
        ):
            return None
        return [(v.lot_id, settled.get(v.lot_id, 0)) for v in later]

    def _prune_daily(self, today: str) -> None:
        horizon = (datetime.fromisoformat(today) - timedelta(days=DAILY_WINDOW_DAYS)).date()
        for day in [d for d in self.daily_points if d < horizon.isoformat()]:
            del self.daily_points[day]
            self.last_order_by_day.pop(day, None)

    def _record(
        self,
        event_class: type[MemberAccount.Entry],
        *,
        effective_at: datetime,
        postings: Iterable[Posting],
        moves: Iterable[LotMove],
        provenance: Provenance,
        note: str,
        new_lots: Iterable[Lot] = (),
        released: Iterable[str] = (),
        replaced_lots: Iterable[Lot] = (),
        holds_after: Mapping[str, HoldRecord] | None = None,
        settles: Iterable[LotMove] = (),
        **specific: Any,
    ) -> None:
        """Check an entry against every invariant, then trigger it. `settles`: what more
        (or, negative, less) of each lot settles a balance below zero (`Lot.settled`); the
        points themselves move in `moves`."""
        postings = tuple(postings)
        moves = tuple(moves)
        check_balanced(postings)
        # Only the lots this entry touches are copied and checked: the totals of the others
        # are kept (`lot_totals`), so the cost does not grow with the member's history.
        touched: dict[str, Lot] = {}
        for lot in new_lots:
            if lot.lot_id in self.lots or lot.lot_id in touched:
                raise InvariantViolation(f"lot {lot.lot_id} already exists")
            touched[lot.lot_id] = lot
        for lot_id in released:
            touched[lot_id] = (touched.get(lot_id) or self.lots[lot_id]).released()
        for lot in replaced_lots:
            touched[lot.lot_id] = lot
        for move in moves:
            touched[move.lot_id] = (touched.get(move.lot_id) or self.lots[move.lot_id]).moved(
                move.amount
            )
        for settle in merge_moves(settles):
            touched[settle.lot_id] = (
                touched.get(settle.lot_id) or self.lots[settle.lot_id]
            ).settling(settle.amount)
        balances = apply_postings(self.balances, postings)
        _check_lots_match(balances, _totals_after(self.lot_totals, self.lots, touched.values()))
        _check_holds_match(balances, self.holds if holds_after is None else holds_after)
        if (
            self.worked_to is not None
            and effective_at < self.worked_to
            and provenance.origin.channel != SCHEDULER.channel
        ):
            # The one rule for a late event: it is applied to the account as it stands,
            # after the scheduled work already recorded; its own date sets its rules.
            note += f" (late: applied after scheduled work up to {self.worked_to.isoformat()})"
        self.trigger_event(
            event_class,
            member_id=self.member_id,
            effective_at=effective_at,
            postings=postings,
            moves=moves,
            lots_after=tuple(touched.values()),
            balance_after=Balances(
                balances[acc.AVAILABLE], balances[acc.PENDING], balances[acc.HELD]
            ),
            provenance=provenance,
            note=note,
            **specific,
        )

    def _apply_entry(self, entry: MemberAccount.Entry) -> None:
        self.__dict__.pop("_no_member", None)  # any entry makes a member again
        if entry.lots_after:
            self.__dict__["_lot_totals"] = _totals_after(
                self.lot_totals, self.lots, entry.lots_after
            )
        settled = self.__dict__.get("_settled_lots")
        for lot in entry.lots_after:
            self.lots[lot.lot_id] = lot
            if settled is not None:
                if lot.settled:
                    settled[lot.lot_id] = lot.settled
                else:
                    settled.pop(lot.lot_id, None)
        before = self.balances[acc.AVAILABLE]
        self.balances = apply_postings(self.balances, entry.postings)
        after = self.balances[acc.AVAILABLE]
        if after >= 0:
            self.owed_since = None
        else:
            # A re-take that leaves a refund owing owes from that refund's time.
            respent = getattr(entry, "respent", None)
            owing = [
                step.at
                for order in (respent.orders if isinstance(respent, Respent) else ())
                for step in order.refunds
                if step.owes and step.wanted + sum(m.amount for m in step.taken_from or ()) > 0
            ]
            at = min(owing) if owing else entry.effective_at
            if before >= 0 or (
                after < before
                and (owed_since := self.__dict__.get("owed_since")) is not None
                and at < owed_since
            ):
                self.owed_since = at
        if entry.provenance.origin.channel == SCHEDULER.channel and (
            self.worked_to is None or entry.effective_at > self.worked_to
        ):
            self.worked_to = entry.effective_at


@dataclass
class _Debt:
    """Points owed in a re-take (the balance below zero), since when."""

    owed: int
    since: datetime | None


def _settle_again(lots: dict[str, Lot], debt: _Debt, by: datetime | None) -> None:
    """Points owed since `debt.since` are settled first by the points that came after in
    event time, by `by` (all when None), in the order they came: lots earned or released
    since, and lots spendable at `by` (points a cancellation gave back), as an earn, a
    release or a cancellation settles a balance below zero (`lots` and `debt` in place)."""
    owed, since = debt.owed, debt.since
    if not owed or since is None:
        return

    def came(lot: Lot) -> datetime:
        return max(lot.earned_at, lot.release_at or lot.earned_at)

    found = [
        v
        for v in lots.values()
        if v.status == AVAILABLE
        and v.remaining > 0
        and (
            (came(v) >= since and (by is None or came(v) <= by))
            or (by is not None and spendable_at(v, by))
            or (by is None and (v.expires_at is None or v.expires_at > since))
        )
    ]
    for lot in sorted(found, key=lambda v: (came(v), spend_order_key(v))):
        amount = min(owed, lot.remaining)
        lots[lot.lot_id] = lot.moved(-amount).settling(amount)
        owed -= amount
        if not owed:
            break
    debt.owed = owed
    if not owed:
        debt.since = None


def _expired_again(lots: dict[str, Lot], unexpired: dict[str, int], owed_since: datetime) -> None:
    """Points a re-take left in a lot that expired before points were owed (`owed_since`)
    expire: they could not settle them. Those put back from expiry (`unexpired`) stay
    expired; others (given back by a cancellation read late) expire in the re-take's entry
    (`unexpired` goes below zero for them). Both in place."""
    for lot_id, lot in list(lots.items()):
        if lot.expires_at is not None and lot.expires_at <= owed_since and lot.remaining:
            if lot.status != AVAILABLE:
                continue
            lots[lot_id] = lot.moved(-lot.remaining)
            unexpired[lot_id] = unexpired.get(lot_id, 0) - lot.remaining


_LAST = datetime.max.replace(tzinfo=UTC)


def _give_back(
    lots: dict[str, Lot],
    holding: list[Taken],
    by: datetime | None,
    debt: _Debt | None = None,
    settled: dict[str, list[LotMove]] | None = None,
) -> bool:
    """The cancelled redemptions in `holding` cancelled by `by` (all when None) give their
    points back to the lots they took (in place): spends after that find them. What is
    owed then (`debt`) is settled first by the points given back, in the order of the
    redemption's moves, as a cancellation read in time settles (`_settle_late`). False
    when the copy cannot take back what one held (the re-take keeps what was recorded).
    `settled` (in place): what each one's points settled, by redemption id."""
    due = [
        t
        for t in holding
        if by is None or (t.spend.cancelled_at is not None and t.spend.cancelled_at <= by)
    ]
    for t in sorted(due, key=lambda t: t.spend.cancelled_at or _LAST):
        if debt is not None and debt.owed and t.spend.cancelled_at is not None:
            # The points that came before the cancellation settled first.
            _settle_again(lots, debt, t.spend.cancelled_at)
        for move in merge_moves(t.moves):
            lot = lots[move.lot_id]
            if lot.remaining - move.amount > lot.amount:
                return False  # the copy cannot take these points back (not known)
            # Below zero still while a redemption funded by later give-backs holds them
            # (`funded_with_back`): the later give-backs bring it back.
            lots[move.lot_id] = replace(lot, remaining=lot.remaining - move.amount)
        mine = settled.setdefault(t.spend.key, []) if settled is not None else []
        for move in merge_moves(t.moves):
            if debt is None or not debt.owed:
                break
            settle = min(debt.owed, -move.amount, lots[move.lot_id].remaining)
            if settle <= 0:
                continue
            lots[move.lot_id] = lots[move.lot_id].moved(-settle).settling(settle)
            debt.owed -= settle
            mine.append(LotMove(move.lot_id, settle))
        if debt is not None and not debt.owed:
            debt.since = None
        holding.remove(t)
    return True


def _stopped_waiting(
    program: Program, occurred_at: datetime, needed_at: datetime | None
) -> datetime | None:
    """The deadline of an event dated `occurred_at` if what it needs (an order, a
    redemption) came at `needed_at`, at or after it: in event time the event had stopped
    waiting (parked) by then. None when it had not, or when parking is off (an event then
    never waits: what is there counts, whatever its date)."""
    if program.arrival.park_hours <= 0 or needed_at is None:
        return None
    deadline = occurred_at + timedelta(hours=program.arrival.park_hours)
    return deadline if needed_at >= deadline else None


def _totals_after(
    totals: tuple[int, int], lots: Mapping[str, Lot], changed: Iterable[Lot]
) -> tuple[int, int]:
    """(available, pending) lot totals once `changed` replace their versions in `lots`."""
    available, pending = totals
    for lot in changed:
        old = lots.get(lot.lot_id)
        if old is not None:
            if old.status == AVAILABLE:
                available -= old.remaining
            elif old.status == PENDING:
                pending -= old.remaining
        if lot.status == AVAILABLE:
            available += lot.remaining
        elif lot.status == PENDING:
            pending += lot.remaining
    return available, pending


def _check_lots_match(balances: Mapping[str, int], totals: tuple[int, int]) -> None:
    """The sub-account balances must equal what the lots hold (the ledger explains itself)."""
    in_available, in_pending = totals
    available = balances[acc.AVAILABLE]
    expected = available if available >= 0 else 0
    if in_available != expected:
        raise InvariantViolation(
            f"available balance {available} but available lots hold {in_available}"
        )
    if in_pending != balances[acc.PENDING]:
        raise InvariantViolation(
            f"pending balance {balances[acc.PENDING]} but pending lots hold {in_pending}"
        )
    if sum(balances.values()) != 0:
        raise InvariantViolation("the account's postings do not sum to zero")


def _check_holds_match(balances: Mapping[str, int], holds: Mapping[str, HoldRecord]) -> None:
    """Held points are exactly what the open holds hold."""
    open_total = sum(h.points for h in holds.values() if h.is_open)
    if balances[acc.HELD] != open_total:
        raise InvariantViolation(
            f"held balance {balances[acc.HELD]} but open holds hold {open_total}"
        )


def _returned(record: HoldRecord) -> tuple[LotMove, ...]:
    return tuple(LotMove(m.lot_id, -m.amount) for m in record.moves)


def _label(kind: str, reference: str) -> str:
    """How a lot is named to people: "order 1001", "signup", "referral of m-7"."""
    if kind == "purchase":
        return "order " + reference.removeprefix("order:")
    if reference.startswith("referee:"):
        return "referral of " + reference.removeprefix("referee:")
    if reference.startswith("referred-by:"):
        return "referral by " + reference.removeprefix("referred-by:")
    return reference.removeprefix("activity:").replace(":", " ")


def _settles_of(moves: Iterable[LotMove]) -> tuple[LotMove, ...]:
    """The settles of moves that only settle a balance below zero (an earn's, a release's:
    a lot's points taken to settle are that much more settled; given back, less)."""
    return tuple(LotMove(m.lot_id, -m.amount) for m in moves)
