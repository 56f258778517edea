"""Model-based test of holds on one member account: random earns, holds, captures, voids,
redemptions and time, compared after every step with a small model that keeps its own lots.

The model predicts which holds are declined, which lots each hold takes points from and
gives them back to, when holds and lots expire, and every balance; the account's own
invariant checks (`_record`) run on every entry as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from services.ledger.domain import postings as acc
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.errors import Declined
from services.ledger.domain.lots import AVAILABLE
from tests.unit.test_account import T0, Member, make_program

T = TypeVar("T")


@dataclass
class ModelLot:
    remaining: int
    expires_at: datetime
    earned: datetime


@dataclass
class ModelHold:
    points: int
    expires_at: datetime
    moves: list[tuple[str, int]]  # (lot id, points taken), in the order taken
    status: str = "held"
    captured: int = 0


@dataclass
class Model:
    now: datetime
    lots: dict[str, ModelLot] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    redeemed: int = 0
    expired: int = 0

    def spendable(self) -> int:
        return sum(lot.remaining for lot in self.lots.values() if lot.expires_at > self.now)

    def take(self, points: int) -> list[tuple[str, int]]:
        moves = []
        # Soonest expiry first, then the oldest, then by id (all lots here are earned at
        # distinct instants or share one, so the id breaks ties as the ledger does).
        order = sorted(self.lots.items(), key=lambda kv: (kv[1].expires_at, kv[1].earned, kv[0]))
        for lot_id, lot in order:
            if points == 0:
                break
            if lot.remaining and lot.expires_at > self.now:
                use = min(points, lot.remaining)
                lot.remaining -= use
                points -= use
                moves.append((lot_id, use))
        assert points == 0
        return moves

    def give_back(self, moves: list[tuple[str, int]]) -> None:
        for lot_id, amount in moves:
            self.lots[lot_id].remaining += amount

    def advance(self, now: datetime) -> None:
        """Holds and lots due by `now` expire; returned points on an expired lot expire too."""
        self.now = now
        for hold in self.holds.values():
            if hold.status == "held" and hold.expires_at <= now:
                hold.status = "expired"
                self.give_back(hold.moves)
        for lot in self.lots.values():
            if lot.remaining and lot.expires_at <= now:
                self.expired += lot.remaining
                lot.remaining = 0


def attempt(call: Callable[[], T]) -> tuple[T | None, str | None]:
    """The command's result, or None and the reason it was declined."""
    try:
        return call(), None
    except Declined as exc:
        return None, exc.reason


class HoldsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.member = Member(make_program(expiry={"months_after_earn": 1}))
        self.model = Model(T0)
        self.orders = 0

    @property
    def account(self) -> MemberAccount:
        return self.member.account

    @rule(cents=st.integers(0, 6_000))
    def earn(self, cents: int) -> None:
        self.orders += 1
        entries = self.member.buy(f"o{self.orders}", cents, self.model.now)
        for entry in entries:
            for lot in entry.lots_after:
                if lot.lot_id not in self.model.lots:
                    assert lot.expires_at is not None
                    self.model.lots[lot.lot_id] = ModelLot(
                        lot.remaining, lot.expires_at, self.model.now
                    )

    @rule(points=st.integers(1, 120), ttl_hours=st.integers(1, 24 * 40), ref=st.integers(0, 30))
    def place(self, points: int, ttl_hours: int, ref: int) -> None:
        reference = f"cart-{ref}"
        expires = self.model.now + timedelta(hours=ttl_hours)
        known = [h for h in self.account.holds.values() if h.reference == reference]
        record, reason = attempt(
            lambda: self.account.place_hold(
                self.member.program,
                reference=reference,
                points=points,
                expires_at=expires,
                provenance=self.member.prov(reference),
                now=self.model.now,
            )
        )
        self.member.take()
        if record is None:
            if known:
                assert reason == "reference_conflict"
                assert known[0].points != points
            else:
                assert reason == "insufficient_points"
                assert points > self.model.spendable()
            return
        if known:
            assert record == known[0]  # idempotent: the same hold, nothing new
            return
        assert points <= self.model.spendable()
        moves = self.model.take(points)
        assert [(m.lot_id, -m.amount) for m in record.moves] == moves
        self.model.holds[record.hold_id] = ModelHold(points, expires, moves)

    def _pick(self, data: st.DataObject) -> str | None:
        if not self.model.holds:
            return None
        return data.draw(st.sampled_from(sorted(self.model.holds)))

    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        hold_id = self._pick(data)
        if hold_id is None:
            return
        hold = self.model.holds[hold_id]
        points = data.draw(st.none() | st.integers(1, hold.points + 2))
        done, reason = attempt(
            lambda: self.account.capture_hold(
                self.member.program,
                hold=hold_id,
                points=points,
                provenance=self.member.prov("capture"),
                now=self.model.now,
            )
        )
        self.member.take()
        if done is None:
            if hold.status != "held":
                assert reason == "hold_resolved"
            else:
                assert reason == "invalid_points"
                assert points is not None
                assert points > hold.points
            return
        assert hold.status == "held"
        captured = hold.points if points is None else points
        assert captured <= hold.points
        left = captured
        back = []
        for lot_id, amount in hold.moves:
            use = min(left, amount)
            left -= use
            if amount - use:
                back.append((lot_id, amount - use))
        self.model.give_back(back)
        self.model.redeemed += captured
        hold.status, hold.captured = "captured", captured
        self.model.advance(self.model.now)  # returned points on an expired lot expire now

    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        hold_id = self._pick(data)
        if hold_id is None:
            return
        hold = self.model.holds[hold_id]
        done, reason = attempt(
            lambda: self.account.void_hold(
                self.member.program,
                hold=hold_id,
                reason=None,
                provenance=self.member.prov("void"),
                now=self.model.now,
            )
        )
        self.member.take()
        if done is None:
            assert reason == "hold_resolved"
            assert hold.status != "held"
            return
        assert hold.status == "held"
        hold.status = "voided"
        self.model.give_back(hold.moves)
        self.model.advance(self.model.now)

    @rule(points=st.integers(1, 80))
    def redeem(self, points: int) -> None:
        self.orders += 1
        done, reason = attempt(
            lambda: self.member.redeem(f"r{self.orders}", self.model.now, points=points)
        )
        if done is None:
            self.member.take()
            assert reason == "insufficient_points"
            assert points > self.model.spendable()
            return
        self.model.take(points)
        self.model.redeemed += points

    @rule(hours=st.integers(1, 24 * 45))
    def wait(self, hours: int) -> None:
        now = self.model.now + timedelta(hours=hours)
        self.member.advance(now)
        self.model.advance(now)

    @invariant()
    def agrees_with_the_model(self) -> None:
        account = self.account
        model = self.model
        assert {k: v.remaining for k, v in account.lots.items()} == {
            k: v.remaining for k, v in model.lots.items()
        }
        assert all(lot.status == AVAILABLE for lot in account.lots.values())
        assert {k: (h.status, h.captured) for k, h in account.holds.items()} == {
            k: (h.status, h.captured) for k, h in model.holds.items()
        }
        held = sum(h.points for h in model.holds.values() if h.status == "held")
        available = sum(lot.remaining for lot in model.lots.values())
        assert (account.balance.available, account.balance.held) == (available, held)
        assert account.balances[acc.REDEEMED] == model.redeemed
        assert account.balances[acc.EXPIRED] == model.expired
        # Lots keep the expiry they were earned with, whatever holds did to them.
        for lot_id, lot in account.lots.items():
            assert lot.expires_at == model.lots[lot_id].expires_at


TestHolds = HoldsMachine.TestCase
TestHolds.settings = settings(
    max_examples=int(os.environ.get("LOYALTY_MODEL_EXAMPLES", "40")),
    stateful_step_count=40,
    deadline=None,
)
