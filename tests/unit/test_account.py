"""The member account, in memory: every command's entries, lots and balances, with exact numbers.

Each test drives a `Member`, a thin wrapper that calls the aggregate's commands and then
checks every new entry: its postings sum to zero, its `balance_after` follows from the
previous balance and its postings, and it ends at the account's balance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from services.ledger.adapters.program_file import load_program
from services.ledger.domain import postings as acc
from services.ledger.domain.account import Balances, MemberAccount
from services.ledger.domain.errors import Declined
from services.ledger.domain.lots import AVAILABLE, PENDING, Lot, LotMove
from services.ledger.domain.postings import Posting
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin, Provenance
from services.ledger.domain.rules import Line

EXAMPLES = Path(__file__).resolve().parents[2] / "services" / "ledger" / "examples"

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)

Entry = MemberAccount.Entry
E = TypeVar("E", bound=MemberAccount.Entry)


def make_program(**overrides: Any) -> Program:
    """A plain program: UTC, 1 point per USD, nothing pending, nothing expires."""
    data: dict[str, Any] = {
        "id": "plain",
        "name": "Plain",
        "timezone": "UTC",
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
    }
    data.update(overrides)
    return Program.model_validate(data)


@pytest.fixture(scope="module")
def coffee() -> Program:
    return load_program(EXAMPLES / "coffee.yaml")


@pytest.fixture(scope="module")
def retailer() -> Program:
    return load_program(EXAMPLES / "retailer.yaml")


def _member_balances(postings: Sequence[Posting], before: Balances) -> Balances:
    def moved(account: str) -> int:
        return sum(p.amount for p in postings if p.account == account)

    return Balances(
        before.available + moved(acc.AVAILABLE),
        before.pending + moved(acc.PENDING),
        before.held + moved(acc.HELD),
    )


class Member:
    """Drives one MemberAccount and checks the invariants of every entry it makes."""

    def __init__(self, program: Program, member_id: str = "m-1", at: datetime = T0) -> None:
        self.program = program
        self.account = MemberAccount.enrol(member_id, at, Provenance(Origin("file")), auto=False)
        # A member starts in the program's entry tier (their first command records it).
        self.account.prepare(program, at, Provenance(Origin("file")))
        enrolled, *entry_tier = self.account.collect_events()
        assert isinstance(enrolled, MemberAccount.Enrolled)
        assert [type(e) for e in entry_tier] == [MemberAccount.TierAssigned] * len(
            program.tiers[:1]
        )
        self.events: list[Any] = [enrolled, *entry_tier]
        self.history: list[Entry] = []
        self._balance = Balances(0, 0, 0)
        self._counter = 0

    # ---------------------------------------------------------------- checks

    def take(self) -> list[Entry]:
        """The entries made since the last call, each checked against the invariants."""
        new: list[Entry] = []
        for event in self.account.collect_events():
            assert isinstance(event, MemberAccount.Entry)
            assert sum(p.amount for p in event.postings) == 0, event.postings
            expected = _member_balances(event.postings, self._balance)
            assert event.balance_after == expected, (type(event).__name__, event.note)
            self._balance = event.balance_after
            self.events.append(event)
            new.append(event)
        assert self._balance == self.account.balance
        self._check_lots()
        self.history.extend(new)
        return new

    def _check_lots(self) -> None:
        lots = self.account.lots.values()
        in_available = sum(lot.remaining for lot in lots if lot.status == AVAILABLE)
        in_pending = sum(lot.remaining for lot in lots if lot.status == PENDING)
        balance = self.account.balance
        assert in_available == max(0, balance.available)
        assert in_pending == balance.pending
        # The totals the account keeps entry by entry (its invariant check uses them).
        assert self.account.lot_totals == (in_available, in_pending)
        for lot in lots:
            assert 0 <= lot.remaining <= lot.amount

    def prov(self, event_id: str) -> Provenance:
        return Provenance(Origin("file", file="events.jsonl"), event_id=event_id)

    def lot(self, lot_id: str) -> Lot:
        return self.account.lots[lot_id]

    # -------------------------------------------------------------- commands

    def buy(
        self,
        order_id: str,
        total_minor: int,
        at: datetime,
        *,
        now: datetime | None = None,
        lines: Sequence[Line] = (),
        currency: str = "USD",
        source: str | None = None,
        program: Program | None = None,
    ) -> list[Entry]:
        self.account.earn_purchase(
            program or self.program,
            order_id=order_id,
            currency=currency,
            total_minor=total_minor,
            lines=lines,
            occurred_at=at,
            source=source,
            provenance=self.prov(f"buy-{order_id}"),
            now=now or at,
        )
        return self.take()

    def refund(
        self,
        order_id: str,
        refund_id: str,
        at: datetime,
        *,
        amount_minor: int | None = None,
        lines: Mapping[str, int] | None = None,
        now: datetime | None = None,
    ) -> list[Entry]:
        self.account.reverse_purchase(
            self.program,
            order_id=order_id,
            refund_id=refund_id,
            amount_minor=amount_minor,
            lines=lines,
            occurred_at=at,
            provenance=self.prov(f"refund-{refund_id}"),
            now=now or at,
        )
        return self.take()

    def redeem(
        self,
        redemption_id: str,
        at: datetime,
        *,
        points: int | None = None,
        reward_id: str | None = None,
        now: datetime | None = None,
    ) -> list[Entry]:
        self.account.redeem(
            self.program,
            redemption_id=redemption_id,
            reward_id=reward_id,
            points=points,
            occurred_at=at,
            provenance=self.prov(f"redeem-{redemption_id}"),
            now=now or at,
        )
        return self.take()

    def cancel(
        self, redemption_id: str, at: datetime, *, now: datetime | None = None
    ) -> list[Entry]:
        self.account.cancel_redemption(
            self.program,
            redemption_id=redemption_id,
            reason="customer changed their mind",
            occurred_at=at,
            provenance=self.prov(f"cancel-{redemption_id}"),
            now=now or at,
        )
        return self.take()

    def adjust(
        self,
        points: int,
        at: datetime,
        *,
        reason: str = "goodwill",
        actor: str = "ops-1",
        allow_negative: bool = False,
    ) -> list[Entry]:
        self._counter += 1
        self.account.adjust(
            self.program,
            points=points,
            reason=reason,
            actor=actor,
            allow_negative=allow_negative,
            provenance=self.prov(f"adjust-{self._counter}"),
            now=at,
        )
        return self.take()

    def activity(self, activity: str, at: datetime, *, reference: str | None = None) -> list[Entry]:
        self._counter += 1
        self.account.earn_activity(
            self.program,
            activity=activity,
            reference=reference,
            occurred_at=at,
            provenance=self.prov(f"activity-{self._counter}"),
            now=at,
        )
        return self.take()

    def referral(self, role: str, other: str, at: datetime) -> list[Entry]:
        self.account.earn_referral(
            self.program,
            role=role,
            other_member=other,
            occurred_at=at,
            provenance=self.prov(f"referral-{role}-{other}"),
            now=at,
        )
        return self.take()

    def assign_tier(self, tier_id: str | None, at: datetime) -> list[Entry]:
        self.account.assign_tier(
            self.program,
            tier_id=tier_id,
            reason="qualified",
            provenance=self.prov(f"tier-{tier_id}"),
            now=at,
        )
        return self.take()

    def advance(self, now: datetime) -> list[Entry]:
        made = self.account.advance(self.program, now)
        entries = self.take()
        assert made == len(entries)
        return entries


def one(entries: Sequence[Entry], kind: type[E]) -> E:
    matching = [e for e in entries if isinstance(e, kind)]
    assert len(matching) == 1, [type(e).__name__ for e in entries]
    return matching[0]


def kinds(entries: Sequence[Entry]) -> list[str]:
    return [type(e).__name__ for e in entries]


def new_lot(entries: Sequence[Entry]) -> Lot:
    """The lot created by the one earn (or adjustment) among `entries`."""
    entry = one(entries, MemberAccount.Entry)
    assert len(entry.lots_after) == 1
    return entry.lots_after[0]


def declined(reason: str) -> Any:
    return pytest.raises(Declined, match=f"^{reason}:")


# ------------------------------------------------------------- earn and release


def test_purchase_is_pending_until_release_time(coffee: Program) -> None:
    m = Member(coffee)
    at = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)  # a Monday in New York
    entries = m.buy("o1", 1255, at)
    earned = one(entries, MemberAccount.PointsEarned)
    assert kinds(entries) == ["PointsEarned"]
    assert earned.points == 12
    assert earned.kind == "purchase"
    assert earned.postings == (Posting(acc.ISSUED, -12), Posting(acc.PENDING, 12))
    assert earned.balance_after == Balances(0, 12, 0)
    lot = new_lot(entries)
    assert (lot.amount, lot.remaining, lot.status) == (12, 12, PENDING)
    assert lot.release_at == at + 2 * DAY
    assert lot.expires_at == datetime(2027, 6, 1, 4, 0, tzinfo=UTC)

    assert m.advance(at + 2 * DAY - TICK) == []
    assert m.account.balance == Balances(0, 12, 0)

    released = m.advance(at + 2 * DAY)
    assert kinds(released) == ["PendingReleased"]
    entry = one(released, MemberAccount.PendingReleased)
    assert (entry.lot_id, entry.points) == (lot.lot_id, 12)
    assert entry.effective_at == at + 2 * DAY
    assert entry.postings == (Posting(acc.PENDING, -12), Posting(acc.AVAILABLE, 12))
    assert m.account.balance == Balances(12, 0, 0)
    assert m.lot(lot.lot_id).status == AVAILABLE


def test_advance_twice_for_the_same_instant_changes_nothing(coffee: Program) -> None:
    m = Member(coffee)
    at = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    m.buy("o1", 1255, at)
    m.buy("o2", 2000, at + DAY / 2)  # 22:00 on Monday in New York: 20 points
    assert len(m.advance(at + 3 * DAY)) == 2
    version = m.account.version
    assert m.advance(at + 3 * DAY) == []
    assert m.advance(at + 3 * DAY) == []
    assert m.account.version == version
    assert m.account.balance == Balances(32, 0, 0)


def test_a_late_purchase_is_available_at_once(coffee: Program) -> None:
    m = Member(coffee)
    at = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    entries = m.buy("o1", 1255, at, now=at + 5 * DAY)
    assert kinds(entries) == ["PointsEarned"]
    assert new_lot(entries).status == AVAILABLE
    assert m.account.balance == Balances(12, 0, 0)
    assert m.advance(at + 6 * DAY) == []


def test_without_pending_days_purchases_are_available_at_once() -> None:
    m = Member(make_program())
    entries = m.buy("o1", 1255, T0)
    assert one(entries, MemberAccount.PointsEarned).postings == (
        Posting(acc.ISSUED, -12),
        Posting(acc.AVAILABLE, 12),
    )
    assert m.account.balance == Balances(12, 0, 0)


def test_duplicate_order_is_declined() -> None:
    m = Member(make_program())
    m.buy("o1", 1000, T0)
    with declined("duplicate_order"):
        m.buy("o1", 5000, T0 + DAY)
    assert m.take() == []
    assert m.account.balance == Balances(10, 0, 0)


def test_unsupported_currency_is_declined_without_entries() -> None:
    m = Member(make_program())
    with declined("unsupported_currency"):
        m.buy("o1", 1000, T0, currency="EUR")
    assert m.take() == []
    assert "o1" not in m.account.orders


def test_daily_cap_counts_every_order_of_the_same_local_day(coffee: Program) -> None:
    m = Member(coffee)
    monday = datetime(2026, 11, 16, 14, 0, tzinfo=UTC)
    assert one(m.buy("o1", 15000, monday), MemberAccount.PointsEarned).points == 150
    # 03:00Z on Tuesday is 22:00 on Monday in New York: the same day, 50 points left.
    second = one(m.buy("o2", 10000, datetime(2026, 11, 17, 3, 0, tzinfo=UTC)), Entry)
    assert isinstance(second, MemberAccount.PointsEarned)
    assert second.points == 50
    assert second.provenance.rule_id is not None
    assert "cap:per_member_per_day" in second.provenance.rule_id.split(",")
    assert second.order is not None
    assert second.order.points == 50
    # Nothing left that day: a zero-point entry, no lot.
    third = one(m.buy("o3", 1000, datetime(2026, 11, 17, 4, 0, tzinfo=UTC)), Entry)
    assert isinstance(third, MemberAccount.PointsEarned)
    assert (third.points, third.postings, third.lots_after) == (0, (), ())
    # 06:00Z is 01:00 on Tuesday in New York: a new day (and double points).
    fourth = one(m.buy("o4", 10000, datetime(2026, 11, 17, 6, 0, tzinfo=UTC)), Entry)
    assert isinstance(fourth, MemberAccount.PointsEarned)
    assert fourth.points == 200
    assert m.account.balance == Balances(0, 400, 0)


def test_daily_cap_holds_for_a_late_order_within_a_week(coffee: Program) -> None:
    m = Member(coffee)
    monday = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    m.buy("o1", 20000, monday)
    m.buy("o2", 1000, monday + 6 * DAY)
    late = one(m.buy("o3", 10000, monday + timedelta(hours=1), now=monday + 6 * DAY), Entry)
    assert isinstance(late, MemberAccount.PointsEarned)
    assert late.points == 0


def test_daily_cap_holds_for_a_late_order_after_more_than_a_week(coffee: Program) -> None:
    m = Member(coffee)
    monday = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    m.buy("o1", 20000, monday)  # 200: the cap for Monday
    m.buy("o2", 1000, monday + 8 * DAY)
    late = one(m.buy("o3", 10000, monday + timedelta(hours=1), now=monday + 8 * DAY), Entry)
    assert isinstance(late, MemberAccount.PointsEarned)
    assert late.points == 0


# ------------------------------------------------------------------- redemption


def _three_lots(m: Member) -> tuple[str, str, str]:
    """A never-expiring lot (100), then lots expiring later (40) and sooner (30)."""
    yearly = make_program(id="yearly", expiry={"months_after_earn": 12})
    never = new_lot(m.buy("never", 10000, T0)).lot_id
    later = new_lot(m.buy("later", 4000, T0 + 10 * DAY, program=yearly)).lot_id
    # Occurred earlier but arrives last: it expires soonest.
    sooner = new_lot(m.buy("sooner", 3000, T0 + 5 * DAY, now=T0 + 10 * DAY, program=yearly)).lot_id
    assert m.lot(sooner).expires_at == datetime(2027, 3, 7, 12, 0, tzinfo=UTC)
    assert m.lot(later).expires_at == datetime(2027, 3, 12, 12, 0, tzinfo=UTC)
    assert m.lot(never).expires_at is None
    assert m.account.balance == Balances(170, 0, 0)
    return never, later, sooner


def test_redemption_spends_the_soonest_expiring_lot_first_never_expiring_last() -> None:
    m = Member(make_program())
    never, later, sooner = _three_lots(m)
    first = one(m.redeem("r1", T0 + 11 * DAY, points=50), MemberAccount.PointsRedeemed)
    assert first.moves == (LotMove(sooner, -30), LotMove(later, -20))
    assert first.postings == (Posting(acc.AVAILABLE, -50), Posting(acc.REDEEMED, 50))
    assert first.provenance.rule_id == "redeem:points"
    second = one(m.redeem("r2", T0 + 12 * DAY, points=30), MemberAccount.PointsRedeemed)
    assert second.moves == (LotMove(later, -20), LotMove(never, -10))
    assert [m.lot(i).remaining for i in (never, later, sooner)] == [90, 0, 0]
    assert m.account.balance == Balances(90, 0, 0)


def test_redemption_never_overdraws() -> None:
    m = Member(make_program())
    m.buy("o1", 9000, T0)
    with declined("insufficient_points"):
        m.redeem("r1", T0 + DAY, points=91)
    assert m.take() == []
    assert "r1" not in m.account.redemptions
    assert m.account.balance == Balances(90, 0, 0)
    m.redeem("r1", T0 + DAY, points=90)
    assert m.account.balance == Balances(0, 0, 0)
    with declined("insufficient_points"):
        m.redeem("r2", T0 + DAY, points=1)
    assert m.take() == []


def test_pending_points_cannot_be_redeemed(coffee: Program) -> None:
    m = Member(coffee)
    at = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    m.buy("o1", 10000, at)
    with declined("insufficient_points"):
        m.redeem("r1", at + DAY, points=1)
    assert m.take() == []
    m.redeem("r1", at + 2 * DAY, points=100)  # released first, then spent
    assert kinds(m.history[-2:]) == ["PendingReleased", "PointsRedeemed"]


def test_redemption_by_reward_id(coffee: Program) -> None:
    m = Member(coffee)
    at = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    m.buy("o1", 6000, at, now=at + 3 * DAY)
    entry = one(m.redeem("r1", at + 3 * DAY, reward_id="free-drink"), MemberAccount.PointsRedeemed)
    assert entry.redemption.points == 50
    assert entry.redemption.reward_id == "free-drink"
    assert entry.provenance.rule_id == "reward:free-drink"
    assert m.account.balance == Balances(10, 0, 0)
    with declined("insufficient_points"):
        m.redeem("r2", at + 3 * DAY, reward_id="pastry")  # 35 points
    with declined("unknown_reward"):
        m.redeem("r3", at + 3 * DAY, reward_id="espresso-machine")
    assert m.take() == []


def test_redemption_needs_a_positive_amount_and_a_new_id() -> None:
    m = Member(make_program())
    m.buy("o1", 9000, T0)
    m.redeem("r1", T0, points=10)
    with declined("duplicate_redemption"):
        m.redeem("r1", T0, points=10)
    with declined("invalid_points"):
        m.redeem("r2", T0, points=0)
    with declined("invalid_points"):
        m.redeem("r3", T0, points=None)
    assert m.take() == []
    assert m.account.balance == Balances(80, 0, 0)


# ---------------------------------------------------------------- cancellation


def test_cancel_returns_the_exact_points_to_their_lots_with_their_expiry() -> None:
    m = Member(make_program())
    never, later, sooner = _three_lots(m)
    expiries = {i: m.lot(i).expires_at for i in (never, later, sooner)}
    m.redeem("r1", T0 + 11 * DAY, points=50)
    m.redeem("r2", T0 + 11 * DAY, points=30)
    entries = m.cancel("r1", T0 + 12 * DAY)
    assert kinds(entries) == ["RedemptionCancelled"]
    cancelled = one(entries, MemberAccount.RedemptionCancelled)
    assert cancelled.points == 50
    assert cancelled.moves == (LotMove(sooner, 30), LotMove(later, 20))
    assert cancelled.postings == (Posting(acc.REDEEMED, -50), Posting(acc.AVAILABLE, 50))
    assert [m.lot(i).remaining for i in (never, later, sooner)] == [90, 20, 30]
    assert {i: m.lot(i).expires_at for i in (never, later, sooner)} == expiries
    assert m.account.balance == Balances(140, 0, 0)
    assert m.account.redemptions["r1"].status == "cancelled"
    assert m.account.redemptions["r2"].status == "redeemed"


def test_cancel_twice_or_unknown_is_declined() -> None:
    m = Member(make_program())
    m.buy("o1", 9000, T0)
    m.redeem("r1", T0, points=40)
    m.cancel("r1", T0 + DAY)
    with declined("already_cancelled"):
        m.cancel("r1", T0 + 2 * DAY)
    with declined("unknown_redemption"):
        m.cancel("r9", T0 + 2 * DAY)
    assert m.take() == []
    assert m.account.balance == Balances(90, 0, 0)


def test_points_cancelled_back_to_an_expired_lot_expire_at_once() -> None:
    m = Member(make_program(expiry={"months_after_earn": 1}))
    lot_id = new_lot(m.buy("o1", 10000, T0)).lot_id
    expires = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)
    assert m.lot(lot_id).expires_at == expires
    m.redeem("r1", T0 + DAY, points=60)
    expired = m.advance(expires + DAY)
    assert one(expired, MemberAccount.PointsExpired).points == 40

    entries = m.cancel("r1", expires + 2 * DAY)
    assert kinds(entries) == ["RedemptionCancelled", "PointsExpired"]
    again = one(entries, MemberAccount.PointsExpired)
    assert (again.lot_id, again.points) == (lot_id, 60)
    assert again.postings == (Posting(acc.AVAILABLE, -60), Posting(acc.EXPIRED, 60))
    assert m.lot(lot_id).remaining == 0
    assert m.account.balance == Balances(0, 0, 0)
    assert m.account.balances[acc.EXPIRED] == 100
    assert m.account.balances[acc.REDEEMED] == 0


# ---------------------------------------------------------------------- expiry


def test_expiry_takes_exactly_each_lots_unspent_remainder_once() -> None:
    m = Member(make_program(expiry={"months_after_earn": 1}))
    first = new_lot(m.buy("o1", 10000, T0))
    second = new_lot(m.buy("o2", 5000, T0 + 10 * DAY))
    m.redeem("r1", T0 + 11 * DAY, points=70)  # 70 from the first lot
    assert first.expires_at is not None
    assert second.expires_at is not None

    assert m.advance(first.expires_at - TICK) == []
    entries = m.advance(first.expires_at)
    expired = one(entries, MemberAccount.PointsExpired)
    assert (expired.lot_id, expired.points) == (first.lot_id, 30)
    assert expired.effective_at == first.expires_at
    assert expired.postings == (Posting(acc.AVAILABLE, -30), Posting(acc.EXPIRED, 30))
    assert m.advance(first.expires_at) == []
    assert m.account.balance == Balances(50, 0, 0)

    later = m.advance(second.expires_at + 30 * DAY)
    assert [(e.lot_id, e.points) for e in later if isinstance(e, MemberAccount.PointsExpired)] == [
        (second.lot_id, 50)
    ]
    assert m.advance(datetime(2030, 1, 1, tzinfo=UTC)) == []
    assert m.account.balance == Balances(0, 0, 0)
    assert m.account.balances[acc.EXPIRED] == 80


def test_one_advance_expires_lots_in_expiry_order() -> None:
    m = Member(make_program(expiry={"months_after_earn": 1}))
    first = new_lot(m.buy("o1", 2000, T0 + 5 * DAY))
    second = new_lot(m.buy("o2", 1000, T0, now=T0 + 5 * DAY))
    entries = m.advance(T0 + 90 * DAY)
    assert [
        (e.lot_id, e.points) for e in entries if isinstance(e, MemberAccount.PointsExpired)
    ] == [
        (second.lot_id, 10),
        (first.lot_id, 20),
    ]


def test_a_fully_spent_lot_makes_no_expiry_entry() -> None:
    m = Member(make_program(expiry={"months_after_earn": 1}))
    m.buy("o1", 1000, T0)
    m.redeem("r1", T0, points=10)
    assert m.advance(T0 + 60 * DAY) == []


def test_expired_points_cannot_be_spent() -> None:
    m = Member(make_program(expiry={"months_after_earn": 1}))
    m.buy("o1", 1000, T0)
    assert m.account.spendable(T0 + 31 * DAY) == 0
    assert m.account.spendable(T0 + 30 * DAY) == 10


# --------------------------------------------------------------------- refunds


def test_partial_amount_refunds_are_cumulative_without_drift() -> None:
    m = Member(make_program())
    m.buy("o1", 1000, T0)  # 10 points
    taken = [
        one(m.refund("o1", f"f{i}", T0 + DAY, amount_minor=amount), MemberAccount.PointsReversed)
        for i, amount in enumerate((333, 333, 334))
    ]
    assert [(e.points, e.forgiven) for e in taken] == [(3, 0), (3, 0), (4, 0)]
    assert m.account.balance == Balances(0, 0, 0)
    order = m.account.orders["o1"]
    assert (order.refunded_minor, order.reversed_points) == (1000, 10)
    assert taken[-1].order.refund_ids == ("f0", "f1", "f2")


def test_line_refunds_by_quantity() -> None:
    m = Member(make_program())
    lines = [Line("A", "gear", 3, 500), Line("B", "gear", 1, 255)]
    earned = one(m.buy("o1", 1755, T0, lines=lines), MemberAccount.PointsEarned)
    assert earned.order is not None
    assert [(lp.sku, lp.points) for lp in earned.order.lines] == [("A", 15), ("B", 2)]

    def reversed_points(refund_id: str, refund_lines: Mapping[str, int]) -> int:
        entries = m.refund("o1", refund_id, T0 + DAY, lines=refund_lines)
        return one(entries, MemberAccount.PointsReversed).points

    assert reversed_points("f1", {"A": 1}) == 5
    assert reversed_points("f2", {"A": 2}) == 10
    assert reversed_points("f3", {"B": 1}) == 2
    assert m.account.balance == Balances(0, 0, 0)
    with declined("refund_exceeds_order"):
        m.refund("o1", "f4", T0 + DAY, lines={"A": 1})
    with declined("unknown_line"):
        m.refund("o1", "f5", T0 + DAY, lines={"C": 1})
    assert m.take() == []


def test_line_refunds_one_item_at_a_time_add_up() -> None:
    m = Member(make_program())
    lines = [Line("A", None, 3, 333), Line("B", None, 1, 1)]
    earned = one(m.buy("o1", 1000, T0, lines=lines), MemberAccount.PointsEarned)
    assert earned.order is not None
    assert [lp.points for lp in earned.order.lines] == [10, 0]
    steps = [
        one(m.refund("o1", f"f{i}", T0 + DAY, lines={"A": 1}), MemberAccount.PointsReversed).points
        for i in range(3)
    ]
    assert steps == [3, 3, 4]


def test_refund_beyond_the_order_is_declined() -> None:
    m = Member(make_program())
    m.buy("o1", 1000, T0)
    with declined("refund_exceeds_order"):
        m.refund("o1", "f1", T0 + DAY, amount_minor=1001)
    m.refund("o1", "f1", T0 + DAY, amount_minor=600)
    with declined("refund_exceeds_order"):
        m.refund("o1", "f2", T0 + DAY, amount_minor=401)
    assert m.take() == []
    m.refund("o1", "f2", T0 + DAY, amount_minor=400)
    assert m.account.balance == Balances(0, 0, 0)


def test_refund_of_an_unknown_order_or_a_repeated_refund_is_declined() -> None:
    m = Member(make_program())
    m.buy("o1", 1000, T0)
    with declined("unknown_order"):
        m.refund("o2", "f1", T0 + DAY, amount_minor=100)
    m.refund("o1", "f1", T0 + DAY, amount_minor=500)
    with declined("duplicate_refund"):
        m.refund("o1", "f1", T0 + DAY, amount_minor=500)
    assert m.take() == []
    assert m.account.balance == Balances(5, 0, 0)
    assert m.account.orders["o1"].refunded_minor == 500


def test_refund_takes_the_orders_pending_points_first(coffee: Program) -> None:
    m = Member(coffee)
    at = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    m.buy("o0", 3000, at - 10 * DAY, now=at)  # 30 available (42 in all stays below gold)
    lot = new_lot(m.buy("o1", 1255, at))  # 12 pending
    entry = one(m.refund("o1", "f1", at + DAY, amount_minor=628), MemberAccount.PointsReversed)
    # 12 * 628 // 1255 = 6, all from the order's own pending lot.
    assert (entry.points, entry.forgiven) == (6, 0)
    assert entry.moves == (LotMove(lot.lot_id, -6),)
    assert entry.postings == (Posting(acc.PENDING, -6), Posting(acc.ISSUED, 6))
    assert m.account.balance == Balances(30, 6, 0)


def test_pending_only_takes_only_the_orders_pending_points() -> None:
    m = Member(make_program(earn={"pending_days": 10}, returns={"policy": "pending_only"}))
    m.buy("o1", 10000, T0)
    first = one(m.refund("o1", "f1", T0 + DAY, amount_minor=4000), MemberAccount.PointsReversed)
    assert (first.points, first.forgiven) == (40, 0)
    assert first.provenance.rule_id == "returns:pending_only"
    assert m.account.balance == Balances(0, 60, 0)
    assert kinds(m.advance(T0 + 10 * DAY)) == ["PendingReleased"]
    assert m.account.balance == Balances(60, 0, 0)
    second = one(
        m.refund("o1", "f2", T0 + 11 * DAY, amount_minor=6000), MemberAccount.PointsReversed
    )
    assert (second.points, second.forgiven) == (0, 60)
    assert second.postings == ()
    assert second.order.reversed_points == 100
    assert m.account.balance == Balances(60, 0, 0)


def test_within_balance_never_goes_below_zero() -> None:
    m = Member(make_program())
    first = new_lot(m.buy("o1", 10000, T0))
    second = new_lot(m.buy("o2", 5000, T0 + DAY))
    m.redeem("r1", T0 + 2 * DAY, points=120)  # 100 from o1, 20 from o2
    entry = one(
        m.refund("o1", "f1", T0 + 3 * DAY, amount_minor=10000), MemberAccount.PointsReversed
    )
    assert (entry.points, entry.forgiven) == (30, 70)
    assert entry.moves == (LotMove(second.lot_id, -30),)
    assert entry.provenance.rule_id == "returns:within_balance"
    assert m.lot(first.lot_id).remaining == 0
    assert m.account.balance == Balances(0, 0, 0)
    assert m.account.debt == 0


def test_within_balance_takes_the_orders_own_lot_then_others() -> None:
    m = Member(make_program())
    first = new_lot(m.buy("o1", 10000, T0))
    second = new_lot(m.buy("o2", 5000, T0 + DAY))
    m.redeem("r1", T0 + 2 * DAY, points=70)  # 70 from o1
    entry = one(
        m.refund("o1", "f1", T0 + 3 * DAY, amount_minor=10000), MemberAccount.PointsReversed
    )
    assert (entry.points, entry.forgiven) == (80, 20)
    assert entry.moves == (LotMove(first.lot_id, -30), LotMove(second.lot_id, -50))
    assert m.account.balance == Balances(0, 0, 0)


def test_a_refund_takes_the_orders_own_available_lot_before_older_lots() -> None:
    m = Member(make_program())
    first = new_lot(m.buy("o1", 10000, T0))
    second = new_lot(m.buy("o2", 5000, T0 + DAY))
    entry = one(m.refund("o2", "f1", T0 + 2 * DAY, amount_minor=5000), MemberAccount.PointsReversed)
    assert entry.moves == (LotMove(second.lot_id, -50),)
    assert (m.lot(first.lot_id).remaining, m.lot(second.lot_id).remaining) == (100, 0)


def test_unlimited_goes_negative_and_later_earnings_settle_the_debt_first() -> None:
    m = Member(
        make_program(
            returns={"policy": "unlimited"},
            activities={"bonus": {"points": 50, "limit": "unlimited"}},
        )
    )
    m.buy("o1", 10000, T0)
    m.redeem("r1", T0 + DAY, points=80)
    entry = one(
        m.refund("o1", "f1", T0 + 2 * DAY, amount_minor=10000), MemberAccount.PointsReversed
    )
    assert (entry.points, entry.forgiven) == (100, 0)
    assert entry.postings == (Posting(acc.AVAILABLE, -100), Posting(acc.ISSUED, 100))
    assert m.account.balance == Balances(-80, 0, 0)
    assert m.account.debt == 80
    assert m.account.spendable(T0 + 2 * DAY) == -80
    with declined("insufficient_points"):
        m.redeem("r2", T0 + 2 * DAY, points=1)

    bonus = m.activity("bonus", T0 + 3 * DAY)
    lot = new_lot(bonus)
    earned = one(bonus, MemberAccount.PointsEarned)
    assert earned.points == 50
    assert earned.moves == (LotMove(lot.lot_id, -50),)
    assert (lot.amount, lot.remaining) == (50, 0)
    assert m.account.balance == Balances(-30, 0, 0)

    purchase = m.buy("o2", 10000, T0 + 4 * DAY)
    lot = new_lot(purchase)
    assert one(purchase, MemberAccount.PointsEarned).moves == (LotMove(lot.lot_id, -30),)
    assert (lot.amount, lot.remaining) == (100, 70)
    assert m.account.balance == Balances(70, 0, 0)
    assert m.account.debt == 0
    with declined("insufficient_points"):
        m.redeem("r2", T0 + 4 * DAY, points=71)
    m.redeem("r2", T0 + 4 * DAY, points=70)


@pytest.mark.parametrize("policy", ["within_balance", "unlimited", "pending_only"])
def test_a_refund_does_not_take_again_what_already_expired_from_the_order(policy: str) -> None:
    m = Member(make_program(returns={"policy": policy}, expiry={"months_after_earn": 1}))
    first = new_lot(m.buy("o1", 10000, T0))  # 100, expires after a month
    m.redeem("r1", T0 + DAY, points=60)  # 40 left in the lot
    expired = one(m.advance(T0 + 40 * DAY), MemberAccount.PointsExpired)
    assert (expired.lot_id, expired.points) == (first.lot_id, 40)
    m.buy("o2", 5000, T0 + 40 * DAY)  # 50 fresh points
    entry = one(
        m.refund("o1", "f1", T0 + 41 * DAY, amount_minor=10000), MemberAccount.PointsReversed
    )
    assert entry.already_expired == 40  # gone already: not taken a second time
    if policy == "pending_only":
        assert (entry.points, entry.forgiven) == (0, 60)
        assert m.account.balance == Balances(50, 0, 0)
    elif policy == "within_balance":
        assert (entry.points, entry.forgiven) == (50, 10)
        assert m.account.balance == Balances(0, 0, 0)
    else:
        assert (entry.points, entry.forgiven) == (60, 0)
        assert m.account.balance == Balances(-10, 0, 0)
    assert entry.order.expired_credited == 40
    assert "40 had already expired" in entry.note
    # A second refund of the same order finds nothing more to credit or take.
    with declined("refund_exceeds_order"):
        m.refund("o1", "f2", T0 + 42 * DAY, amount_minor=1)


def test_a_cancelled_redemption_settles_the_debt_first() -> None:
    m = Member(make_program(returns={"policy": "unlimited"}))
    lot = new_lot(m.buy("o1", 10000, T0))
    m.redeem("r1", T0 + DAY, points=80)  # the lot keeps 20
    entry = one(m.refund("o1", "f1", T0 + 2 * DAY, amount_minor=5000), MemberAccount.PointsReversed)
    assert (entry.points, entry.forgiven) == (50, 0)  # 20 from the lot, 30 owed
    assert m.account.balance == Balances(-30, 0, 0)
    cancelled = one(m.cancel("r1", T0 + 3 * DAY), MemberAccount.RedemptionCancelled)
    assert cancelled.moves == (LotMove(lot.lot_id, 80), LotMove(lot.lot_id, -30))
    assert m.lot(lot.lot_id).remaining == 50
    assert m.account.balance == Balances(50, 0, 0)
    assert m.account.debt == 0


def test_unlimited_debt_is_settled_when_pending_points_are_released() -> None:
    m = Member(make_program(earn={"pending_days": 10}, returns={"policy": "unlimited"}))
    m.buy("o1", 10000, T0 - 20 * DAY, now=T0)  # late: available at once
    m.redeem("r1", T0, points=100)
    pending = new_lot(m.buy("o2", 4000, T0))
    entry = one(m.refund("o1", "f1", T0 + DAY, amount_minor=10000), MemberAccount.PointsReversed)
    assert (entry.points, entry.forgiven) == (100, 0)
    assert m.account.balance == Balances(-100, 40, 0)
    released = one(m.advance(T0 + 10 * DAY), MemberAccount.PendingReleased)
    assert released.points == 40
    assert released.moves == (LotMove(pending.lot_id, -40),)
    assert m.lot(pending.lot_id).remaining == 0
    assert m.account.balance == Balances(-60, 0, 0)


# ------------------------------------------------------------------ invariants


def _busy_member(retailer: Program) -> Member:
    m = Member(retailer)
    at = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    m.activity("signup", at)
    m.buy("o1", 50000, at, currency="GBP", lines=[Line("TENT", "tents", 1, 50000)])
    m.assign_tier("trailblazer", at + DAY)
    m.buy("o2", 12345, at + DAY, currency="GBP")
    m.buy("o3", 9999, at + 2 * DAY, currency="EUR", source="skyway-air")
    m.advance(at + 40 * DAY)
    m.redeem("r1", at + 41 * DAY, reward_id="voucher-10")
    m.refund("o1", "f1", at + 42 * DAY, amount_minor=25000)
    m.adjust(-100, at + 43 * DAY)
    m.adjust(75, at + 43 * DAY)
    m.cancel("r1", at + 44 * DAY)
    m.refund("o2", "f2", at + 45 * DAY, amount_minor=12345)
    m.redeem("r2", at + 46 * DAY, points=1500)
    m.refund("o1", "f3", at + 47 * DAY, amount_minor=25000)  # goes negative
    m.activity("review", at + 48 * DAY)  # settles 50 of the debt
    m.adjust(2000, at + 49 * DAY)  # settles the other 1101
    m.advance(datetime(2029, 1, 1, tzinfo=UTC))  # the 899 left expire
    return m


def test_every_entry_is_balanced_and_explains_the_balance(retailer: Program) -> None:
    m = _busy_member(retailer)
    assert kinds(m.history) == [
        "PointsEarned",
        "PointsEarned",
        "TierAssigned",
        "PointsEarned",
        "PointsEarned",
        "PendingReleased",
        "PendingReleased",
        "PendingReleased",
        "PointsRedeemed",
        "PointsReversed",
        "PointsAdjusted",
        "PointsAdjusted",
        "RedemptionCancelled",
        "PointsReversed",
        "PointsRedeemed",
        "PointsReversed",
        "PointsEarned",
        "PointsAdjusted",
        "TierAssigned",  # the override's period ends: reviewed (time-driven, like expiry)
        "PointsExpired",
    ]
    # 250 + 3000 + 308 + 124 - 2000 - 1500 - 100 + 75 + 2000 - 308 - 1500 - 1500 = -1151;
    # + 50 + 2000 = 899, which expires.
    assert [e.balance_after.available for e in m.history][-5:] == [-1151, -1101, 899, 899, 0]
    balance = Balances(0, 0, 0)
    for entry in m.history:
        assert sum(p.amount for p in entry.postings) == 0
        balance = _member_balances(entry.postings, balance)
        assert entry.balance_after == balance
    assert balance == m.account.balance
    assert sum(m.account.balances.values()) == 0
    assert m.account.balance == Balances(0, 0, 0)
    assert m.account.balances[acc.EXPIRED] == 899


def test_replaying_the_entries_rebuilds_the_same_account(retailer: Program) -> None:
    m = _busy_member(retailer)
    replayed: Any = None
    for event in m.events:
        replayed = event.mutate(replayed)
    assert isinstance(replayed, MemberAccount)
    assert replayed.lots == m.account.lots
    assert replayed.balances == m.account.balances
    assert replayed.orders == m.account.orders
    assert replayed.redemptions == m.account.redemptions
    assert replayed.tier == m.account.tier


# ------------------------------------------------------------------ provenance


def test_provenance_names_event_rule_program_version_and_tier(retailer: Program) -> None:
    m = Member(retailer)
    at = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    version = retailer.version
    before = one(m.buy("o1", 10000, at, currency="GBP"), MemberAccount.PointsEarned)
    assert before.provenance == Provenance(
        Origin("file", file="events.jsonl"),
        event_id="buy-o1",
        rule_id="base:GBP",
        program_version=version,
        tier="explorer",  # the entry tier
    )
    m.assign_tier("trailblazer", at)
    after = one(m.buy("o2", 10000, at + DAY, currency="GBP"), MemberAccount.PointsEarned)
    assert after.points == 250
    assert after.provenance.event_id == "buy-o2"
    assert after.provenance.rule_id == "base:GBP,tier:trailblazer"
    assert (after.provenance.program_version, after.provenance.tier) == (version, "trailblazer")

    for entry in m.advance(at + 31 * DAY):
        if isinstance(entry, MemberAccount.TierAssigned):
            continue  # the override's period ended: reviewed by the scheduler
        assert isinstance(entry, MemberAccount.PendingReleased)
        assert entry.provenance.origin.channel == "scheduler"
        assert entry.provenance.rule_id == "pending_release"
        assert entry.provenance.program_version == version
        assert entry.provenance.tier == "trailblazer"

    checks: list[tuple[list[Entry], str, str]] = [
        (m.activity("signup", at + 32 * DAY), "activity-1", "activity:signup"),
        (m.redeem("r1", at + 32 * DAY, points=100), "redeem-r1", "redeem:points"),
        (m.refund("o1", "f1", at + 33 * DAY, amount_minor=5000), "refund-f1", "returns:unlimited"),
        (m.adjust(10, at + 34 * DAY), "adjust-2", "adjustment"),
        (
            m.referral("referrer", "m-9", at + 35 * DAY),
            "referral-referrer-m-9",
            "referral:referrer",
        ),
    ]
    for entries, event_id, rule_id in checks:
        entry = one(entries, MemberAccount.Entry)
        assert entry.provenance.event_id == event_id
        assert entry.provenance.rule_id == rule_id
        assert entry.provenance.program_version == version
        assert entry.provenance.tier == "trailblazer"
        assert entry.provenance.origin == Origin("file", file="events.jsonl")

    expired = m.advance(datetime(2029, 1, 1, tzinfo=UTC))
    assert expired
    tier = "trailblazer"
    for entry in expired:  # in due-time order: the override's review comes in between
        if isinstance(entry, MemberAccount.TierAssigned):
            assert (entry.provenance.origin.channel, entry.previous) == ("scheduler", tier)
            tier = entry.tier or ""
            continue
        assert isinstance(entry, MemberAccount.PointsExpired)
        assert entry.provenance.rule_id == "expiry"
        assert entry.provenance.program_version == version
        assert entry.provenance.tier == tier


def test_cancellation_provenance_names_event_rule_and_tier(retailer: Program) -> None:
    m = Member(retailer)
    at = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    m.assign_tier("summit", at)
    m.activity("signup", at)
    m.redeem("r1", at, points=100)
    entry = one(m.cancel("r1", at + DAY), MemberAccount.RedemptionCancelled)
    assert entry.provenance.event_id == "cancel-r1"
    assert entry.provenance.rule_id == "redeem:cancel"
    assert entry.provenance.tier == "summit"


def test_cancellation_provenance_names_the_program_version(retailer: Program) -> None:
    m = Member(retailer)
    at = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    m.activity("signup", at)
    m.redeem("r1", at, points=100)
    entry = one(m.cancel("r1", at + DAY), MemberAccount.RedemptionCancelled)
    assert entry.provenance.program_version == retailer.version


# ----------------------------------------------------------------- adjustments


def test_positive_adjustment_creates_a_lot() -> None:
    program = make_program(expiry={"months_after_earn": 12})
    m = Member(program)
    entries = m.adjust(25, T0, reason="late delivery", actor="ops-7")
    entry = one(entries, MemberAccount.PointsAdjusted)
    assert (entry.points, entry.reason, entry.actor) == (25, "late delivery", "ops-7")
    assert entry.postings == (Posting(acc.ADJUSTMENTS, -25), Posting(acc.AVAILABLE, 25))
    assert entry.provenance.rule_id == "adjustment"
    lot = new_lot(entries)
    assert (lot.amount, lot.remaining, lot.status) == (25, 25, AVAILABLE)
    assert lot.earned_at == T0
    assert lot.expires_at == datetime(2027, 3, 2, 12, 0, tzinfo=UTC)
    assert m.account.balance == Balances(25, 0, 0)


def test_negative_adjustment_takes_the_soonest_expiring_points() -> None:
    m = Member(make_program(expiry={"months_after_earn": 12}))
    first = new_lot(m.buy("o1", 10000, T0))
    second = new_lot(m.adjust(25, T0 + 30 * DAY))
    entry = one(m.adjust(-110, T0 + 31 * DAY), MemberAccount.PointsAdjusted)
    assert entry.moves == (LotMove(first.lot_id, -100), LotMove(second.lot_id, -10))
    assert entry.postings == (Posting(acc.AVAILABLE, -110), Posting(acc.ADJUSTMENTS, 110))
    assert m.account.balance == Balances(15, 0, 0)


def test_negative_adjustment_beyond_the_balance_needs_allow_negative() -> None:
    m = Member(make_program())
    lot = new_lot(m.buy("o1", 1500, T0))
    with declined("insufficient_points"):
        m.adjust(-20, T0 + DAY)
    assert m.take() == []
    entry = one(m.adjust(-20, T0 + DAY, allow_negative=True), MemberAccount.PointsAdjusted)
    assert entry.moves == (LotMove(lot.lot_id, -15),)
    assert entry.postings == (Posting(acc.AVAILABLE, -20), Posting(acc.ADJUSTMENTS, 20))
    assert m.account.balance == Balances(-5, 0, 0)
    assert m.account.debt == 5


@pytest.mark.parametrize(
    ("points", "reason", "actor", "code"),
    [
        (10, "", "ops-1", "reason_required"),
        (10, "   ", "ops-1", "reason_required"),
        (10, "goodwill", "", "actor_required"),
        (10, "goodwill", " ", "actor_required"),
        (0, "goodwill", "ops-1", "invalid_points"),
    ],
)
def test_adjustment_needs_reason_actor_and_points(
    points: int, reason: str, actor: str, code: str
) -> None:
    m = Member(make_program())
    with declined(code):
        m.adjust(points, T0, reason=reason, actor=actor)
    assert m.take() == []


# ----------------------------------------------------------------------- tiers


def test_assign_tier_and_its_multiplier_on_later_earns(retailer: Program) -> None:
    m = Member(retailer)
    at = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    with declined("unknown_tier"):
        m.assign_tier("platinum", at)
    assert m.take() == []
    assert one(m.buy("o1", 10000, at, currency="GBP"), MemberAccount.PointsEarned).points == 200
    entry = one(m.assign_tier("trailblazer", at), MemberAccount.TierAssigned)
    assert (entry.tier, entry.previous, entry.postings, entry.moves) == (
        "trailblazer",
        "explorer",  # the entry tier, recorded when the member started
        (),
        (),
    )
    assert m.account.tier == "trailblazer"
    with declined("tier_unchanged"):
        m.assign_tier("trailblazer", at)
    assert one(m.buy("o2", 10000, at, currency="GBP"), MemberAccount.PointsEarned).points == 250
    m.assign_tier("summit", at)
    assert one(m.buy("o3", 10000, at, currency="GBP"), MemberAccount.PointsEarned).points == 300
    m.assign_tier(None, at)
    assert one(m.buy("o4", 10000, at, currency="GBP"), MemberAccount.PointsEarned).points == 200
    assert m.account.balance == Balances(0, 950, 0)


# ------------------------------------------------------------------ activities


def _activity(
    m: Member, name: str, at: datetime, reference: str | None = None
) -> MemberAccount.PointsEarned:
    return one(m.activity(name, at, reference=reference), MemberAccount.PointsEarned)


def test_once_activity_then_a_zero_point_entry_with_an_explanation(coffee: Program) -> None:
    m = Member(coffee)
    at = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
    first = _activity(m, "signup", at)
    assert first.points == 10
    assert first.kind == "activity"
    assert first.lots_after[0].status == AVAILABLE  # activities are never pending
    assert first.postings == (Posting(acc.ISSUED, -10), Posting(acc.AVAILABLE, 10))
    again = _activity(m, "signup", at + 30 * DAY)
    assert (again.points, again.postings, again.lots_after) == (0, (), ())
    assert "already rewarded" in again.note
    assert m.account.balance == Balances(10, 0, 0)


def test_per_year_activity_counts_the_local_year(coffee: Program) -> None:
    m = Member(coffee)
    assert _activity(m, "birthday", datetime(2026, 3, 10, 15, tzinfo=UTC)).points == 25
    assert _activity(m, "birthday", datetime(2026, 12, 31, 15, tzinfo=UTC)).points == 0
    # 03:00Z on 1 January 2027 is still 2026 in New York.
    assert _activity(m, "birthday", datetime(2027, 1, 1, 3, tzinfo=UTC)).points == 0
    assert _activity(m, "birthday", datetime(2027, 1, 1, 6, tzinfo=UTC)).points == 25
    # The 2026 bonus expired at the end of September 2026 (6 months, end of month).
    assert m.account.balance == Balances(25, 0, 0)


def test_per_day_activity_counts_the_local_day(coffee: Program) -> None:
    m = Member(coffee)
    assert _activity(m, "review", datetime(2026, 11, 16, 15, tzinfo=UTC)).points == 5
    assert _activity(m, "review", datetime(2026, 11, 17, 3, tzinfo=UTC)).points == 0
    assert _activity(m, "review", datetime(2026, 11, 17, 6, tzinfo=UTC)).points == 5


def test_unknown_activity_is_declined(coffee: Program) -> None:
    m = Member(coffee)
    with declined("unknown_activity"):
        m.activity("marathon", T0)
    assert m.take() == []


def test_the_same_reference_is_rewarded_once() -> None:
    m = Member(
        make_program(
            activities={
                "survey": {"points": 7, "limit": "unlimited"},
                "review": {"points": 5, "limit": "per_day"},
            }
        )
    )
    assert _activity(m, "survey", T0, "s1").points == 7
    repeat = _activity(m, "survey", T0 + DAY, "s1")
    assert repeat.points == 0
    assert "already rewarded" in repeat.note
    assert _activity(m, "survey", T0 + DAY, "s2").points == 7
    assert _activity(m, "survey", T0 + DAY).points == 7
    assert _activity(m, "survey", T0 + DAY).points == 7
    assert _activity(m, "review", T0, "r1").points == 5
    assert _activity(m, "review", T0 + DAY, "r1").points == 0
    assert _activity(m, "review", T0 + DAY, "r2").points == 5
    assert m.account.balance == Balances(38, 0, 0)


# -------------------------------------------------------------------- referral


def test_referral_bonuses_and_a_second_referrer_is_refused(coffee: Program) -> None:
    at = datetime(2026, 11, 16, 15, tzinfo=UTC)
    referee = Member(coffee, "m-2")
    referrer = Member(coffee, "m-1")
    referee.account.check_can_be_referred("m-1")
    welcome = one(referee.referral("referee", "m-1", at), MemberAccount.PointsEarned)
    assert (welcome.points, welcome.kind, welcome.reference) == (10, "referral", "referred-by:m-1")
    bonus = one(referrer.referral("referrer", "m-2", at), MemberAccount.PointsEarned)
    assert (bonus.points, bonus.reference) == (20, "referee:m-2")
    assert referee.account.referred_by == "m-1"

    with declined("referee_already_referred"):
        referee.account.check_can_be_referred("m-3")
    with declined("referee_already_referred"):
        referee.account.check_can_be_referred("m-1")
    with declined("circular_referral"):
        referrer.account.check_can_be_referred("m-2")
    referrer.account.check_can_be_referred("m-4")
    assert referee.account.balance == Balances(10, 0, 0)
    assert referrer.account.balance == Balances(20, 0, 0)


def test_lot_totals_are_counted_from_the_lots_for_an_older_snapshot(coffee: Program) -> None:
    member = Member(coffee)
    member.buy("o-1", 2000, T0)
    member.account.advance(coffee, T0 + 3 * DAY)  # released: available
    member.take()
    member.buy("o-2", 1000, T0 + 3 * DAY)  # pending
    member.take()
    assert member.account.lot_totals == (20, 10)
    del member.account.__dict__["_lot_totals"]  # as a snapshot of the previous release
    assert member.account.lot_totals == (20, 10)
