"""Redemption holds on the member account: place, capture (full or part), void, expire."""

from __future__ import annotations

from datetime import UTC, datetime

from services.ledger.domain import postings as acc
from services.ledger.domain.account import Balances, MemberAccount
from services.ledger.domain.holds import (
    CAPTURED,
    EXPIRED,
    HELD,
    VOIDED,
    HoldRecord,
    hold_id,
    member_of_hold,
    split_capture,
)
from services.ledger.domain.lots import LotMove
from services.ledger.domain.postings import Posting
from tests.unit.test_account import (
    DAY,
    T0,
    Entry,
    Member,
    _three_lots,
    declined,
    kinds,
    make_program,
    new_lot,
    one,
)


def place(m: Member, reference: str, points: int, at: datetime, ttl_days: int = 1) -> HoldRecord:
    record = m.account.place_hold(
        m.program,
        reference=reference,
        points=points,
        expires_at=at + ttl_days * DAY,
        provenance=m.prov(f"hold-{reference}"),
        now=at,
    )
    m.take()
    return record


def capture(m: Member, hold: str, at: datetime, points: int | None = None) -> list[Entry]:
    m.account.capture_hold(
        m.program, hold=hold, points=points, provenance=m.prov("capture"), now=at
    )
    return m.take()


def void(m: Member, hold: str, at: datetime) -> list[Entry]:
    m.account.void_hold(
        m.program, hold=hold, reason="basket emptied", provenance=m.prov("v"), now=at
    )
    return m.take()


def test_hold_ids_name_their_member_and_reference() -> None:
    hid = hold_id("m-42/x", "basket-1")
    assert hid == hold_id("m-42/x", "basket-1")
    assert hid != hold_id("m-42/x", "basket-2")
    assert member_of_hold(hid) == "m-42/x"
    for bad in (
        "",
        "h..",
        "h.bTQy.short",
        "x.bTQy.0123456789abcdef0123",
        "h.!!.0123456789abcdef0123",
    ):
        assert member_of_hold(bad) is None


def test_split_capture_takes_the_first_lots_and_returns_the_rest() -> None:
    moves = (LotMove("L2", -30), LotMove("L3", -20))
    assert split_capture(moves, 40) == (
        (LotMove("L2", -30), LotMove("L3", -10)),
        (LotMove("L3", 10),),
    )
    assert split_capture(moves, 50) == (moves, ())


def test_a_hold_moves_points_from_the_soonest_expiring_lots_to_held() -> None:
    m = Member(make_program())
    never, later, sooner = _three_lots(m)
    record = place(m, "basket-1", 50, T0 + 11 * DAY)
    assert record.status == HELD
    assert record.moves == (LotMove(sooner, -30), LotMove(later, -20))
    assert m.account.balance == Balances(120, 0, 50)
    placed = m.history[-1]
    assert isinstance(placed, MemberAccount.HoldPlaced)
    assert placed.postings == (Posting(acc.AVAILABLE, -50), Posting(acc.HELD, 50))
    assert [m.lot(i).remaining for i in (never, later, sooner)] == [100, 20, 0]


def test_placing_again_with_the_same_reference_is_idempotent_and_a_changed_amount_conflicts() -> (
    None
):
    m = Member(make_program())
    m.buy("o1", 10000, T0)
    first = place(m, "basket-1", 40, T0)
    again = place(m, "basket-1", 40, T0 + DAY / 2)
    assert again == first
    assert m.account.balance == Balances(60, 0, 40)
    with declined("reference_conflict"):
        place(m, "basket-1", 41, T0)


def test_a_hold_cannot_exceed_what_is_spendable_or_be_empty() -> None:
    m = Member(make_program())
    m.buy("o1", 10000, T0)
    place(m, "a", 70, T0)
    with declined("insufficient_points"):
        place(m, "b", 31, T0)
    with declined("invalid_points"):
        place(m, "c", 0, T0)
    with declined("invalid_ttl"):
        place(m, "d", 5, T0, ttl_days=0)
    assert m.account.balance == Balances(30, 0, 70)


def test_a_full_capture_redeems_the_held_points() -> None:
    m = Member(make_program())
    m.buy("o1", 10000, T0)
    record = place(m, "a", 60, T0)
    entries = capture(m, record.hold_id, T0)
    captured = one(entries, MemberAccount.HoldCaptured)
    assert captured.postings == (Posting(acc.HELD, -60), Posting(acc.REDEEMED, 60))
    assert captured.moves == ()
    assert m.account.balance == Balances(40, 0, 0)
    assert m.account.balances[acc.REDEEMED] == 60
    assert m.account.holds[record.hold_id].status == CAPTURED


