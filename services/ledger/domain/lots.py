"""Lots: every earn is a lot with its own expiry; spending takes the soonest-expiring first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from services.ledger.domain.errors import InvariantViolation

PENDING = "pending"
AVAILABLE = "available"

_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Lot:
    """Points earned together. `remaining` is what is still unspent and unexpired."""

    lot_id: str
    amount: int
    remaining: int
    status: str  # pending | available
    earned_at: datetime
    release_at: datetime | None
    expires_at: datetime | None
    source: str
    program_version: str | None = None
    # What of it settled a balance below zero (unlimited return policy): points a lot
    # lost to a settle, kept apart from what it lost to spends, refunds and expiry, so a
    # late event can give them back and settle again in event-time order.
    settled: int = 0

    def moved(self, delta: int) -> Lot:
        remaining = self.remaining + delta
        if remaining < 0:
            raise InvariantViolation(f"lot {self.lot_id} would be over-spent ({remaining})")
        if remaining > self.amount:
            raise InvariantViolation(f"lot {self.lot_id} would hold more than it earned")
        return replace(self, remaining=remaining)

    def settling(self, delta: int) -> Lot:
        """`delta` more of its points settled a balance below zero (negative: given back
        by a re-take, to settle again in event-time order); `remaining` moves apart."""
        settled = self.settled + delta
        if settled < 0 or settled > self.amount:
            raise InvariantViolation(f"lot {self.lot_id} would have settled {settled}")
        return replace(self, settled=settled)

    def released(self) -> Lot:
        return replace(self, status=AVAILABLE)

    def is_due_release(self, now: datetime) -> bool:
        return self.status == PENDING and self.release_at is not None and self.release_at <= now

    def is_due_expiry(self, now: datetime) -> bool:
        return (
            self.status == AVAILABLE
            and self.remaining > 0
            and self.expires_at is not None
            and self.expires_at <= now
        )


@dataclass(frozen=True, slots=True)
class LotMove:
    """Points taken from (negative) or returned to (positive) one lot by an entry."""

    lot_id: str
    amount: int


def merge_moves(moves: Iterable[LotMove]) -> tuple[LotMove, ...]:
    """Moves of the same lot added up (in first-seen order), zero sums left out."""
    total: dict[str, int] = {}
    for move in moves:
        total[move.lot_id] = total.get(move.lot_id, 0) + move.amount
    return tuple(LotMove(k, v) for k, v in total.items() if v)


def next_due(lots: Iterable[Lot], now: datetime) -> tuple[datetime, int, str] | None:
    """The earliest time-driven step due at `now`: (when, 0 release | 1 expiry, lot id)."""
    due: list[tuple[datetime, int, str]] = []
    for lot in lots:
        if lot.is_due_release(now) and lot.release_at is not None:
            due.append((lot.release_at, 0, lot.lot_id))
        elif lot.is_due_expiry(now) and lot.expires_at is not None:
            due.append((lot.expires_at, 1, lot.lot_id))
    return min(due) if due else None


def spend_order_key(lot: Lot) -> tuple[datetime, datetime, str]:
    """Soonest expiry first; lots that never expire last; then oldest; then id."""
    return (lot.expires_at or _NEVER, lot.earned_at, lot.lot_id)


def spendable(lots: Iterable[Lot], now: datetime) -> list[Lot]:
    """Available lots with points left that have not reached their expiry, in spend order."""
    return sorted(
        (
            lot
            for lot in lots
            if lot.status == AVAILABLE
            and lot.remaining > 0
            and (lot.expires_at is None or lot.expires_at > now)
        ),
        key=spend_order_key,
    )


def allocate(lots: Iterable[Lot], amount: int, now: datetime) -> tuple[LotMove, ...]:
    """Take `amount` points from spendable lots, soonest-expiring first (all or nothing)."""
    if amount < 0:
        raise InvariantViolation("cannot allocate a negative amount")
    moves: list[LotMove] = []
    left = amount
    for lot in spendable(lots, now):
        if left == 0:
            break
        take = min(left, lot.remaining)
        moves.append(LotMove(lot.lot_id, -take))
        left -= take
    if left:
        raise InvariantViolation(f"cannot allocate {amount}: {left} short")
    return tuple(moves)


def spendable_total(lots: Iterable[Lot], now: datetime) -> int:
    return sum(lot.remaining for lot in spendable(lots, now))


def created_by(lot_id: str) -> int | None:
    """The number (seq) of the entry that created a lot: a member account names every new
    lot after the entry that creates it, `L<seq>`. None for a name not made so."""
    number = lot_id.removeprefix("L")
    return int(number) if lot_id.startswith("L") and number.isdigit() else None
