"""A period-end tier review recorded before an earlier-dated earn or refund arrived is
decided again with it counted, so the tier, its held-until and the points earned since are
what time order gives, whichever topic is read first. Figures are worked out by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.domain.account import Balances, MemberAccount, SnapshotTooOld, TierChange
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from tests.support.histories import (
    Event,
    activity,
    apply_from_kafka,
    at,
    enrolment,
    open_ledger,
    purchase,
    refund,
)


def program(window: dict[str, Any]) -> Program:
    return Program.model_validate(
        {
            "id": "late-reviews",
            "name": "Late reviews",
            "timezone": "UTC",
            "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
            "earn": {"pending_days": 0},
            "expiry": {"months_after_earn": 24},
            "activities": {"birthday": {"points": 25, "limit": "per_year"}},
            "tiers": [
                {"id": "base", "name": "Base", "threshold": 0},
                {"id": "silver", "name": "Silver", "threshold": 100, "earn_multiplier": "2"},
            ],
            "tier_qualification": {"basis": "points", "grace_days": 0, **window},
        }
    )


def read(ledger: Ledger, clock: FixedClock, events: list[Event]) -> MemberAccount:
    """Kafka records one per batch in this order (each topic's offsets in order), the wall
    clock at the latest event read so far."""
    offsets: dict[str, int] = {}
    wall = events[0].occurred_at
    for event in events:
        wall = max(wall, event.occurred_at)
        offset = offsets[event.topic] = offsets.get(event.topic, -1) + 1
        assert apply_from_kafka(ledger, clock, wall, event, 0, offset).status == "applied"
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations
    account = ledger.app.find_account("m-1")
    assert account is not None
    return account


ROLLING = program({"window": "rolling_months", "months": 3})
KEPT = {
    "p1": purchase("k-1", "m-1", at("2026-08-03T09:00:00Z"), order_id="o1", total_minor=15000),
    "p2": purchase("k-2", "m-1", at("2026-10-20T09:00:00Z"), order_id="o2", total_minor=6000),
    "p3": purchase("k-3", "m-1", at("2026-11-05T09:00:00Z"), order_id="o3", total_minor=5000),
    "a1": activity("k-4", "m-1", at("2026-11-10T09:00:00Z"), name="birthday"),
}


@pytest.mark.parametrize(
    "order",
    [
        ["p1", "p2", "p3", "a1"],  # time order
        ["p1", "a1", "p2", "p3"],  # the birthday first: the Nov 3 review is recorded first
        ["p1", "p2", "a1", "p3"],
    ],
)
def test_a_late_purchase_that_would_have_kept_the_tier_at_a_review(
    tmp_path: Path, order: list[str]
) -> None:
    # By hand, rolling 3 months, Silver at 100 points (x2), no grace:
    #   Aug 3  $150 at Base = 150 (window 150 >= 100: Silver, reviewed Nov 3 09:00)
    #   Oct 20 $60 at Silver x2 = 120 (window 270: Silver again, now reviewed Jan 20 2027)
    #   Nov 5  $50 at Silver x2 = 100 (window 220: reviewed Feb 5 2027)
    #   Nov 10 birthday 25 (window 245: reviewed Feb 10 2027)
    #   150 + 120 + 100 + 25 = 395 points, Silver held until 2027-02-10 09:00.
    # Read with the birthday before the Oct 20 purchase, the Nov 3 review saw nothing in
    # (Aug 3, Nov 3) and took Silver away; the Oct 20 purchase decides it again (kept).
    clock = FixedClock(at("2026-11-10T09:00:00Z"))
    ledger = open_ledger(tmp_path / "store", ROLLING, clock)
    try:
        account = read(ledger, clock, [KEPT[name] for name in order])
        assert account.balance == Balances(available=395, pending=0, held=0)
        assert {o: (r.points, r.tier) for o, r in account.orders.items()} == {
            "o1": (150, "base"),
            "o2": (120, "silver"),
            "o3": (100, "silver"),
        }
        assert account.tier == "silver"
        assert account.tier_held_until == at("2027-02-10T09:00:00Z")
        assert account.tier_at(at("2026-11-04T00:00:00Z")) == "silver"
    finally:
        ledger.close()


HELD = {
    "p1": purchase("h-1", "m-1", at("2026-09-21T09:00:00Z"), order_id="o1", total_minor=15000),
    "a1": activity("h-2", "m-1", at("2026-10-12T09:00:00Z"), name="birthday"),
    "p2": purchase("h-3", "m-1", at("2026-12-28T09:00:00Z"), order_id="o2", total_minor=5000),
}


@pytest.mark.parametrize(
    "order",
    [
        ["p1", "a1", "p2"],  # time order
        ["a1", "p1", "p2"],  # the birthday first: no review recorded when p1 arrives
    ],
)
def test_a_late_upgrade_is_held_as_long_as_the_earns_dated_after_it_hold_it(
    tmp_path: Path, order: list[str]
) -> None:
    # By hand, rolling 3 months, Silver at 100 points (x2), no grace:
    #   Sep 21  $150 at Base = 150 (window 150: Silver, reviewed Dec 21 09:00)
    #   Oct 12  birthday 25 (window 175: Silver again, reviewed 2027-01-12 09:00)
    #   Dec 28  $50 at Silver x2 = 100 (window (Sep 28, Dec 28]: 125, reviewed 2027-03-28)
    #   150 + 25 + 100 = 275 points, Silver held until 2027-03-28 09:00. Read with the
    # birthday first, the late Sep 21 upgrade was held until Dec 21 only (the birthday had
    # counted before it), the Dec 21 review took Silver away and Dec 28 earned 50 at Base.
    clock = FixedClock(at("2026-12-28T09:00:00Z"))
    ledger = open_ledger(tmp_path / "store", ROLLING, clock)
    try:
        account = read(ledger, clock, [HELD[name] for name in order])
        assert account.balance == Balances(available=275, pending=0, held=0)
        assert {o: (r.points, r.tier) for o, r in account.orders.items()} == {
            "o1": (150, "base"),
            "o2": (100, "silver"),
        }
        assert account.tier == "silver"
        assert account.tier_held_until == at("2027-03-28T09:00:00Z")
    finally:
        ledger.close()


CALENDAR = program({"window": "calendar_year"})
LOST = {
    "p1": purchase("l-1", "m-1", at("2026-03-01T12:00:00Z"), order_id="o1", total_minor=15000),
    "r1": refund(
        "l-2", "m-1", at("2026-12-20T12:00:00Z"), order_id="o1", refund_id="r1", amount_minor=10000
    ),
    "p2": purchase("l-3", "m-1", at("2027-01-10T12:00:00Z"), order_id="o2", total_minor=5000),
}


@pytest.mark.parametrize(
    "order",
    [
        ["p1", "r1", "p2"],  # time order
        ["p1", "p2", "r1"],  # the refund after the 2027-01-01 review kept Silver
    ],
)
def test_a_late_refund_that_would_have_lost_the_tier_at_a_review(
    tmp_path: Path, order: list[str]
) -> None:
    # By hand, calendar year, Silver at 100 points (x2), no grace:
    #   Mar 1 2026   $150 at Base = 150 (150 in 2026 >= 100: Silver, reviewed 2027-01-01)
    #   Dec 20 2026  $100 of it refunded: 100 back (50 in 2026)
    #   Jan 1 2027   review: 50 < 100, down to Base (never reviewed again)
    #   Jan 10 2027  $50 at Base = 50
    #   150 - 100 + 50 = 100 points, Base. Read with the refund last, the review kept
    #   Silver on the 150 and the Jan 10 purchase earned 100 at Silver: the refund decides
    #   the review again (Base) and the purchase gives back the 50 Silver added.
    clock = FixedClock(at("2027-01-10T12:00:00Z"))
    ledger = open_ledger(tmp_path / "store", CALENDAR, clock)
    try:
        account = read(ledger, clock, [LOST[name] for name in order])
        assert account.balance == Balances(available=100, pending=0, held=0)
        o2 = account.orders["o2"]
        assert (o2.points, o2.tier) == (50, "base")
        assert o2.lot_id is not None
        assert (account.lots[o2.lot_id].amount, account.lots[o2.lot_id].remaining) == (50, 50)
        assert account.tier == "base"
        assert account.tier_held_until is None
        assert account.tier_at(at("2027-01-05T00:00:00Z")) == "base"
    finally:
        ledger.close()


OVERRIDE_END = {
    "p1": purchase("v-1", "m-1", at("2026-11-20T12:00:00Z"), order_id="o1", total_minor=12000),
    "p2": purchase("v-2", "m-1", at("2026-12-03T12:00:00Z"), order_id="o2", total_minor=5000),
    "a1": activity("v-3", "m-1", at("2026-12-05T12:00:00Z"), name="birthday"),
}


@pytest.mark.parametrize(
    "order",
    [
        ["p1", "p2", "a1"],  # time order
        ["a1", "p1", "p2"],  # the birthday first: the override's end is recorded first
    ],
)
def test_a_late_purchase_decides_an_override_end_again(tmp_path: Path, order: list[str]) -> None:
    # By hand, calendar year, Silver at 100 points (x2), no grace. Ops set Silver on
    # 2026-09-01, locked until 2026-12-01 12:00, for a member enrolled on Aug 1:
    #   Nov 20  $120 at Silver x2 = 240 (the lock keeps the tier as set)
    #   Dec 1   the override ends: 240 in 2026 >= 100, Silver held until 2027-01-01
    #   Dec 3   $50 at Silver x2 = 100
    #   Dec 5   birthday 25
    #   240 + 100 + 25 = 365 points, Silver held until 2027-01-01. Read with the birthday
    # first, the override's end saw nothing in 2026 and gave Base, and the Dec 3 purchase
    # earned 50 at Base; the Nov 20 purchase decides the override's end again (Silver).
    clock = FixedClock(at("2026-08-01T12:00:00Z"))
    ledger = open_ledger(tmp_path / "store", CALENDAR, clock)
    try:
        joined = enrolment("v-0", "m-1", at("2026-08-01T12:00:00Z"))
        assert apply_from_kafka(ledger, clock, clock.now(), joined, 1, 0).status == "applied"
        clock.set(at("2026-09-01T12:00:00Z"))
        ledger.app.assign_tier(
            "m-1",
            "silver",
            reason="goodwill",
            actor="ops",
            until=at("2026-12-01T12:00:00Z"),
            locked=True,
        )
        account = read(ledger, clock, [OVERRIDE_END[name] for name in order])
        assert account.balance == Balances(available=365, pending=0, held=0)
        assert {o: (r.points, r.tier) for o, r in account.orders.items()} == {
            "o1": (240, "silver"),
            "o2": (100, "silver"),
        }
        assert account.tier == "silver"
        assert not account.tier_locked
        assert account.tier_held_until == at("2027-01-01T00:00:00Z")
    finally:
        ledger.close()


def test_a_version_2_snapshot_with_an_ops_override_is_rebuilt_from_the_events() -> None:
    # Version 2 tier changes kept no override end or lock, which deciding an override's
    # end again needs: such a snapshot is refused (the events are folded instead).
    when = at("2026-09-01T12:00:00Z")
    override = TierChange(when, 3, "silver", "override", 1, when, when)
    upgrade = TierChange(when, 4, "silver", "upgrade", 1, when, when)
    with pytest.raises(SnapshotTooOld):
        MemberAccount.upcast_v2_v3({"member_id": "m-1", "tier_changes": [upgrade, override]})
    state: dict[str, Any] = {"member_id": "m-1", "tier_changes": [upgrade]}
    MemberAccount.upcast_v2_v3(state)  # no override: loads as it is
    assert state["tier_changes"] == [upgrade]