def test_a_partial_capture_returns_the_rest_to_the_original_lots_with_their_expiry() -> None:
    m = Member(make_program())
    never, later, sooner = _three_lots(m)
    expiries = {i: m.lot(i).expires_at for i in (never, later, sooner)}
    record = place(m, "a", 50, T0 + 11 * DAY)
    entries = capture(m, record.hold_id, T0 + 11 * DAY, points=35)
    captured = one(entries, MemberAccount.HoldCaptured)
    assert (captured.points, captured.returned) == (35, 15)
    assert captured.moves == (LotMove(later, 15),)
    assert captured.postings == (
        Posting(acc.HELD, -35),
        Posting(acc.REDEEMED, 35),
        Posting(acc.HELD, -15),
        Posting(acc.AVAILABLE, 15),
    )
    assert [m.lot(i).remaining for i in (never, later, sooner)] == [100, 35, 0]
    assert {i: m.lot(i).expires_at for i in (never, later, sooner)} == expiries
    assert m.account.balance == Balances(135, 0, 0)


def test_a_hold_resolves_at_most_once() -> None:
    m = Member(make_program())
    m.buy("o1", 10000, T0)
    a = place(m, "a", 10, T0)
    b = place(m, "b", 10, T0)
    capture(m, a.hold_id, T0)
    void(m, b.hold_id, T0)
    for hid in (a.hold_id, b.hold_id):
        with declined("hold_resolved"):
            capture(m, hid, T0)
        with declined("hold_resolved"):
            void(m, hid, T0)
    with declined("unknown_hold"):
        void(m, "h.bS0x.0123456789abcdef0123", T0)
    with declined("invalid_points"):
        capture(m, place(m, "c", 10, T0).hold_id, T0, points=11)
    assert m.account.balance == Balances(80, 0, 10)
    assert m.account.holds[b.hold_id].status == VOIDED


def test_void_returns_every_point_to_its_lot() -> None:
    m = Member(make_program())
    never, later, sooner = _three_lots(m)
    record = place(m, "a", 50, T0 + 11 * DAY)
    entries = void(m, record.hold_id, T0 + 11 * DAY)
    voided = one(entries, MemberAccount.HoldVoided)
    assert voided.moves == (LotMove(sooner, 30), LotMove(later, 20))
    assert [m.lot(i).remaining for i in (never, later, sooner)] == [100, 40, 30]
    assert m.account.balance == Balances(170, 0, 0)


def test_a_hold_past_its_ttl_is_released_by_time_and_cannot_be_captured() -> None:
    m = Member(make_program())
    m.buy("o1", 10000, T0)
    record = place(m, "a", 30, T0, ttl_days=2)
    assert m.advance(T0 + DAY) == []
    entries = m.advance(T0 + 3 * DAY)
    expired = one(entries, MemberAccount.HoldExpired)
    assert expired.effective_at == T0 + 2 * DAY
    assert expired.provenance.origin.channel == "scheduler"
    assert m.account.balance == Balances(100, 0, 0)
    assert m.account.holds[record.hold_id].status == EXPIRED
    assert m.advance(T0 + 3 * DAY) == []  # idempotent for an instant
    with declined("hold_resolved"):
        capture(m, record.hold_id, T0 + 3 * DAY)


def test_a_capture_after_the_ttl_is_refused_even_before_the_scheduler_runs() -> None:
    m = Member(make_program())
    m.buy("o1", 10000, T0)
    record = place(m, "a", 30, T0, ttl_days=1)
    with declined("hold_resolved"):
        m.account.capture_hold(
            m.program, hold=record.hold_id, points=None, provenance=m.prov("c"), now=T0 + 2 * DAY
        )
    assert kinds(m.take()) == ["HoldExpired"]  # the expiry that was due is what remains


def test_held_points_returned_to_an_expired_lot_expire_at_once() -> None:
    m = Member(make_program(expiry={"months_after_earn": 1}))
    lot_id = new_lot(m.buy("o1", 10000, T0)).lot_id
    expires = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)
    record = place(m, "a", 60, expires - DAY, ttl_days=3)
    # At the lot's expiry only the 40 points not held expire.
    assert one(m.advance(expires), MemberAccount.PointsExpired).points == 40
    entries = m.advance(expires + 3 * DAY)
    assert kinds(entries) == ["HoldExpired", "PointsExpired"]
    assert one(entries, MemberAccount.PointsExpired).points == 60
    assert m.account.holds[record.hold_id].status == EXPIRED
    assert m.lot(lot_id).remaining == 0
    assert m.account.balance == Balances(0, 0, 0)
    assert m.account.balances[acc.EXPIRED] == 100


def test_held_points_cannot_be_redeemed_or_adjusted_away() -> None:
    m = Member(make_program())
    m.buy("o1", 10000, T0)
    place(m, "a", 80, T0)
    with declined("insufficient_points"):
        m.redeem("r1", T0, points=21)
    with declined("insufficient_points"):
        m.adjust(-21, T0)
    assert m.account.balance == Balances(20, 0, 80)
