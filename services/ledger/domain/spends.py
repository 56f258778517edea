"""Spends in event-time order: what redemptions and refunds take from the lots, decided
again when one dated before them arrives late.

A spend takes points from the lots spendable at its own time, soonest-expiring first (a
refund its own order's lot first). When a redemption or refund dated before spends already
recorded arrives (read late from another topic), the ledger gives back what those later
spends took, lets the late one spend as of its own time, and has each later spend take
again, in event-time order, from what is left then: a refund takes back what is there at
its time and the return policy forgives the rest (or owes it, under the unlimited policy);
a redemption is funded by the first instant before its deadline that covers it, in the
order of the redemptions' own times, and one never funded so is withdrawn (the account
gives its points back; the application parks its event again).

Pure functions over lots: the member account turns the result into entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from services.ledger.domain.lots import AVAILABLE, Lot, LotMove, merge_moves, spend_order_key


@dataclass(frozen=True, slots=True)
class Spend:
    """One spend of available points: a redemption, or what a refund takes back from
    available lots (its own pending points are not spendable, so never in question)."""

    # "redemption" | "refund" | "held": a redemption dated before the late event and
    # cancelled after it, which holds what it took until its cancellation (not taken again)
    kind: str
    at: datetime  # when it took effect in event time
    key: str  # the redemption id, or "<order id>/<refund id>"
    wanted: int  # the points it takes when they are there
    moves: tuple[LotMove, ...] = ()  # what it took (negative amounts), as recorded
    own_lot: str | None = None  # a refund's order's lot, taken first
    owes: bool = False  # what is not there is owed (a balance below zero), not forgiven
    # A redemption: its own time (`at` is when it was funded, later if it waited) and
    # until when it waits for points.
    dated: datetime | None = None
    deadline: datetime | None = None
    # A redemption cancelled since: when its points went back to the lots it took (they
    # are there already, not given back again; it holds them only until then).
    cancelled_at: datetime | None = None
    # A refund: what it counted as already expired from its own lot (not taken: those
    # points had left by their expiry). Decided again with it when its lot's expiry is in
    # question (see `expired_again`).
    expired: int = 0


@dataclass(frozen=True, slots=True)
class Taken:
    """What a spend takes when it is decided (again)."""

    spend: Spend
    moves: tuple[LotMove, ...]
    taken: int  # from the lots
    owed: int  # left owed: the balance goes below zero by it
    at: datetime | None = None  # a redemption: the instant it was funded

    @property
    def short(self) -> int:
        """What was wanted and neither taken nor owed: forgiven."""
        return self.spend.wanted - self.taken - self.owed


def spendable_at(lot: Lot, at: datetime, earned_by: datetime | None = None) -> bool:
    """Whether `lot` had points to spend at `at`: released by then (a lot still pending
    now was pending then too), not yet expired, and earned by `earned_by` (by `at` unless
    given: a redemption that waited counts what was earned while it waited)."""
    return (
        lot.status == AVAILABLE
        and lot.remaining > 0
        and lot.earned_at <= (earned_by or at)
        and (lot.release_at is None or lot.release_at <= at)
        and (lot.expires_at is None or lot.expires_at > at)
    )


def funded_by(
    lots: Mapping[str, Lot], at: datetime, points: int, deadline: datetime
) -> datetime | None:
    """The first instant, from `at` and before `deadline`, by which the lots earned cover
    `points` (None: never): a redemption waited (parked) for each earn until then."""
    have = sum(v.remaining for v in lots.values() if spendable_at(v, at))
    if have >= points:
        return at
    later = sorted(
        (v for v in lots.values() if v.earned_at > at and v.earned_at < deadline),
        key=lambda v: v.earned_at,
    )
    for i, lot in enumerate(later):
        if spendable_at(lot, at, earned_by=lot.earned_at):
            have += lot.remaining
        last_of_instant = i + 1 == len(later) or later[i + 1].earned_at != lot.earned_at
        if last_of_instant and have >= points:
            return lot.earned_at
    return None


@dataclass(frozen=True, slots=True)
class GiveBack:
    """Points a cancelled redemption held at a spend's time and gave back to their lots
    when it was cancelled (`moves`: what it held there, negative amounts)."""

    at: datetime
    moves: tuple[LotMove, ...]


def funded_with_back(
    lots: Mapping[str, Lot],
    at: datetime,
    points: int,
    deadline: datetime,
    back: Iterable[GiveBack],
) -> tuple[datetime, dict[str, Lot]] | None:
    """As `funded_by`, where the points in `back` come back at their cancellation: a
    cancellation before `deadline` funds a redemption that waited (parked) for points as an
    earn does. The instant, and the lots with what was given back by then (None: never)."""
    work = dict(lots)
    given: datetime | None = None
    backs = sorted((b for b in back if at < b.at < deadline), key=lambda b: b.at)
    for i in range(len(backs) + 1):
        bound = backs[i].at if i < len(backs) else deadline
        instant = funded_by(work, at, points, bound)
        if instant is not None:
            return (instant if given is None else max(instant, given)), work
        if i < len(backs):
            for move in backs[i].moves:
                lot = work[move.lot_id]
                work[move.lot_id] = replace(lot, remaining=lot.remaining - move.amount)
            given = backs[i].at
    return None


def take_given_back(
    lots: dict[str, Lot], work: Mapping[str, Lot], spend: Spend, at: datetime, instant: datetime
) -> Taken:
    """`spend` decided at `at` on `work` (the lots with the points cancellations gave back
    by `instant`, see `funded_with_back`), taken from `lots` in place: a lot whose points
    come back later in `lots` stays below zero until then (nothing else can take them)."""
    taken = take(dict(work), spend, at, instant)
    for move in taken.moves:
        lot = lots[move.lot_id]
        lots[move.lot_id] = replace(lot, remaining=lot.remaining + move.amount)
    return taken


def take(
    lots: dict[str, Lot], spend: Spend, at: datetime, earned_by: datetime | None = None
) -> Taken:
    """Decide `spend` at `at` on `lots` (changed in place): its own lot first, then the
    spendable lots soonest-expiring first (earned by `earned_by`); what is not there is
    owed or forgiven."""
    left = spend.wanted
    moves: list[LotMove] = []

    def from_lot(lot: Lot) -> None:
        nonlocal left
        amount = min(left, lot.remaining)
        if amount:
            moves.append(LotMove(lot.lot_id, -amount))
            lots[lot.lot_id] = lot.moved(-amount)
            left -= amount

    own = lots.get(spend.own_lot) if spend.own_lot else None
    if own is not None and spendable_at(own, at):
        from_lot(own)
    spendable = (v for v in lots.values() if spendable_at(v, at, earned_by))
    for lot in sorted(spendable, key=spend_order_key):
        if left == 0:
            break
        from_lot(lot)
    owed = left if spend.owes else 0
    return Taken(spend, merge_moves(moves), spend.wanted - left, owed, earned_by or at)


def redeem_again(lots: dict[str, Lot], spend: Spend, back: Iterable[GiveBack] = ()) -> Taken | None:
    """A redemption decided again: funded as of its own time by the first instant before
    its deadline that covers it (as when it waited; an earn, or a cancellation giving back
    points in `back`), else None: in event time it was never funded (`lots` are left as
    they were)."""
    dated = spend.dated or spend.at
    deadline = spend.deadline or spend.at
    funded = funded_with_back(lots, dated, spend.wanted, max(deadline, dated), back)
    if funded is None:
        return None
    instant, work = funded
    if work == lots:
        return take(lots, spend, dated, instant)
    return take_given_back(lots, work, spend, dated, instant)


def expired_again(lots: Mapping[str, Lot], spend: Spend, credited: int) -> Spend:
    """A refund decided again after its own lot's expiry: of what it reverses beyond its
    pending points (`wanted` + `expired`), what its lot still held at its expiry (less
    what earlier refunds of the order counted so, `credited`) had expired, so it is not
    taken twice; the rest it takes from available lots. In event time the lot may have
    been spent before it expired (by a spend read after the refund), or may hold points a
    cancellation gave back."""
    own = lots.get(spend.own_lot) if spend.own_lot else None
    if own is None or own.expires_at is None or own.expires_at > spend.at:
        return spend  # its lot had not expired by its time: nothing counted as expired
    claim = spend.wanted + spend.expired
    expired = min(claim, max(0, own.remaining - credited))
    return replace(spend, wanted=claim - expired, expired=expired)


def expired_more(lots: Mapping[str, Lot], spend: Spend, credited: int) -> Spend:
    """A refund decided again after a late event dated after its own lot's expiry that put
    points back into that lot (a cancellation of a redemption that took from it): those
    points expired at once, before the refund, so it counts them as already expired too
    (beyond what it counted, up to what it reverses; less what refunds of the order taken
    again before it counted so, `credited`) and takes that much less from available."""
    own = lots.get(spend.own_lot) if spend.own_lot else None
    if own is None or own.expires_at is None or own.expires_at > spend.at:
        return spend
    more = min(spend.wanted, max(0, own.remaining - credited))
    return replace(spend, wanted=spend.wanted - more, expired=spend.expired + more)


def restored(
    lots: Mapping[str, Lot], expired: Mapping[str, int], spends: Iterable[Spend]
) -> dict[str, Lot]:
    """The lots with the points `spends` took given back, and the points in `expired`
    (lot id: points) back in their lots."""
    out = dict(lots)
    for lot_id, points in expired.items():
        if points:
            lot = out[lot_id]
            out[lot_id] = replace(lot, remaining=lot.remaining + points)
    for spend in spends:
        if spend.kind == "held":  # it still held them then: out of the lots until cancelled
            for move in spend.moves:
                lot = out[move.lot_id]
                out[move.lot_id] = replace(lot, remaining=lot.remaining + move.amount)
            continue
        if spend.cancelled_at is not None:
            continue  # its points went back when it was cancelled
        for move in spend.moves:
            lot = out[move.lot_id]
            out[move.lot_id] = replace(lot, remaining=lot.remaining - move.amount)
    return out


def in_order(spends: Iterable[Spend]) -> list[Spend]:
    """Event-time order: a redemption by its own time (it takes before one dated after it,
    even when it waited for points), a refund by its time."""
    return sorted(spends, key=lambda s: (s.dated or s.at, s.kind, s.key))
