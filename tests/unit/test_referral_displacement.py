"""A referral displaced by an earlier one read later (issue 10): the members end where time
order leaves them, with the figures worked out by hand.

1. Tiers: an upgrade that the displaced bonus had superseded, or a period-end review it
   made keep a tier, is decided again without the bonus.
2. A member whom only the displaced referral enrolled is no member again.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.ledger.application.commands import adjust
from services.ledger.application.program_metrics import compute
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.domain.account import Balances
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.errors import Declined
from services.ledger.domain.program import Program
from tests.support.histories import (
    Event,
    activity,
    apply_from_kafka,
    at,
    purchase,
    redemption,
    referral,
    refund,
)
from tests.unit.conftest import Open


def program(**document: Any) -> Program:
    base: dict[str, Any] = {
        "id": "examples",
        "name": "Examples",
        "timezone": "UTC",
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
        "referral": {"referrer_points": 20, "referee_points": 10},
    }
    return Program.model_validate(base | document)


def read(ledger: Ledger, clock: FixedClock, events: list[tuple[Event, int]]) -> list[str]:
    """Kafka records, one per batch in this order, each on its (topic, partition); the wall
    clock at the latest event read so far."""
    offsets: dict[tuple[str, int], int] = {}
    statuses = []
    wall = clock.now()
    for event, partition in events:
        key = (event.topic, partition)
        offset = offsets[key] = offsets.get(key, -1) + 1
        wall = max(wall, event.occurred_at)
        statuses.append(apply_from_kafka(ledger, clock, wall, event, partition, offset).status)
    return statuses


def state(ledger: Ledger, member: str) -> tuple[Balances, str | None]:
    account = ledger.app.find_account(member)
    assert account is not None
    return account.balance, account.tier


# ------------------------------------------------------------------------------ 1. tiers

# Points in the calendar year; tier multipliers 1, so only the tier shows the difference.
THREE_TIERS = program(
    activities={"review": {"points": 15, "limit": "unlimited"}},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 30},
        {"id": "gold", "name": "Gold", "threshold": 35},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_an_upgrade_a_displaced_bonus_had_superseded_is_checked_again(open_fresh: Open) -> None:
    ledger, clock = open_fresh(THREE_TIERS, at("2026-05-01T00:00:00Z"))
    earliest = referral("s-1", "m-a", at("2026-05-01T09:00:00Z"), referee="m-r")
    displaced = referral("s-2", "m-b", at("2026-05-01T10:00:00Z"), referee="m-r")
    late = activity("s-3", "m-b", at("2026-05-01T10:30:00Z"), name="review", reference="q-1")
    bought = purchase("s-4", "m-b", at("2026-05-01T11:00:00Z"), order_id="o-1", total_minor=1000)
    statuses = read(ledger, clock, [(displaced, 1), (bought, 0), (late, 0), (earliest, 0)])
    assert statuses == ["applied"] * 4

    # By hand, in time order: 09:00 m-a refers m-r (m-a +20, m-r +10); 10:00 m-b's referral
    # of m-r is declined (m-r was referred); 10:30 m-b +15 (review), 11:00 m-b +10 ($10):
    # m-b's year holds 25 < 30, Base. Read as above, m-b's bonus (20) and $10 reach Silver
    # at 11:00 (30); the review read late reaches Gold at 10:30 (35), which supersedes
    # that Silver; m-a's referral then takes the bonus back: Gold goes, and Silver at 11:00
    # (25 without the bonus) must not come back.
    assert state(ledger, "m-b") == (Balances(25, 0, 0), "base")
    assert state(ledger, "m-a") == (Balances(20, 0, 0), "base")
    assert state(ledger, "m-r") == (Balances(10, 0, 0), "base")
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


# Silver earns double; reviewed at the end of each calendar year (no grace).
SILVER_X2 = program(
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 30, "earn_multiplier": "2"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_a_review_a_displaced_bonus_made_keep_a_tier_is_decided_again(open_fresh: Open) -> None:
    ledger, clock = open_fresh(SILVER_X2, at("2025-06-01T00:00:00Z"))
    first = purchase("v-1", "m-b", at("2025-06-01T09:00:00Z"), order_id="o-1", total_minor=4000)
    earliest = referral("v-2", "m-a", at("2026-02-15T09:00:00Z"), referee="m-r")
    displaced = referral("v-3", "m-b", at("2026-03-01T09:00:00Z"), referee="m-r")
    second = purchase("v-4", "m-b", at("2026-04-01T09:00:00Z"), order_id="o-2", total_minor=1000)
    third = purchase("v-5", "m-b", at("2027-02-01T09:00:00Z"), order_id="o-3", total_minor=1000)
    statuses = read(
        ledger, clock, [(first, 0), (displaced, 1), (second, 0), (third, 0), (earliest, 0)]
    )
    assert statuses == ["applied"] * 5

    # By hand, in time order: 2025-06-01 m-b +40 ($40 at Base): Silver, held for 2025; at
    # 2026-01-01 the year 2025 (40) keeps it for 2026. 2026-02-15 m-a refers m-r; m-b's
    # referral of 03-01 is declined. 2026-04-01 $10 at Silver: +20. At 2027-01-01 the year
    # 2026 holds 20 < 30: down to Base. 2027-02-01 $10 at Base: +10. m-b: 40 + 20 + 10 = 70.
    # Read as above, the bonus (20) made 2026 hold 40 and kept Silver at 2027-01-01, so the
    # last $10 earned 20; once the bonus is taken back, that review downgrades, and the
    # last purchase earns 10.
    assert state(ledger, "m-b") == (Balances(70, 0, 0), "base")
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


# ------------------------------------------------------------------- 2. no member again

PLAIN = program(tiers=[{"id": "base", "name": "Base", "threshold": 0}])


def members(ledger: Ledger) -> dict[str, tuple[int, str | None]]:
    """Every member the read side shows: available points and tier."""
    ledger.projection.run()
    return {r.member_id: (r.available, r.tier) for r in ledger.view.all_balances()}


@pytest.mark.parametrize("first_read", ["earliest", "latest"])
def test_a_member_only_a_displaced_referral_enrolled_is_no_member(
    open_fresh: Open, first_read: str
) -> None:
    ledger, clock = open_fresh(PLAIN, at("2026-05-01T00:00:00Z"))
    earliest = (referral("n-1", "m-a", at("2026-05-01T10:00:00Z"), referee="m-r"), 0)
    latest = (referral("n-2", "m-b", at("2026-05-01T11:00:00Z"), referee="m-r"), 1)
    read(ledger, clock, [earliest, latest] if first_read == "earliest" else [latest, earliest])

    # By hand, in time order: 10:00 m-a refers m-r (m-a +20, m-r +10); 11:00 m-b's referral
    # of m-r is declined (parked until its deadline): m-b, who has no other event, is no
    # member. Read the other way, m-b was enrolled by its referral; once it is displaced
    # (its bonus taken back), m-b is no member either: no balance, not counted.
    assert members(ledger) == {"m-a": (20, "base"), "m-r": (10, "base")}
    assert ledger.balance("m-b") is None  # GET /v1/members/m-b/balance: 404
    figures = compute(ledger.view.all_balances(), ledger.view.all_entries(), clock.now(), 30)
    assert (figures.members, figures.per_tier, figures.active) == (2, {"base": 2}, 2)
    assert verify(ledger.app, ledger.view).ok
    with pytest.raises(Declined) as declined:  # an operator's adjustment: no such member
        adjust(ledger.app, "m-b", 5, reason="goodwill", actor="ops")
    assert declined.value.reason == "unknown_member"

    # m-b's own first event, read next, enrols m-b as it would have in time order.
    bought = purchase("n-3", "m-b", at("2026-05-01T12:00:00Z"), order_id="o-1", total_minor=500)
    assert read(ledger, clock, [(bought, 0)]) == ["applied"]
    assert members(ledger) == {"m-a": (20, "base"), "m-b": (5, "base"), "m-r": (10, "base")}
    assert verify(ledger.app, ledger.view).ok


# Gold from 40 here, and a survey earns 20.
GOLD_40 = program(
    activities={"survey": {"points": 20, "limit": "unlimited"}},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 30},
        {"id": "gold", "name": "Gold", "threshold": 40},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_an_upgrade_a_displaced_bonus_had_superseded_and_still_reached_is_in_force_again(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(GOLD_40, at("2026-05-01T00:00:00Z"))
    earliest = referral("u-1", "m-a", at("2026-05-01T09:00:00Z"), referee="m-r")
    displaced = referral("u-2", "m-b", at("2026-05-01T10:00:00Z"), referee="m-r")
    late = activity("u-3", "m-b", at("2026-05-01T10:30:00Z"), name="survey", reference="q-1")
    bought = purchase("u-4", "m-b", at("2026-05-01T11:00:00Z"), order_id="o-1", total_minor=1500)
    statuses = read(ledger, clock, [(displaced, 1), (bought, 0), (late, 0), (earliest, 0)])
    assert statuses == ["applied"] * 4

    # By hand, in time order: m-b's referral (10:00) is declined; 10:30 m-b +20 (survey),
    # 11:00 m-b +15 ($15): 35 >= 30, Silver from 11:00. Read as above, the bonus (20) and
    # $15 reach Silver at 11:00 (35); the survey read late reaches Gold at 10:30 (40),
    # superseding it; once the bonus is taken back, Gold goes (20 at 10:30) and Silver at
    # 11:00 (35 without the bonus) holds again, on the ledger and on the read side.
    assert state(ledger, "m-b") == (Balances(35, 0, 0), "silver")
    assert members(ledger)["m-b"] == (35, "silver")
    assert verify(ledger.app, ledger.view).ok


# ------------------------------------------------------------ 3. a bonus that expired

EXPIRING = program(expiry={"months_after_earn": 1})


def test_a_displaced_bonus_that_expired_does_not_fund_a_redemption_dated_before_its_expiry(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(EXPIRING, at("2026-05-01T00:00:00Z"))
    earliest = referral("e-1", "m-a", at("2026-05-01T09:00:00Z"), referee="m-r")
    displaced = referral("e-2", "m-b", at("2026-05-01T10:00:00Z"), referee="m-r")
    first = purchase("e-3", "m-b", at("2026-05-15T09:00:00Z"), order_id="o-1", total_minor=1000)
    spent = redemption("e-4", "m-b", at("2026-05-20T09:00:00Z"), redemption_id="x-1", points=25)
    second = purchase("e-5", "m-b", at("2026-06-05T09:00:00Z"), order_id="o-2", total_minor=500)
    read(ledger, clock, [(displaced, 1), (first, 0), (second, 0), (earliest, 0), (spent, 0)])

    # By hand, in time order: m-b's referral (05-01 10:00) is declined (m-a referred m-r
    # first); 05-15 m-b +10; the redemption of 25 on 05-20 finds 10: it waits and is
    # declined at its deadline; 06-05 m-b +5: m-b holds 15. Read as above, m-b's bonus (20)
    # expired on 06-01 before m-a's referral took it back (nothing left to take); the
    # redemption read last, dated before that expiry, must not find those 20 points.
    assert state(ledger, "m-b")[0] == Balances(15, 0, 0)
    account = ledger.app.find_account("m-b")
    assert account is not None
    assert "x-1" not in account.redemptions or account.redemptions["x-1"].status != "redeemed"
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_displaced_bonus_spent_in_part_and_expired_in_part_is_taken_out_of_the_spend(
    open_fresh: Open,
) -> None:
    """A redemption took part of a displaced bonus and the rest expired before the earlier
    referral was read: in event time the bonus was never there, so the redemption took
    other points then; nothing is taken from what the member holds now (the CI case of
    issue 10: a referral cycle read after a month of purchases)."""
    ledger, clock = open_fresh(EXPIRING, at("2026-05-01T00:00:00Z"))
    earliest = referral("f-1", "m-a", at("2026-05-01T09:00:00Z"), referee="m-r")
    displaced = referral("f-2", "m-b", at("2026-05-01T10:00:00Z"), referee="m-r")
    first = purchase("f-3", "m-b", at("2026-05-01T11:00:00Z"), order_id="o-1", total_minor=1000)
    spent = redemption("f-4", "m-b", at("2026-05-10T09:00:00Z"), redemption_id="x-1", points=8)
    second = purchase("f-5", "m-b", at("2026-05-20T09:00:00Z"), order_id="o-2", total_minor=1000)
    read(
        ledger,
        clock,
        [(displaced, 1), (first, 0), (spent, 0), (second, 0)],
    )
    ledger.tick(at("2026-06-05T00:00:00Z"))
    # Read so far (expiry one month after earn): the bonus (20, expires 06-01 10:00) is
    # spent first: x-1 takes 8 of it, its other 12 expire on 06-01, and o-1's 10 expire at
    # 11:00; o-2's 10 are left.
    assert state(ledger, "m-b")[0] == Balances(10, 0, 0)
    read(ledger, clock, [(earliest, 0)])

    # By hand, in time order: m-b's referral (05-01 10:00) is declined, m-a referred m-r
    # first; o-1 +10 (expires 06-01 11:00); 05-10 x-1 takes 8 of o-1; its other 2 expire on
    # 06-01; o-2 +10: m-b holds 10. Taken back from what m-b holds now (8 of o-2), the
    # balance would be 2.
    assert state(ledger, "m-b")[0] == Balances(10, 0, 0)
    account = ledger.app.find_account("m-b")
    assert account is not None
    took = {account.lots[m.lot_id].source: -m.amount for m in account.redemptions["x-1"].moves}
    assert took == {"order o-1": 8}
    assert {lot.source: lot.remaining for lot in account.lots.values()} == {
        "referral of m-r": 0,
        "order o-1": 0,
        "order o-2": 10,
    }
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


UNLIMITED = program(returns={"policy": "unlimited"})


def test_a_late_earn_does_not_settle_into_a_bonus_taken_back(open_fresh: Open) -> None:
    """Under the unlimited policy a late earn settles what was owed first, and gives back
    what the lots that came after it settled. A displaced bonus (20, taken back in full)
    lost its points to its reversal, not to a settle: the late earn keeps its point (the
    CI case of the unlimited policy)."""
    ledger, clock = open_fresh(UNLIMITED, at("2026-05-01T00:00:00Z"))
    bought = purchase("g-1", "m-0", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=500)
    returned = refund(
        "g-2", "m-0", at("2026-05-01T09:10:00Z"), order_id="o-1", refund_id="r-1", amount_minor=100
    )
    earliest = referral("g-3", "m-1", at("2026-05-01T09:20:00Z"), referee="m-0")
    late = purchase("g-4", "m-0", at("2026-05-01T09:25:00Z"), order_id="o-2", total_minor=100)
    circular = referral("g-5", "m-0", at("2026-05-01T09:30:00Z"), referee="m-1")
    statuses = read(
        ledger, clock, [(circular, 1), (bought, 0), (returned, 0), (earliest, 0), (late, 1)]
    )
    assert statuses == ["applied"] * 5

    # By hand, in time order: o-1 +5; r-1 takes 1 of them back (4 left; nothing owed);
    # 09:20 m-1 refers m-0: m-0's welcome bonus 10; o-2 +1; 09:30 m-0's referral of m-1 is
    # circular and does not count. m-0 holds 4 + 10 + 1 = 15, each lot what it earned.
    assert state(ledger, "m-0")[0] == Balances(15, 0, 0)
    account = ledger.app.find_account("m-0")
    assert account is not None
    assert account.debt == 0
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 4, "referral by m-1": 10, "order o-2": 1}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_displaced_bonus_spent_while_points_are_owed_is_taken_out_of_the_spend(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: a redemption spent a displaced bonus, and a refund after
    it left points owed; when the earlier referral arrives, the redemption takes again
    without the bonus (too few points then: it waits again) and the refund finds its
    order's points. Before, the spent bonus was owed on top of the refund's debt."""
    ledger, clock = open_fresh(UNLIMITED, at("2026-05-01T00:00:00Z"))
    earliest = referral("h-1", "m-a", at("2026-05-01T09:00:00Z"), referee="m-r")
    displaced = referral("h-2", "m-b", at("2026-05-01T10:00:00Z"), referee="m-r")
    bought = purchase("h-3", "m-b", at("2026-05-02T09:00:00Z"), order_id="o-1", total_minor=3000)
    spent = redemption("h-4", "m-b", at("2026-05-05T09:00:00Z"), redemption_id="x-1", points=50)
    returned = refund(
        "h-5", "m-b", at("2026-05-10T09:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=3000
    )
    statuses = read(
        ledger, clock, [(displaced, 1), (bought, 0), (spent, 0), (returned, 0), (earliest, 0)]
    )
    assert statuses == ["applied"] * 5

    # By hand, in time order: m-b's referral (05-01 10:00) is declined (m-a referred m-r
    # first); 05-02 o-1 +30; 05-05 x-1 of 50 finds 30: it waits; 05-10 r-1 takes back
    # o-1's 30. m-b holds 0, owes nothing; x-1 still waits (declined at its deadline).
    assert state(ledger, "m-b")[0] == Balances(0, 0, 0)
    account = ledger.app.find_account("m-b")
    assert account is not None
    assert account.redemptions["x-1"].status == "withdrawn"
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations
