"""One history, one ledger: the cases the issue saw, each with its figures worked out by hand.

1. Tiers decided inline: a spend-based program's points are the same whether its purchases
   arrive in one batch or one by one, an upgrade counts from the very next earn, and the
   entry tier's multiplier applies to a member's first purchase.
2. Backfill: a file of last January's events, ingested in November, is applied as of each
   event's time, so a redemption of points that had not expired yet is applied.
3. Arrival order: a redemption read before the purchase that funds it is parked and applied
   when the purchase arrives; an explicit enrolment after an auto-enrolment completes it;
   of two referrals of one referee the earliest pays, whichever is read first.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import Mapper, StoredEvent

from services.ledger.application.compact import long_topic
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.domain.account import (
    Balances,
    MemberAccount,
    RedemptionRecord,
    SnapshotTooOld,
    account_id,
)
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from tests.support.histories import (
    PARKED,
    Event,
    activity,
    apply_at,
    apply_from_kafka,
    at,
    cancellation,
    enrolment,
    file_item,
    lot_content,
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
    }
    return Program.model_validate(base | document)


def dollars(amount: int) -> int:
    return amount * 100


def earned_by_order(ledger: Ledger, member: str) -> dict[str, tuple[int, str | None]]:
    """Order id -> (points, tier named on the entry) of the member's purchase earns."""
    ledger.projection.run()
    found: dict[str, tuple[int, str | None]] = {}
    for row in ledger.statement(member, limit=1000):
        reference = row.body["details"].get("reference") or ""
        if row.entry_type == "points_earned" and reference.startswith("order:"):
            found[reference.removeprefix("order:")] = (
                row.body["points"],
                row.body["provenance"]["tier"],
            )
    return found


# ------------------------------------------------------------- 1. tiers decided inline

# Sephora-like: 1 point per dollar; tiers by spend in the calendar year (thresholds in cents).
BEAUTY = program(
    tiers=[
        {"id": "insider", "name": "Insider", "threshold": 0},
        {"id": "vib", "name": "VIB", "threshold": dollars(350), "earn_multiplier": "1.25"},
        {"id": "rouge", "name": "Rouge", "threshold": dollars(1000), "earn_multiplier": "1.5"},
    ],
    tier_qualification={"basis": "spend", "window": "calendar_year"},
)

BEAUTY_ORDERS = [
    purchase("b-1", "m-1", at("2026-02-10T15:00:00Z"), order_id="feb", total_minor=dollars(300)),
    purchase("b-2", "m-1", at("2026-03-10T15:00:00Z"), order_id="mar", total_minor=dollars(400)),
    purchase("b-3", "m-1", at("2026-05-10T15:00:00Z"), order_id="may", total_minor=dollars(500)),
    purchase("b-4", "m-1", at("2026-06-10T15:00:00Z"), order_id="jun", total_minor=dollars(200)),
]
# By hand (each purchase earns at the tier held before it; its spend may then upgrade):
#   Feb $300: Insider x1    = 300; spend 2026 = $300  (< $350)
#   Mar $400: Insider x1    = 400; spend 2026 = $700  (>= $350: VIB from the next earn)
#   May $500: VIB x1.25     = 625; spend 2026 = $1200 (>= $1000: Rouge from the next earn)
#   Jun $200: Rouge x1.5    = 300
#   total 300 + 400 + 625 + 300 = 1625 points
BEAUTY_EARNS = {
    "feb": (300, "insider"),
    "mar": (400, "insider"),
    "may": (625, "vib"),
    "jun": (300, "rouge"),
}
BEAUTY_TOTAL = 1625
BEAUTY_NOW = at("2026-06-30T12:00:00Z")  # the wall clock for every batch: an import


@pytest.mark.parametrize("batches", ["one batch", "one event per batch"])
def test_a_spend_tier_upgrade_counts_from_the_next_earn_however_the_orders_are_batched(
    open_fresh: Open, batches: str
) -> None:
    ledger, clock = open_fresh(BEAUTY, BEAUTY_NOW)
    items = [file_item(event, line) for line, event in enumerate(BEAUTY_ORDERS, 1)]
    split = [items] if batches == "one batch" else [[item] for item in items]
    outcomes = [o for batch in split for o in apply_at(ledger, clock, BEAUTY_NOW, batch)]
    assert [o.status for o in outcomes] == ["applied"] * 4
    ledger.app.advance_members(["m-1"], BEAUTY_NOW)

    assert earned_by_order(ledger, "m-1") == BEAUTY_EARNS
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=BEAUTY_TOTAL, pending=0, held=0)
    assert account.tier == "rouge"


def test_the_entry_tier_multiplier_doubles_a_new_members_first_purchase(
    open_fresh: Open,
) -> None:
    doubled = program(
        tiers=[
            {"id": "welcome", "name": "Welcome", "threshold": 0, "earn_multiplier": "2"},
            {"id": "gold", "name": "Gold", "threshold": 1000, "earn_multiplier": "3"},
        ],
        tier_qualification={"basis": "points", "window": "calendar_year"},
    )
    ledger, clock = open_fresh(doubled, at("2026-04-01T12:00:00Z"))
    first = purchase("w-1", "m-new", at("2026-04-01T11:00:00Z"), order_id="w1", total_minor=1000)
    [outcome] = apply_at(ledger, clock, clock.now(), [file_item(first, 1)])
    assert outcome.status == "applied"

    # $10 at 1 point per dollar, in the entry tier x2: 10 * 2 = 20 points (not 10).
    assert earned_by_order(ledger, "m-new") == {"w1": (20, "welcome")}
    account = ledger.app.find_account("m-new")
    assert account is not None
    assert account.balance == Balances(available=20, pending=0, held=0)
    assert account.tier == "welcome"


def test_purchases_read_after_a_later_activity_reach_the_tiers_they_reach_in_time_order(
    open_fresh: Open,
) -> None:
    """The member's birthday (Sept 13) is read first, then three earlier purchases."""
    tiered = program(
        tiers=[
            {"id": "base", "name": "Base", "threshold": 0, "earn_multiplier": "2"},
            {"id": "silver", "name": "Silver", "threshold": 300, "earn_multiplier": "1.25"},
            {"id": "gold", "name": "Gold", "threshold": 900, "earn_multiplier": "1.5"},
        ],
        tier_qualification={"basis": "points", "window": "calendar_year"},
        activities={"birthday": {"points": 25, "limit": "per_year"}},
    )
    now = at("2026-09-13T05:34:00Z")
    ledger, clock = open_fresh(tiered, now)
    birthday = activity("t-4", "m-3", now, name="birthday")
    orders = [
        purchase("t-1", "m-3", at("2026-08-03T16:57:00Z"), order_id="o0", total_minor=14400),
        purchase("t-2", "m-3", at("2026-08-09T08:36:00Z"), order_id="o3", total_minor=12200),
        purchase("t-3", "m-3", at("2026-09-06T13:20:00Z"), order_id="o20", total_minor=30000),
    ]
    for offset, event in enumerate([birthday, *orders]):
        assert apply_from_kafka(ledger, clock, now, event, 0, offset).status == "applied"
    # By hand, in time order: Aug 3 $144 at Base x2 = 288 (288 in the year); Aug 9 $122 at
    # Base x2 = 244 (532 >= 300: Silver next); Sept 6 $300 at Silver x1.25 = 375 (907 >= 900:
    # Gold); Sept 13 birthday 25. Gold, 932 points. Read in this order, the first purchase
    # alone made 313 with the birthday and upgraded to Silver on Sept 13: the Gold reached
    # on Sept 6 supersedes that upgrade.
    assert earned_by_order(ledger, "m-3") == {
        "o0": (288, "base"),
        "o3": (244, "base"),
        "o20": (375, "silver"),
    }
    account = ledger.app.find_account("m-3")
    assert account is not None
    assert account.balance == Balances(available=932, pending=0, held=0)
    assert account.tier == "gold"


def test_a_refunded_purchase_topped_up_by_a_late_tier_keeps_its_refunds_share(
    open_fresh: Open,
) -> None:
    """A refunded purchase, then the earlier activity that had put the member in Silver."""
    tiered = program(
        tiers=[
            {"id": "base", "name": "Base", "threshold": 0},
            {"id": "silver", "name": "Silver", "threshold": 100, "earn_multiplier": "2"},
        ],
        tier_qualification={"basis": "points", "window": "calendar_year"},
        activities={"signup": {"points": 100, "limit": "once"}},
    )
    now = at("2026-08-04T12:00:00Z")
    ledger, clock = open_fresh(tiered, now)
    read = [
        purchase("r-2", "m-1", at("2026-08-02T12:00:00Z"), order_id="o2", total_minor=5000),
        refund(
            "r-3",
            "m-1",
            at("2026-08-03T12:00:00Z"),
            order_id="o2",
            refund_id="rf",
            amount_minor=2500,
        ),
        activity("r-1", "m-1", at("2026-08-01T12:00:00Z"), name="signup"),
    ]
    for offset, event in enumerate(read):
        assert apply_from_kafka(ledger, clock, now, event, 0, offset).status == "applied"
    # By hand, in time order: Aug 1 signup 100 (Silver from the next earn); Aug 2 $50 at
    # Silver x2 = 100; Aug 3 half refunded: 50 back. 100 + 100 - 50 = 150 points, the order's
    # lot 50 of 100. Read in this order the purchase earned 50 at Base and its refund took 25
    # back; the late Silver tops the order up by 50, of which its refund takes 25.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=150, pending=0, held=0)
    assert account.lifetime_earned == 150
    assert account.tier == "silver"
    lot_id = account.orders["o2"].lot_id
    assert lot_id is not None
    order_lot = account.lots[lot_id]
    assert (order_lot.amount, order_lot.remaining) == (100, 50)
    ledger.projection.run()
    view = ledger.balance("m-1", now)
    assert view is not None
    assert view.lifetime_earned == 150  # the view agrees


RETRACT_TIERS = program(
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 100, "earn_multiplier": "2"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
    activities={"signup": {"points": 40, "limit": "once"}},
)
RETRACT_EVENTS = {
    "o1": purchase("q-1", "m-1", at("2026-08-01T12:00:00Z"), order_id="o1", total_minor=8000),
    "r1": refund(
        "q-2", "m-1", at("2026-08-02T12:00:00Z"), order_id="o1", refund_id="r1", amount_minor=4000
    ),
    "signup": activity("q-3", "m-1", at("2026-08-03T12:00:00Z"), name="signup"),
    "o2": purchase("q-4", "m-1", at("2026-08-04T12:00:00Z"), order_id="o2", total_minor=3000),
}


@pytest.mark.parametrize(
    "read",
    [
        ["o1", "r1", "signup", "o2"],  # time order
        ["o1", "signup", "r1", "o2"],  # the refund after the signup that upgraded
        ["o1", "signup", "o2", "r1"],  # ... and after a purchase earned at the upgraded tier
        ["o1", "r1", "o2", "signup"],  # the signup last: it upgrades after o2
    ],
)
def test_a_refund_dated_before_an_upgrade_it_undoes_retracts_it_whenever_it_is_read(
    open_fresh: Open, read: list[str]
) -> None:
    # By hand, in time order: Aug 1 $80 = 80 (80 in the year); Aug 2 half refunded: 40
    # back (40); Aug 3 signup 40 (80 < 100); Aug 4 $30 at Base = 30 (110 >= 100: Silver from
    # the next earn). 80 - 40 + 40 + 30 = 110 points, Silver. Read with the signup before
    # the refund, the signup reached Silver on Aug 3 (120); the refund dated Aug 2 retracts
    # that upgrade, and a purchase earned at Silver since gives back what Silver added.
    now = at("2026-08-05T12:00:00Z")
    ledger, clock = open_fresh(RETRACT_TIERS, now)
    for offset, name in enumerate(read):
        event = RETRACT_EVENTS[name]
        assert apply_from_kafka(ledger, clock, now, event, 0, offset).status == "applied"
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=110, pending=0, held=0)
    assert account.tier == "silver"
    assert account.tier_at(at("2026-08-03T18:00:00Z")) == "base"
    lot_id = account.orders["o2"].lot_id
    assert lot_id is not None
    assert (account.lots[lot_id].amount, account.lots[lot_id].remaining) == (30, 30)
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


# ---------------------------------------------------------------------- 2. backfill


def test_a_backfilled_file_applies_each_event_as_of_its_time(open_fresh: Open) -> None:
    backfill = program(
        earn={"pending_days": 2},
        expiry={"months_after_earn": 6},
        activities={},
    )
    ledger, clock = open_fresh(backfill, at("2026-11-20T12:00:00Z"))
    events = [
        purchase("f-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=6000),
        redemption("f-2", "m-1", at("2026-03-01T10:00:00Z"), redemption_id="x-1", points=50),
    ]
    # The wall clock stays at 2026-11-20 for the whole file.
    outcomes = apply_at(
        ledger, clock, clock.now(), [file_item(e, i) for i, e in enumerate(events, 1)]
    )
    # By hand: $60 earns 60 points on 01-10, pending until 01-12 10:00 (2 days), expiring
    # 2026-07-10 10:00 (6 months after the earn; expiry_for rounds nothing). On 03-01 all 60
    # are available, so the 50-point redemption is applied, leaving 10.
    assert [(o.status, o.reason) for o in outcomes] == [("applied", None), ("applied", None)]

    ledger.app.advance_members(["m-1"], clock.now())
    account = ledger.app.find_account("m-1")
    assert account is not None
    # The 10 left expire on 2026-07-10 10:00: nothing is left on 2026-11-20.
    assert account.balance == Balances(available=0, pending=0, held=0)
    [lot] = account.lots.values()
    assert lot_content(lot) == (
        60,
        0,
        "available",
        at("2026-01-10T10:00:00Z"),
        at("2026-01-12T10:00:00Z"),
        at("2026-07-10T10:00:00Z"),
        "order o-1",
    )
    ledger.projection.run()
    moves = [
        (row.entry_type, row.effective_at, row.body["points"])
        for row in sorted(ledger.statement("m-1", limit=100), key=lambda row: row.seq)
        if row.entry_type != "enrolled"
    ]
    assert moves == [
        ("points_earned", at("2026-01-10T10:00:00Z"), 60),
        ("pending_released", at("2026-01-12T10:00:00Z"), 0),  # pending -> available
        ("points_redeemed", at("2026-03-01T10:00:00Z"), -50),
        ("points_expired", at("2026-07-10T10:00:00Z"), -10),
    ]


# ------------------------------------------------------------------ 3. arrival order

ARRIVAL = program(
    expiry={"months_after_earn": 6},
    activities={"signup": {"points": 10, "limit": "once"}},
    referral={"referrer_points": 20, "referee_points": 10},
)
READ_AT = at("2026-05-01T12:00:00Z")  # the wall clock when the records are read


def read(ledger: Ledger, clock: FixedClock, events: list[tuple[Event, int]]) -> list[str]:
    """Kafka records, one per batch in this order, each on its (topic, partition)."""
    offsets: dict[tuple[str, int], int] = {}
    statuses = []
    for event, partition in events:
        key = (event.topic, partition)
        offset = offsets[key] = offsets.get(key, -1) + 1
        statuses.append(apply_from_kafka(ledger, clock, READ_AT, event, partition, offset).status)
    return statuses


def read_as_it_comes(ledger: Ledger, clock: FixedClock, events: list[Event]) -> list[str]:
    """Kafka records, one per batch in this order, each on partition 0 of its topic, with
    the wall clock at the latest event read so far (time-driven work runs up to it)."""
    offsets: dict[str, int] = {}
    statuses = []
    wall = events[0].occurred_at
    for event in events:
        offset = offsets[event.topic] = offsets.get(event.topic, -1) + 1
        wall = max(wall, event.occurred_at)
        statuses.append(apply_from_kafka(ledger, clock, wall, event, 0, offset).status)
    return statuses


def test_a_redemption_read_before_the_purchase_funding_it_is_applied_when_it_arrives(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("k-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=8000)
    spent = redemption("k-2", "m-1", at("2026-05-01T09:05:00Z"), redemption_id="x-1", points=50)
    # The redemptions topic is read first: no account, no points yet.
    assert read(ledger, clock, [(spent, 0)]) == [PARKED]
    assert read(ledger, clock, [(bought, 0)]) == ["applied"]

    # By hand: $80 earns 80 points at 09:00 (no pending period); the redemption of 09:05
    # then takes 50: 80 - 50 = 30 left, with no redrive.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    assert account.balance == Balances(available=30, pending=0, held=0)


def test_a_parked_redemption_is_declined_and_dead_lettered_at_its_deadline(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("k-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=2000)
    spent = redemption("k-2", "m-1", at("2026-05-01T09:05:00Z"), redemption_id="x-1", points=50)
    assert read(ledger, clock, [(bought, 0), (spent, 0)]) == ["applied", PARKED]
    # 20 points, 50 asked: it waits until 09:05 + 72 h (the program's default park_hours).
    assert ledger.tick(at("2026-05-04T09:04:00Z")) == 0
    assert [e.event_id for _, e in ledger.app.parked()] == ["k-2"]
    assert ledger.app.rejections() == []
    ledger.tick(at("2026-05-04T09:05:00Z"))
    assert ledger.app.parked() == []
    [rejection] = ledger.app.rejections()  # what the relay dead-letters, original bytes kept
    assert (rejection.event_id, rejection.reason) == ("k-2", "insufficient_points")
    assert "waited until 2026-05-04T09:05:00+00:00" in rejection.detail
    # A re-send gets the final outcome; the member keeps the 20 points.
    [again] = ledger.app.apply_batch([file_item(spent, 9)])
    assert (again.status, again.original) == ("duplicate", "declined")
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=20, pending=0, held=0)


def test_points_dated_after_a_parked_redemptions_deadline_do_not_apply_it(
    open_fresh: Open,
) -> None:
    """In event time the redemption stopped waiting before the purchase that would have
    funded it. It is not declined when that purchase is read (an earn dated before the
    deadline may still come on another topic), but by the scheduler at its deadline."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("d-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=2000)
    spent = redemption("d-2", "m-1", at("2026-05-01T09:05:00Z"), redemption_id="x-1", points=50)
    more = purchase("d-3", "m-1", at("2026-05-04T10:00:00Z"), order_id="o-2", total_minor=5000)
    assert read(ledger, clock, [(bought, 0), (spent, 0)]) == ["applied", PARKED]
    # Dated after 09:05 + 72 h (the program's default park_hours), read before any tick.
    later = at("2026-05-04T10:00:00Z")
    assert apply_from_kafka(ledger, clock, later, more, 0, 1).status == "applied"
    assert [e.event_id for _, e in ledger.app.parked()] == ["d-2"]  # not applied
    ledger.tick(later)
    assert ledger.app.parked() == []
    [rejection] = ledger.app.rejections()
    assert (rejection.event_id, rejection.reason) == ("d-2", "insufficient_points")
    account = ledger.app.find_account("m-1")
    assert account is not None
    # By hand: 20 + 50 points, nothing redeemed.
    assert account.balance == Balances(available=70, pending=0, held=0)


def test_a_parked_redemption_waits_for_earlier_points_still_to_come_on_another_topic(
    open_fresh: Open,
) -> None:
    """A purchase dated after the redemption's deadline is read before the activity, dated
    before it, that funded the redemption in event time: the redemption is applied when the
    activity is read (not declined on the way), on the points it would have had then."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("w-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=2000)
    spent = redemption("w-2", "m-1", at("2026-05-01T10:00:00Z"), redemption_id="x-1", points=30)
    funded = activity("w-3", "m-1", at("2026-05-02T10:00:00Z"), name="signup")
    more = purchase("w-4", "m-1", at("2026-05-06T10:00:00Z"), order_id="o-2", total_minor=4000)
    later = at("2026-05-06T10:00:00Z")
    assert read(ledger, clock, [(bought, 0), (spent, 0)]) == ["applied", PARKED]
    assert apply_from_kafka(ledger, clock, later, more, 0, 1).status == "applied"
    assert [e.event_id for _, e in ledger.app.parked()] == ["w-2"]  # 05-04 passed: waiting
    assert apply_from_kafka(ledger, clock, later, funded, 0, 0).status == "applied"
    assert ledger.app.parked() == []
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    # By hand: 20 (o-1) + 10 (signup, 05-02) = 30 by 05-02, all taken by x-1; o-2's 40
    # points (05-06) are not touched.
    assert account.balance == Balances(available=40, pending=0, held=0)
    assert sorted((lot.source, lot.remaining) for lot in account.lots.values()) == [
        ("order o-1", 0),
        ("order o-2", 40),
        ("signup", 0),
    ]


def test_a_refund_read_before_an_earlier_redemption(open_fresh: Open) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("k-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=3000)
    two = purchase("k-2", "m-1", at("2026-05-01T09:01:00Z"), order_id="o-2", total_minor=2000)
    spent = redemption("k-3", "m-1", at("2026-05-01T09:05:00Z"), redemption_id="x-1", points=50)
    back = refund(
        "k-4", "m-1", at("2026-05-01T09:10:00Z"), order_id="o-1", refund_id="r-1", amount_minor=3000
    )
    # In time order: 30 + 20 = 50 points, all redeemed at 09:05; the refund at 09:10 finds
    # nothing left to take (within_balance): 30 forgiven, the balance stays 0, and the
    # redemption is applied. Read with the purchases topic (purchases and the refund) first:
    assert read(ledger, clock, [(one, 0), (two, 0), (back, 0), (spent, 0)]) == ["applied"] * 4
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    assert account.balance == Balances(available=0, pending=0, held=0)
    assert account.orders["o-1"].refunds[0].taken_from == ()  # it takes nothing in the end
    ledger.projection.run()
    [entry] = [
        row for row in ledger.statement("m-1", limit=100) if row.entry_type == "points_redeemed"
    ]
    assert (
        "refund r-1 of order o-1 now takes back 0 (was 30; 30 kept by the member)"
        in (entry.body["note"])
    )


def test_a_refund_read_after_a_later_redemption_takes_its_order_points_first(
    open_fresh: Open,
) -> None:
    """The mirror: the redemptions topic is read ahead, and a refund dated before the
    redemption arrives after it. In event time the refund took its order's points first
    and the redemption then spent the other order's."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("q-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=3000)
    two = purchase("q-2", "m-1", at("2026-05-01T09:01:00Z"), order_id="o-2", total_minor=4000)
    back = refund(
        "q-3", "m-1", at("2026-05-01T09:05:00Z"), order_id="o-1", refund_id="r-1", amount_minor=3000
    )
    spent = redemption("q-4", "m-1", at("2026-05-01T09:10:00Z"), redemption_id="x-1", points=35)
    assert read(ledger, clock, [(one, 0), (two, 0), (spent, 0), (back, 0)]) == ["applied"] * 4
    # By hand, in time order: o-1 30 points, o-2 40; the refund of 09:05 takes o-1's 30;
    # the redemption of 09:10 takes 35 of o-2's 40 (o-1 is empty): 5 left, all in o-2,
    # and nothing forgiven. (Read in arrival order, the redemption had taken o-1's 30 and
    # 5 of o-2, and the refund would have found only 35 in o-2 to take its 30 from.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=5, pending=0, held=0)
    assert sorted((lot.source, lot.remaining) for lot in account.lots.values()) == [
        ("order o-1", 0),
        ("order o-2", 5),
    ]
    [step] = account.orders["o-1"].refunds
    assert step.taken_from is not None
    assert [(account.lots[m.lot_id].source, m.amount) for m in step.taken_from] == [
        ("order o-1", -30)
    ]


def test_a_redemption_an_earlier_refund_leaves_unfunded_waits_for_points_again(
    open_fresh: Open,
) -> None:
    """A redemption applied before the refund, dated before it, that took its points back:
    in event time it was never funded, so it is withdrawn (the points come back) and waits
    again, parked; the purchase that funds it in event time then applies it."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("u-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=4000)
    back = refund(
        "u-2", "m-1", at("2026-05-01T09:30:00Z"), order_id="o-1", refund_id="r-1", amount_minor=4000
    )
    spent = redemption("u-3", "m-1", at("2026-05-01T10:00:00Z"), redemption_id="x-1", points=30)
    two = purchase("u-4", "m-1", at("2026-05-01T11:00:00Z"), order_id="o-2", total_minor=3500)
    assert read(ledger, clock, [(one, 0), (spent, 0), (back, 0)]) == ["applied"] * 3
    # By hand, in time order: o-1 earns 40 at 09:00 and the refund of 09:30 takes them all
    # back; at 10:00 the redemption finds 0 of 30: it waits.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=0, pending=0, held=0)
    assert account.redemptions["x-1"].status == "withdrawn"
    assert [e.event_id for _, e in ledger.app.parked()] == ["u-3"]
    ledger.projection.run()
    [refunded] = [
        row for row in ledger.statement("m-1", limit=100) if row.entry_type == "points_reversed"
    ]
    assert refunded.body["details"]["withdrawn_redemptions"] == "x-1"
    [receipt] = [r for r in ledger.app.apply_batch([file_item(spent, 9)]) if r.event_id == "u-3"]
    assert (receipt.status, receipt.original) == ("duplicate", "parked")
    # o-2 earns 35 at 11:00, before the redemption's deadline: it is funded then, 5 left.
    assert apply_from_kafka(ledger, clock, READ_AT, two, 0, 2).status == "applied"
    assert ledger.app.parked() == []
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    assert account.balance == Balances(available=5, pending=0, held=0)
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_cancellation_read_after_a_later_refund_gives_the_refund_its_points_back(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("c-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=4000)
    spent = redemption("c-2", "m-1", at("2026-05-01T10:00:00Z"), redemption_id="x-1", points=30)
    undo = cancellation("c-3", "m-1", at("2026-05-01T11:00:00Z"), redemption_id="x-1")
    back = refund(
        "c-4", "m-1", at("2026-05-01T11:30:00Z"), order_id="o-1", refund_id="r-1", amount_minor=4000
    )
    # The purchases topic (purchase and refund) is read before the redemptions topic.
    statuses = read(ledger, clock, [(one, 0), (back, 0), (spent, 0), (undo, 0)])
    assert statuses == ["applied"] * 4
    # By hand, in time order: 40 points at 09:00; 30 redeemed at 10:00 (10 left); the
    # cancellation at 11:00 gives them back (40); the refund at 11:30 takes all 40: 0 left,
    # nothing kept by the member.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=0, pending=0, held=0)
    assert account.redemptions["x-1"].status == "cancelled"
    [step] = account.orders["o-1"].refunds
    assert step.taken_from is not None
    assert sum(-m.amount for m in step.taken_from) == 40
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_refund_read_after_its_orders_points_expired_takes_them_back_as_of_its_time(
    open_fresh: Open,
) -> None:
    """The refund is dated before the order's points expired, but read after an activity
    that brought the account past that expiry: in event time it took the points back, so
    nothing expired (the breakage is not counted)."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("v-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=1000)
    back = refund(
        "v-2", "m-1", at("2026-10-31T09:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=1000
    )
    joined = activity("v-3", "m-1", at("2026-11-02T09:00:00Z"), name="signup")
    later = at("2026-11-02T09:00:00Z")
    assert apply_from_kafka(ledger, clock, later, bought, 0, 0).status == "applied"
    assert apply_from_kafka(ledger, clock, later, joined, 0, 0).status == "applied"
    assert apply_from_kafka(ledger, clock, later, back, 0, 1).status == "applied"
    # By hand: 10 points on 05-01, expiring 11-01 (6 months); the refund of 10-31 takes all
    # 10 back, so nothing is left to expire; the signup of 11-02 adds 10.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=10, pending=0, held=0)
    assert account.balances["program:expired"] == 0
    assert account.balances["program:issued"] == -10  # 20 issued, 10 taken back
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_refund_that_found_its_orders_points_expired_takes_them_when_a_late_redemption_spent_them(
    open_fresh: Open,
) -> None:
    """Read after its order's points had expired, the refund counts them as already
    expired and takes nothing. A redemption dated before that expiry, read after the
    refund, spent those points in event time: they never expired, so the refund takes
    its points from what is available at its own time instead."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("y-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=3000)
    two = purchase("y-2", "m-1", at("2026-05-01T09:01:00Z"), order_id="o-2", total_minor=4000)
    spent = redemption("y-3", "m-1", at("2026-05-02T10:00:00Z"), redemption_id="x-1", points=30)
    three = purchase("y-4", "m-1", at("2026-11-10T09:00:00Z"), order_id="o-3", total_minor=5000)
    back = refund(
        "y-5", "m-1", at("2026-11-20T09:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=3000
    )
    later = at("2026-11-21T09:00:00Z")
    # The purchases topic (purchases and the refund) is read before the redemptions topic.
    for offset, event in enumerate([one, two, three, back]):
        assert apply_from_kafka(ledger, clock, later, event, 0, offset).status == "applied"
    account = ledger.app.find_account("m-1")
    assert account is not None
    # As read so far: o-1's 30 and o-2's 40 expired on 11-01; the refund finds o-1's 30
    # expired and takes nothing; o-3's 50 stay.
    assert account.balance == Balances(available=50, pending=0, held=0)
    assert apply_from_kafka(ledger, clock, later, spent, 1, 0).status == "applied"
    # By hand, in time order: 05-01 o-1 30 (expires 11-01 09:00) and o-2 40 (11-01 09:01);
    # 05-02 the redemption takes 30 from o-1, which expires first; 11-01 o-1 has nothing
    # left to expire, o-2's 40 expire; 11-10 o-3 earns 50; 11-20 the refund of all of o-1
    # (30 points) finds its lot empty, not expired, and takes 30 from o-3: 20 left.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=20, pending=0, held=0)
    assert sorted((lot.source, lot.remaining) for lot in account.lots.values()) == [
        ("order o-1", 0),
        ("order o-2", 0),
        ("order o-3", 20),
    ]
    assert account.balances["program:expired"] == 40  # o-2's only
    assert account.orders["o-1"].expired_credited == 0
    [step] = account.orders["o-1"].refunds
    assert (step.wanted, step.expired) == (30, 0)
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_redemption_cancelled_later_holds_its_points_until_then_when_spends_take_again(
    open_fresh: Open,
) -> None:
    """A redemption read last, dated before everything, has the spends dated after it take
    again in event-time order. A redemption cancelled since held its points from its own
    time until its cancellation: a refund dated in between finds them spent."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("z-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=3000)
    two = purchase("z-2", "m-1", at("2026-05-01T09:30:00Z"), order_id="o-2", total_minor=10000)
    first = redemption("z-3", "m-1", at("2026-05-01T10:00:00Z"), redemption_id="x-0", points=10)
    big = redemption("z-4", "m-1", at("2026-05-02T10:00:00Z"), redemption_id="x-1", points=100)
    back = refund(
        "z-5", "m-1", at("2026-05-03T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=3000
    )
    undo = cancellation("z-6", "m-1", at("2026-05-04T10:00:00Z"), redemption_id="x-1")
    later = at("2026-05-05T10:00:00Z")
    # The purchases topic first; then partition 0 of the redemptions topic (x-1 and its
    # cancellation), then x-0, on partition 1.
    reads = [(one, 0, 0), (two, 0, 1), (back, 0, 2), (big, 0, 0), (undo, 0, 1), (first, 1, 0)]
    for event, partition, offset in reads:
        assert apply_from_kafka(ledger, clock, later, event, partition, offset).status == "applied"
    # By hand, in time order (1 point a dollar, soonest expiry first: o-1 before o-2):
    #   05-01 09:00 o-1 earns 30; 09:30 o-2 earns 100; 10:00 x-0 takes 10 of o-1 (20 left)
    #   05-02 x-1 takes 100: o-1's 20 and 80 of o-2 (o-2: 20 left)
    #   05-03 the refund of o-1 (30 points): its lot is empty, it takes o-2's 20 and the
    #         return policy forgives 10
    #   05-04 x-1 is cancelled: o-1 gets 20 back, o-2 80
    #   left: o-1 20 + o-2 80 = 100. (Without x-1 holding its points until 05-04, the
    #   refund would take o-1's 20 and 10 of o-2: 90 left.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=100, pending=0, held=0)
    assert sorted((lot.source, lot.remaining) for lot in account.lots.values()) == [
        ("order o-1", 20),
        ("order o-2", 80),
    ]
    assert account.redemptions["x-1"].status == "cancelled"
    [step] = account.orders["o-1"].refunds
    assert step.taken_from is not None
    assert sum(-m.amount for m in step.taken_from) == 20
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


@pytest.mark.parametrize("read_order", ["time order", "refund first"])
def test_a_late_cancellation_into_an_expired_lot_adds_to_a_later_refunds_expired_share(
    open_fresh: Open, read_order: str
) -> None:
    """A redemption cancelled after its order's points expired gives them back to an
    expired lot: they expire at once. A refund of that order dated after the cancellation
    counts them as already expired too, also when it was read before the cancellation (and
    before the redemption): it does not take them again from other points."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("c-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=10000)
    spent = redemption("c-2", "m-1", at("2026-05-02T10:00:00Z"), redemption_id="x-1", points=80)
    joined = activity("c-3", "m-1", at("2026-11-10T09:00:00Z"), name="signup")
    undo = cancellation("c-4", "m-1", at("2026-11-15T09:00:00Z"), redemption_id="x-1")
    back = refund(
        "c-5", "m-1", at("2026-11-20T09:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    later = at("2026-11-21T09:00:00Z")
    # (event, partition, offset) on each event's own topic.
    reads = {
        "time order": [(bought, 0, 0), (spent, 0, 0), (joined, 0, 0), (undo, 0, 1), (back, 0, 1)],
        "refund first": [(bought, 0, 0), (joined, 0, 0), (back, 0, 1), (spent, 0, 0), (undo, 0, 1)],
    }
    for event, partition, offset in reads[read_order]:
        assert apply_from_kafka(ledger, clock, later, event, partition, offset).status == "applied"
    # By hand, in time order (1 point a dollar, points expire 6 months after they are earned):
    #   05-01 o-1 earns 100 (expire 11-01 09:00); 05-02 x-1 takes 80 of them (20 left)
    #   11-01 o-1's 20 expire; 11-10 the signup earns 10
    #   11-15 x-1 is cancelled: its 80 go back to o-1, past its expiry: they expire at once
    #   11-20 the refund of half of o-1 (50 points): o-1 lost 100 to expiry, so all 50
    #         count as already expired; nothing is taken: the signup's 10 stay.
    # (Read refund first, the refund found 30 of its 50 not expired once x-1 arrived, and
    # took the signup's 10 for them, the return policy forgiving 20.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=10, pending=0, held=0)
    assert sorted((lot.source, lot.remaining) for lot in account.lots.values()) == [
        ("order o-1", 0),
        ("signup", 10),
    ]
    assert account.balances["program:expired"] == 100  # 20 on 11-01, 80 on 11-15
    assert account.orders["o-1"].expired_credited == 50
    [step] = account.orders["o-1"].refunds
    assert (step.wanted, step.expired) == (0, 50)
    assert not step.taken_from
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


@pytest.mark.parametrize("read_order", ["time order", "refund last"])
def test_a_refund_read_after_a_cancellation_finds_the_points_the_redemption_held_then(
    open_fresh: Open, read_order: str
) -> None:
    """A redemption dated before a refund and cancelled after it held its points at the
    refund's time, also when the refund is read after the cancellation and nothing else
    is dated after the refund: the refund does not take them."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("h-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=10000)
    spent = redemption("h-2", "m-1", at("2026-05-02T10:00:00Z"), redemption_id="x-1", points=50)
    joined = activity("h-3", "m-1", at("2026-05-02T11:00:00Z"), name="signup")
    back = refund(
        "h-4",
        "m-1",
        at("2026-05-02T12:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    undo = cancellation("h-5", "m-1", at("2026-05-03T10:00:00Z"), redemption_id="x-1")
    later = at("2026-05-04T10:00:00Z")
    # (event, partition, offset) on each event's own topic.
    reads = {
        "time order": [(bought, 0, 0), (spent, 0, 0), (joined, 0, 0), (back, 0, 1), (undo, 0, 1)],
        "refund last": [(bought, 0, 0), (spent, 0, 0), (joined, 0, 0), (undo, 0, 1), (back, 0, 1)],
    }
    for event, partition, offset in reads[read_order]:
        assert apply_from_kafka(ledger, clock, later, event, partition, offset).status == "applied"
    # By hand, in time order (1 point a dollar):
    #   05-01 o-1 earns 100; 05-02 10:00 x-1 takes 50 of them (50 left); 11:00 signup 10
    #   05-02 12:00 the refund of all of o-1 (100 points) takes its lot's 50 and the
    #         signup's 10; the return policy forgives 40
    #   05-03 x-1 is cancelled: its 50 go back to o-1
    # (Read last, without x-1 holding its 50 then, the refund took all 100 of o-1: the
    # signup's 10 would be left instead of o-1's 50.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=50, pending=0, held=0)
    assert sorted((lot.source, lot.remaining) for lot in account.lots.values()) == [
        ("order o-1", 50),
        ("signup", 0),
    ]
    [step] = account.orders["o-1"].refunds
    assert step.taken_from is not None
    assert sum(-m.amount for m in step.taken_from) == 60
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


PENDING = program(
    earn={"pending_days": 5},
    expiry={"months_after_earn": 6},
    activities={"signup": {"points": 10, "limit": "once"}},
)


@pytest.mark.parametrize("read_order", ["time order", "redemption last"])
def test_points_pending_at_a_redemptions_time_and_released_before_it_was_funded_stay_out(
    open_fresh: Open, read_order: str
) -> None:
    """A redemption spends the lots as they stood at its own time: an order's points still
    pending then are not for it, even when they are released before the earn that funds it
    (it waited for that earn). Their release does not move the redemption onto them."""
    ledger, clock = open_fresh(PENDING, READ_AT)
    bought = purchase("p-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=1000)
    spent = redemption("p-2", "m-1", at("2026-05-03T10:00:00Z"), redemption_id="x-1", points=10)
    joined = activity("p-3", "m-1", at("2026-05-06T09:30:00Z"), name="signup")
    later = at("2026-05-07T10:00:00Z")
    reads = {
        "time order": [(bought, 0, "applied"), (spent, 0, "parked"), (joined, 0, "applied")],
        "redemption last": [(joined, 0, "applied"), (bought, 0, "applied"), (spent, 0, "applied")],
    }
    for event, offset, status in reads[read_order]:
        assert apply_from_kafka(ledger, clock, later, event, 0, offset).status == status
    ledger.tick(later)
    # By hand, in time order (1 point a dollar, pending 5 days, 72 hours to wait):
    #   05-01 09:00 o-1 earns 10, pending until 05-06 09:00
    #   05-03 10:00 x-1 wants 10: none available (o-1's are pending): it waits until 05-06
    #         10:00 for points
    #   05-06 09:00 o-1's 10 are released (after x-1's time: not for x-1)
    #   05-06 09:30 the signup earns 10: x-1 is funded by them
    #   left: o-1's 10; the signup's lot is empty.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=10, pending=0, held=0)
    assert sorted((lot.source, lot.remaining) for lot in account.lots.values()) == [
        ("order o-1", 10),
        ("signup", 0),
    ]
    paid_by = [account.lots[m.lot_id].source for m in account.redemptions["x-1"].moves]
    assert paid_by == ["signup"]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_version_3_snapshot_with_a_cancelled_redemption_is_rebuilt_from_the_events() -> None:
    # Version 3 kept no cancellation time on a cancelled redemption, which spends taken
    # again in event time need: such a snapshot is refused (the events are folded instead).
    when = at("2026-05-02T10:00:00Z")
    kept = RedemptionRecord("x-1", 50, None, (), "redeemed", when, "e-1", when)
    undone = RedemptionRecord("x-2", 50, None, (), "cancelled", when, "e-2", when)
    with pytest.raises(SnapshotTooOld):
        MemberAccount.upcast_v3_v4({"member_id": "m-1", "redemptions": {"x-2": undone}})
    state: dict[str, Any] = {"member_id": "m-1", "redemptions": {"x-1": kept}}
    MemberAccount.upcast_v3_v4(state)  # nothing cancelled: loads as it is
    assert state["redemptions"] == {"x-1": kept}


def test_a_version_4_snapshot_counts_every_funding_instant_as_a_spend() -> None:
    # A re-take may fund a redemption later than every spend recorded so far; version 5
    # counts that instant in `last_spend_at` (a late cancellation before it is not skipped).
    first, later = at("2026-05-02T10:00:00Z"), at("2026-05-04T10:00:00Z")
    refunded = RedemptionRecord("x-1", 50, None, (), "redeemed", later, "e-1", first)
    state: dict[str, Any] = {"last_spend_at": first, "redemptions": {"x-1": refunded}}
    MemberAccount.upcast_v4_v5(state)
    assert state["last_spend_at"] == later
    none: dict[str, Any] = {"last_spend_at": None, "redemptions": {}}
    MemberAccount.upcast_v4_v5(none)
    assert none["last_spend_at"] is None


def test_a_waiting_redemption_has_first_claim_over_one_dated_after_it(
    open_fresh: Open,
) -> None:
    """Redemptions are funded in the order of their own times: one that waits for points
    has first claim to points earned before its deadline over a redemption dated after it,
    which is withdrawn and waits in turn (and the two never take turns for ever)."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("f-1", "m-1", at("2026-05-01T09:00:00Z"), order_id="o-1", total_minor=1000)
    first = redemption("f-2", "m-1", at("2026-05-01T10:00:00Z"), redemption_id="x-a", points=30)
    second = redemption("f-3", "m-1", at("2026-05-01T11:00:00Z"), redemption_id="x-b", points=10)
    two = purchase("f-4", "m-1", at("2026-05-01T12:00:00Z"), order_id="o-2", total_minor=2500)
    assert read(ledger, clock, [(one, 0), (first, 0), (second, 0), (two, 0)]) == [
        "applied",
        PARKED,
        "applied",
        "applied",
    ]
    # By hand: 10 points at 09:00; x-a (30, 10:00) waits; x-b (10, 11:00) takes the 10;
    # o-2 earns 25 at 12:00: x-a, dated first, is funded then (10 + 25 = 35 >= 30, taking
    # o-1's 10 and 20 of o-2's), and x-b is withdrawn: 5 are left, not enough for its 10.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-a"].status == "redeemed"
    assert account.redemptions["x-b"].status == "withdrawn"
    assert [e.event_id for _, e in ledger.app.parked()] == ["f-3"]
    assert account.balance == Balances(available=5, pending=0, held=0)


def test_an_enrolment_read_after_an_auto_enrolment_pays_the_signup_bonus_once(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    joined = enrolment("k-1", "m-2", at("2026-05-01T08:55:00Z"))
    bought = purchase("k-2", "m-2", at("2026-05-01T09:00:00Z"), order_id="o-2", total_minor=2000)
    again = activity("k-3", "m-2", at("2026-05-01T09:30:00Z"), name="signup")
    # The purchase (auto-enrolment) is read before the enrolment that happened first.
    statuses = read(ledger, clock, [(bought, 0), (joined, 0), (again, 0)])
    assert statuses[:2] == ["applied", "applied"]

    # By hand: $20 -> 20 points, plus the signup bonus once: 20 + 10 = 30.
    account = ledger.app.find_account("m-2")
    assert account is not None
    assert account.balance == Balances(available=30, pending=0, held=0)
    assert [lot.amount for lot in account.lots.values() if lot.source == "signup"] == [10]


def test_an_enrolment_read_after_an_auto_enrolment_completes_it_without_a_signup_bonus(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(program(), READ_AT)  # no signup activity in this program
    joined = enrolment("k-1", "m-3", at("2026-05-01T08:55:00Z"))
    bought = purchase("k-2", "m-3", at("2026-05-01T09:00:00Z"), order_id="o-3", total_minor=2000)
    statuses = read(ledger, clock, [(bought, 0), (joined, 0)])
    assert statuses == ["applied", "applied"]  # not already_enrolled
    account = ledger.app.find_account("m-3")
    assert account is not None
    assert account.balance == Balances(available=20, pending=0, held=0)


@pytest.mark.parametrize("first_read", ["earliest", "latest"])
def test_of_two_referrals_of_one_referee_the_earliest_pays_whichever_is_read_first(
    open_fresh: Open, first_read: str
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    # Referrals are keyed by the referrer: m-a and m-b are on different partitions.
    earliest = (referral("k-1", "m-a", at("2026-05-01T10:00:00Z"), referee="m-r"), 0)
    latest = (referral("k-2", "m-b", at("2026-05-01T11:00:00Z"), referee="m-r"), 1)
    order = [earliest, latest] if first_read == "earliest" else [latest, earliest]
    read(ledger, clock, order)

    # By hand: m-a referred m-r first (10:00): m-a +20, m-r +10; m-b's referral of 11:00
    # pays nothing (read first, it is reversed by a compensating entry when m-a's arrives).
    balances = {}
    for member in ("m-a", "m-b", "m-r"):
        account = ledger.app.find_account(member)
        balances[member] = account.balance.available if account is not None else 0
    assert balances == {"m-a": 20, "m-b": 0, "m-r": 10}
    referee = ledger.app.find_account("m-r")
    assert referee is not None
    assert referee.referred_by == "m-a"
    # The welcome bonus is m-a's referral's, earned at 10:00 (not m-b's of 11:00).
    assert holding(ledger, "m-r") == [("referral by m-a", 10, at("2026-05-01T10:00:00Z"))]
    if first_read == "latest":
        ledger.projection.run()
        points = [row.body["points"] for row in ledger.statement("m-b", limit=100)]
        assert 20 in points
        assert -20 in points  # the compensating entry
        points = [row.body["points"] for row in ledger.statement("m-r", limit=100)]
        assert sorted(points) == [-10, 0, 10, 10]  # enrolled; m-b's bonus and back; m-a's


def test_a_referral_reversal_written_before_version_2_still_loads(open_fresh: Open) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    earliest = (referral("v-1", "m-a", at("2026-05-01T10:00:00Z"), referee="m-r"), 0)
    latest = (referral("v-2", "m-b", at("2026-05-01T11:00:00Z"), referee="m-r"), 1)
    read(ledger, clock, [latest, earliest])
    # m-b's events as the version before wrote its reversal: no role, earned_at, undone.
    written = []
    for record in ledger.app.recorder.select_events(account_id("m-b")):
        if long_topic(record.topic).endswith("ReferralReversed"):
            # The library's full form (rows are now written compactly), as that version had.
            full: Mapper[UUID] = Mapper(ledger.app.mapper.transcoder)
            state = json.loads(full.to_stored_event(full_event(ledger, record)).state)
            for key in ("role", "earned_at", "undone", "class_version"):
                del state[key]
            record = StoredEvent(  # noqa: PLW2901 - the record as the older version wrote it
                originator_id=record.originator_id,
                originator_version=record.originator_version,
                topic=long_topic(record.topic),  # the class's own, as that version wrote
                state=json.dumps(state).encode(),
            )
        written.append(record)
    events: list[Any] = [ledger.app.mapper.to_domain_event(record) for record in written]
    [old] = [e for e in events if isinstance(e, MemberAccount.ReferralReversed)]
    assert (old.role, old.earned_at, old.undone) == ("referrer", None, None)
    account: Any = None
    for event in events:
        account = event.mutate(account)
    assert isinstance(account, MemberAccount)
    assert account.referees == {}
    assert (account.balance, account.lifetime_earned) == (Balances(0, 0, 0), 0)


def full_event(ledger: Ledger, record: StoredEvent) -> Any:
    return ledger.app.mapper.to_domain_event(record)


def holding(ledger: Ledger, member: str) -> list[tuple[str, int, datetime]]:
    """The member's lots that hold points: (source, points left, earned at), sorted."""
    account = ledger.app.find_account(member)
    assert account is not None
    return sorted(
        (lot.source, lot.remaining, lot.earned_at) for lot in account.lots.values() if lot.remaining
    )


@pytest.mark.parametrize("first_read", ["earliest", "latest"])
def test_of_two_members_referring_each_other_the_earlier_referral_counts_whichever_is_read_first(
    open_fresh: Open, first_read: str
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    # Keyed by the referrer: m-a's referral and m-b's are on different partitions.
    earliest = (referral("c-1", "m-a", at("2026-05-01T10:00:00Z"), referee="m-b"), 0)
    latest = (referral("c-2", "m-b", at("2026-05-01T11:00:00Z"), referee="m-a"), 1)
    order = [earliest, latest] if first_read == "earliest" else [latest, earliest]
    statuses = read(ledger, clock, order)
    # Read first, m-b's referral applies; m-a's, read second, displaces it (both applied).
    # Read second, m-b's waits (parked) in case an earlier referral of m-a displaces m-a's.
    assert statuses == (["applied", PARKED] if first_read == "earliest" else ["applied"] * 2)

    # By hand, in time order: 10:00 m-a refers m-b: m-a +20, m-b +10. 11:00 m-b refers
    # m-a, whom m-a referred first: declined (circular). Read the other way round, m-b's
    # bonuses (m-b +20, m-a +10) are taken back by compensating entries on both accounts.
    a, b = ledger.app.find_account("m-a"), ledger.app.find_account("m-b")
    assert a is not None
    assert b is not None
    assert (a.balance, b.balance) == (Balances(20, 0, 0), Balances(10, 0, 0))
    assert (a.lifetime_earned, b.lifetime_earned) == (20, 10)
    assert (a.referred_by, b.referred_by) == (None, "m-a")
    assert (set(a.referees), set(b.referees)) == ({"m-b"}, set())
    ten = at("2026-05-01T10:00:00Z")
    assert holding(ledger, "m-a") == [("referral of m-b", 20, ten)]
    assert holding(ledger, "m-b") == [("referral by m-a", 10, ten)]
    if first_read == "latest":
        ledger.projection.run()
        for member, bonus in (("m-a", 10), ("m-b", 20)):
            rows = ledger.statement(member, limit=100)
            assert [r.body["points"] for r in rows if r.entry_type == "referral_reversed"] == [
                -bonus
            ]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok
    if first_read == "earliest":  # declined at its deadline, 11:00 + 72 h
        ledger.tick(at("2026-05-04T11:00:00Z"))
        [rejection] = ledger.app.rejections()
        assert (rejection.event_id, rejection.reason) == ("c-2", "circular_referral")


def test_a_referral_ruled_out_by_a_displaced_one_applies_when_it_is_displaced(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    first = (referral("r-1", "m-a", at("2026-05-01T09:00:00Z"), referee="m-b"), 0)
    displaced = (referral("r-2", "m-c", at("2026-05-01T10:00:00Z"), referee="m-b"), 1)
    back = (referral("r-3", "m-b", at("2026-05-01T11:00:00Z"), referee="m-c"), 2)
    # m-b's referral of m-c waits: m-c referred m-b first, as far as has been read.
    assert read(ledger, clock, [displaced, back, first]) == ["applied", PARKED, "applied"]
    assert ledger.app.parked() == []

    # By hand, in time order: 09:00 m-a refers m-b: m-a +20, m-b +10; 10:00 m-c's referral
    # of m-b is declined (m-b was referred); 11:00 m-b refers m-c (who referred nobody):
    # m-b +20, m-c +10.
    balances = {}
    for member in ("m-a", "m-b", "m-c"):
        account = ledger.app.find_account(member)
        assert account is not None
        balances[member] = account.balance.available
    assert balances == {"m-a": 20, "m-b": 30, "m-c": 10}
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_referral_of_a_member_whose_referral_is_displaced_applies(open_fresh: Open) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    first = (referral("q-1", "m-p", at("2026-05-01T09:00:00Z"), referee="m-x"), 0)
    circular = (referral("q-2", "m-x", at("2026-05-01T10:00:00Z"), referee="m-p"), 1)
    then = (referral("q-3", "m-q", at("2026-05-01T11:00:00Z"), referee="m-p"), 2)
    # m-q's referral of m-p waits: m-x referred m-p first, as far as has been read.
    assert read(ledger, clock, [circular, then, first]) == ["applied", PARKED, "applied"]
    assert ledger.app.parked() == []

    # By hand, in time order: 09:00 m-p refers m-x: m-p +20, m-x +10; 10:00 m-x's referral
    # of m-p is declined (circular); 11:00 m-q refers m-p (not referred): m-q +20, m-p +10.
    balances = {}
    for member in ("m-p", "m-x", "m-q"):
        account = ledger.app.find_account(member)
        assert account is not None
        balances[member] = account.balance.available
    assert balances == {"m-p": 30, "m-x": 10, "m-q": 20}
    p = ledger.app.find_account("m-p")
    assert p is not None
    assert p.referred_by == "m-q"
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_one_earlier_referral_read_last_displaces_two(open_fresh: Open) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    first = referral("d-1", "m-a", at("2026-05-01T09:00:00Z"), referee="m-b")
    same_referee = referral("d-2", "m-c", at("2026-05-01T10:00:00Z"), referee="m-b")
    circular = referral("d-3", "m-b", at("2026-05-01T11:00:00Z"), referee="m-a")
    statuses = read(ledger, clock, [(same_referee, 2), (circular, 1), (first, 0)])
    assert statuses == ["applied"] * 3

    # By hand, in time order: 09:00 m-a refers m-b: m-a +20, m-b +10; 10:00 m-c's referral
    # of m-b is declined (m-b was referred), 11:00 m-b's of m-a too (m-a referred m-b
    # first). Read last, m-a's referral takes back m-c's 20 and m-b's 10 of the first,
    # and m-b's 20 and m-a's 10 of the second: m-b loses two bonuses to one event.
    balances = {}
    for member in ("m-a", "m-b", "m-c"):
        account = ledger.app.find_account(member)
        assert account is not None
        balances[member] = account.balance.available
    assert balances == {"m-a": 20, "m-b": 10, "m-c": 0}
    assert holding(ledger, "m-b") == [("referral by m-a", 10, at("2026-05-01T09:00:00Z"))]
    ledger.projection.run()
    rows = ledger.statement("m-b", limit=100)
    assert sorted(r.body["points"] for r in rows if r.entry_type == "referral_reversed") == [
        -20,
        -10,
    ]
    assert verify(ledger.app, ledger.view).ok


# Points-based tiers: Silver (x2) from 30 points in the calendar year.
TIERED = program(
    expiry={"months_after_earn": 6},
    referral={"referrer_points": 20, "referee_points": 10},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 30, "earn_multiplier": "2"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


@pytest.mark.parametrize("first_read", ["earliest", "latest"])
def test_an_upgrade_only_a_displaced_bonus_reached_is_retracted(
    open_fresh: Open, first_read: str
) -> None:
    ledger, clock = open_fresh(TIERED, READ_AT)
    earliest = (referral("t-1", "m-a", at("2026-05-01T10:00:00Z"), referee="m-b"), 0)
    latest = (referral("t-2", "m-b", at("2026-05-01T11:00:00Z"), referee="m-a"), 1)
    read(ledger, clock, [earliest, latest] if first_read == "earliest" else [latest, earliest])

    # By hand, in time order: 10:00 m-a refers m-b: m-a +20, m-b +10; 11:00 m-b's referral
    # of m-a is declined (circular): m-a's year holds 20, m-b's 10 (< 30): both Base. Read
    # the other way, m-b's referral pays first (11:00: m-b +20, m-a +10), then m-a's
    # (10:00) makes both years hold 30 at 11:00 (Silver), until m-b's referral's bonuses
    # are taken back: both upgrades go with them.
    for member, points in (("m-a", 20), ("m-b", 10)):
        account = ledger.app.find_account(member)
        assert account is not None
        assert (account.balance.available, account.tier) == (points, "base")
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


@pytest.mark.parametrize("read_order", ["time order", "purchase first", "referral first"])
def test_a_displaced_referrers_spent_bonus_is_taken_back_from_later_earnings(
    open_fresh: Open, read_order: str
) -> None:
    """m-b spent the bonus of a referral that an earlier one displaces (read last): the
    points are taken from what m-b has, or owed until m-b earns, so m-b ends where time
    order leaves it whenever the earlier referral is read."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    earliest = (referral("s-1", "m-a", at("2026-01-05T10:00:00Z"), referee="m-r"), 0)
    later = (referral("s-2", "m-b", at("2026-01-10T10:00:00Z"), referee="m-r"), 1)
    spent = (
        redemption("s-3", "m-b", at("2026-01-20T10:00:00Z"), redemption_id="x-1", points=20),
        1,
    )
    bought = (
        purchase("s-4", "m-b", at("2026-01-20T11:00:00Z"), order_id="o-1", total_minor=5000),
        1,
    )
    orders = {
        "time order": [earliest, later, spent, bought],
        "purchase first": [later, spent, bought, earliest],
        "referral first": [later, spent, earliest, bought],
    }
    read(ledger, clock, orders[read_order])

    # By hand, in time order: m-b's referral of m-r (01-10) is declined (m-a's of 01-05
    # came first); m-b's redemption of 20 (01-20 10:00) waits for points and is applied
    # on the purchase of 50 an hour later: 50 - 20 = 30, all on the order's lot.
    b = ledger.app.find_account("m-b")
    assert b is not None
    assert b.balance == Balances(30, 0, 0)
    assert b.redemptions["x-1"].status == "redeemed"
    assert holding(ledger, "m-b") == [("order o-1", 30, at("2026-01-20T11:00:00Z"))]
    assert holding(ledger, "m-r") == [("referral by m-a", 10, at("2026-01-05T10:00:00Z"))]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


@pytest.mark.parametrize("first_read", ["earliest", "latest"])
def test_a_displaced_welcome_bonus_spent_by_the_referee_is_replaced_by_the_earlier_one(
    open_fresh: Open, first_read: str
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    earliest = (referral("w-1", "m-a", at("2026-01-05T10:00:00Z"), referee="m-r"), 0)
    later = (referral("w-2", "m-b", at("2026-01-10T10:00:00Z"), referee="m-r"), 1)
    spent = (
        redemption("w-3", "m-r", at("2026-01-20T10:00:00Z"), redemption_id="x-1", points=10),
        0,
    )
    bought = (
        purchase("w-4", "m-r", at("2026-02-01T10:00:00Z"), order_id="o-1", total_minor=3000),
        0,
    )
    if first_read == "earliest":
        read(ledger, clock, [earliest, later, spent, bought])
    else:
        read(ledger, clock, [later, spent, bought, earliest])

    # By hand, in time order: m-r's welcome bonus of 10 (m-a's referral, 01-05) pays for
    # the redemption of 10 (01-20); the order of 02-01 earns 30, untouched.
    r = ledger.app.find_account("m-r")
    assert r is not None
    assert r.balance == Balances(30, 0, 0)
    assert holding(ledger, "m-r") == [("order o-1", 30, at("2026-02-01T10:00:00Z"))]
    paid_by = [r.lots[move.lot_id].source for move in r.redemptions["x-1"].moves]
    assert paid_by == ["referral by m-a"]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_displaced_bonus_that_expired_is_not_taken_again_from_other_points(
    open_fresh: Open,
) -> None:
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    earliest = referral("x-1", "m-a", at("2026-01-05T10:00:00Z"), referee="m-r")
    later = referral("x-2", "m-b", at("2026-01-10T10:00:00Z"), referee="m-r")
    bought = purchase("x-3", "m-r", at("2026-03-01T10:00:00Z"), order_id="o-1", total_minor=5000)
    also = purchase("x-4", "m-b", at("2026-03-01T10:00:00Z"), order_id="o-2", total_minor=4000)
    read(ledger, clock, [(later, 1), (bought, 0), (also, 1)])
    july = at("2026-07-20T00:00:00Z")
    ledger.tick(july)  # the bonuses of m-b's referral (01-10) expired on 07-10
    assert apply_from_kafka(ledger, clock, july, earliest, 0, 0).status == "applied"

    # By hand, in time order: m-r's welcome bonus of 10 (01-05, m-a's referral) expired
    # on 07-05 (6 months); m-b's referral was declined. The orders' points (03-01) expire
    # on 09-01: m-r 50, m-b 40 on 07-20. The displaced bonuses, expired already, are not
    # taken again from the orders' points.
    for member, points, order in (("m-r", 50, "o-1"), ("m-b", 40, "o-2")):
        account = ledger.app.find_account(member)
        assert account is not None
        assert account.balance == Balances(points, 0, 0)
        assert holding(ledger, member) == [(f"order {order}", points, at("2026-03-01T10:00:00Z"))]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


@pytest.mark.parametrize("read_order", ["time order", "activity last"])
def test_an_earn_read_after_a_refund_short_of_points_is_taken_back_by_it(
    open_fresh: Open, read_order: str
) -> None:
    """A refund found the balance short and forgave the rest; an earn dated before it,
    read after it (another topic), was there in event time: the refund takes it back."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = (
        purchase("f-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000),
        0,
    )
    spent = (
        redemption("f-2", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=50),
        0,
    )
    signup = (activity("f-3", "m-1", at("2026-01-20T10:00:00Z"), name="signup"), 0)
    refunded = (
        refund(
            "f-4",
            "m-1",
            at("2026-01-25T10:00:00Z"),
            order_id="o-1",
            refund_id="r-1",
            amount_minor=5000,
        ),
        0,
    )
    again = (
        purchase("f-5", "m-1", at("2026-02-01T10:00:00Z"), order_id="o-2", total_minor=3000),
        0,
    )
    orders = {
        "time order": [bought, spent, signup, refunded, again],
        "activity last": [bought, spent, refunded, again, signup],
    }
    assert read(ledger, clock, orders[read_order]) == ["applied"] * 5

    # By hand, in time order (within_balance returns): o-1 earns 50 (01-10); x-1 spends
    # all 50 (01-15); signup earns 10 (01-20); the refund of all of o-1 (01-25) wants 50
    # back, finds the 10 of signup, takes them and forgives 40; o-2 earns 30 (02-01).
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(30, 0, 0)
    assert holding(ledger, "m-1") == [("order o-2", 30, at("2026-02-01T10:00:00Z"))]
    step = account.orders["o-1"].refunds[-1]
    assert step.taken_from is not None
    assert [(account.lots[m.lot_id].source, m.amount) for m in step.taken_from] == [("signup", -10)]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


WINDOW = program(
    earn={"pending_days": 5},
    expiry={"months_after_earn": 6},
    activities={"signup": {"points": 10, "limit": "once"}, "review": {"points": 5}},
)


def test_a_refund_read_after_its_points_were_released_takes_them_as_pending_then(
    open_fresh: Open,
) -> None:
    """The refund is dated before its order's points were released, but read after the
    account was brought past that release: it takes them back as the pending points they
    were at its time, not as a spend (a redemption dated before it, read last, leaves
    it so)."""
    ledger, clock = open_fresh(WINDOW, READ_AT)
    signup = (activity("p-1", "m-1", at("2026-01-05T10:00:00Z"), name="signup"), 0)
    spent = (
        redemption("p-2", "m-1", at("2026-01-08T10:00:00Z"), redemption_id="x-1", points=10),
        0,
    )
    bought = (
        purchase("p-3", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000),
        0,
    )
    refunded = (
        refund(
            "p-4",
            "m-1",
            at("2026-01-12T10:00:00Z"),
            order_id="o-1",
            refund_id="r-1",
            amount_minor=5000,
        ),
        0,
    )
    review = (activity("p-5", "m-1", at("2026-01-20T10:00:00Z"), name="review"), 0)
    # The review (01-20) brings the account past the release of o-1 (01-15) before the
    # refund (01-12) is read; the redemption (01-08) is read last.
    assert read(ledger, clock, [signup, bought, review, refunded, spent]) == ["applied"] * 5

    # By hand, in time order: signup earns 10 (01-05); x-1 spends them (01-08); o-1 earns
    # 50, pending until 01-15 (01-10); the refund of all of o-1 (01-12) takes the 50 back
    # from pending; the review earns 5 (01-20). Left: the review's 5.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(5, 0, 0)
    assert holding(ledger, "m-1") == [("review", 5, at("2026-01-20T10:00:00Z"))]
    assert account.redemptions["x-1"].status == "redeemed"
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


SHORT = program(
    expiry={"months_after_earn": 3},
    activities={"signup": {"points": 10, "limit": "once"}, "quest": {"points": 30}},
)


def test_an_earn_read_after_redemptions_has_them_all_take_again_in_time_order(
    open_fresh: Open,
) -> None:
    """The late earn's points go to the first redemption; what that one gives back goes to
    the next one, which could not have taken the late earn (expired by its time)."""
    ledger, clock = open_fresh(SHORT, READ_AT)
    quest = activity("q-1", "m-1", at("2026-01-05T10:00:00Z"), name="quest")
    x = purchase("q-2", "m-1", at("2026-01-10T10:00:00Z"), order_id="x", total_minor=3000)
    y = purchase("q-3", "m-1", at("2026-01-15T10:00:00Z"), order_id="y", total_minor=10000)
    first = redemption("q-4", "m-1", at("2026-02-01T10:00:00Z"), redemption_id="r-1", points=30)
    second = redemption("q-5", "m-1", at("2026-04-07T10:00:00Z"), redemption_id="r-2", points=30)
    reads = [(x, 0), (y, 0), (first, 0), (second, 0), (quest, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 5
    ledger.app.advance_members(["m-1"], at("2026-04-08T00:00:00Z"))

    # By hand, in time order (expiry 3 months, soonest-expiring first): quest 30 (01-05,
    # expires 04-05), x 30 (01-10, 04-10), y 100 (01-15, 04-15). r-1 (02-01) takes the 30
    # of quest; r-2 (04-07, quest expired) takes the 30 of x. Left on 04-08: y's 100.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(100, 0, 0)
    assert holding(ledger, "m-1") == [("order y", 100, at("2026-01-15T10:00:00Z"))]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_cancelled_redemption_held_its_points_until_its_cancellation(
    open_fresh: Open,
) -> None:
    """An earn read after a redemption and its cancellation: in time order the
    redemption took the earn's points and gave them back when cancelled, after they had
    expired; a redemption in between found them taken."""
    ledger, clock = open_fresh(SHORT, READ_AT)
    signup = activity("c-1", "m-1", at("2026-01-05T10:00:00Z"), name="signup")
    o1 = purchase("c-2", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=2000)
    o2 = purchase("c-3", "m-1", at("2026-02-15T10:00:00Z"), order_id="o-2", total_minor=10000)
    first = redemption("c-4", "m-1", at("2026-03-01T10:00:00Z"), redemption_id="x-1", points=30)
    second = redemption("c-5", "m-1", at("2026-03-02T10:00:00Z"), redemption_id="x-2", points=50)
    cancelled = cancellation("c-6", "m-1", at("2026-04-07T10:00:00Z"), redemption_id="x-1")
    reads = [(o1, 0), (o2, 0), (first, 0), (second, 0), (cancelled, 0), (signup, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 6
    ledger.app.advance_members(["m-1"], at("2026-04-08T00:00:00Z"))

    # By hand, in time order (expiry 3 months, soonest-expiring first): signup 10 (01-05,
    # expires 04-05), o-1 20 (01-10, 04-10), o-2 100 (02-15, 05-15). x-1 (03-01) takes
    # signup's 10 and o-1's 20; x-2 (03-02) takes 50 of o-2; x-1 is cancelled (04-07):
    # signup's 10 come back past their expiry and expire, o-1's 20 come back. Left on
    # 04-08: o-1 20 + o-2 50 = 70.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(70, 0, 0)
    assert holding(ledger, "m-1") == [
        ("order o-1", 20, at("2026-01-10T10:00:00Z")),
        ("order o-2", 50, at("2026-02-15T10:00:00Z")),
    ]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_displaced_bonus_spent_since_is_not_spent_again_by_a_redemption_read_later(
    open_fresh: Open,
) -> None:
    """m-a's referral of m-b is displaced by m-b's earlier one of m-a (circular) after a
    redemption spent its bonus; the redemptions dated after the bonus take again without
    it, so a redemption read later, dated before, cannot be funded by it."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    earlier = (referral("d-1", "m-b", at("2026-01-05T10:00:00Z"), referee="m-a"), 1)
    displaced = (referral("d-2", "m-a", at("2026-01-06T10:00:00Z"), referee="m-b"), 0)
    waits = (
        redemption("d-3", "m-a", at("2026-01-07T10:00:00Z"), redemption_id="x-2", points=30),
        0,
    )
    bought = (
        purchase("d-4", "m-a", at("2026-01-11T10:00:00Z"), order_id="o-1", total_minor=3000),
        0,
    )
    spent = (
        redemption("d-5", "m-a", at("2026-01-20T10:00:00Z"), redemption_id="x-1", points=30),
        0,
    )
    read(ledger, clock, [displaced, bought, spent, earlier, waits])

    # By hand, in time order: m-a's welcome bonus of 10 (m-b's referral, 01-05); m-a's
    # referral of m-b (01-06) is circular and does not count; x-2 of 30 (01-07) has 10
    # and waits until its deadline (01-10 10:00): o-1 comes after it (01-11, 30), so
    # x-2 is never funded; x-1 of 30 (01-20) takes the welcome bonus's 10 and 20 of o-1.
    a = ledger.app.find_account("m-a")
    assert a is not None
    assert a.balance == Balances(10, 0, 0)
    assert holding(ledger, "m-a") == [("order o-1", 10, at("2026-01-11T10:00:00Z"))]
    assert a.redemptions["x-1"].status == "redeemed"
    assert "x-2" not in a.redemptions or a.redemptions["x-2"].status != "redeemed"
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_cancellation_read_after_a_refund_that_found_nothing_gives_it_the_points(
    open_fresh: Open,
) -> None:
    """The refund found no points (a redemption had them) and took nothing; the
    cancellation of that redemption, dated before the refund, is read after it: in time
    order the points were back by the refund's time, and it takes them."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = (
        purchase("n-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000),
        0,
    )
    spent = (
        redemption("n-2", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=50),
        0,
    )
    cancelled = (cancellation("n-3", "m-1", at("2026-01-20T10:00:00Z"), redemption_id="x-1"), 0)
    refunded = (
        refund(
            "n-4",
            "m-1",
            at("2026-01-25T10:00:00Z"),
            order_id="o-1",
            refund_id="r-1",
            amount_minor=5000,
        ),
        0,
    )
    assert read(ledger, clock, [bought, spent, refunded, cancelled]) == ["applied"] * 4

    # By hand, in time order: o-1 earns 50 (01-10); x-1 spends them (01-15); x-1 is
    # cancelled and the 50 go back to o-1's lot (01-20); the refund of all of o-1 (01-25)
    # takes the 50 back. Nothing is left.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(0, 0, 0)
    assert holding(ledger, "m-1") == []
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_redemption_cancelled_after_a_late_earn_held_its_points_until_then(
    open_fresh: Open,
) -> None:
    """A redemption dated before a late earn and cancelled after it held its points in
    between: a refund dated in between, taken again with the earn, finds its order's
    points held and takes the earn's."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = (
        purchase("h-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000),
        0,
    )
    spent = (
        redemption("h-2", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-1", points=50),
        0,
    )
    signup = (activity("h-3", "m-1", at("2026-01-14T10:00:00Z"), name="signup"), 0)
    refunded = (
        refund(
            "h-4",
            "m-1",
            at("2026-01-16T10:00:00Z"),
            order_id="o-1",
            refund_id="r-1",
            amount_minor=2000,
        ),
        0,
    )
    cancelled = (cancellation("h-5", "m-1", at("2026-01-18T10:00:00Z"), redemption_id="x-1"), 0)
    reads = [bought, spent, refunded, cancelled, signup]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order: o-1 earns 50 (01-10); x-1 takes them (01-12); signup earns
    # 10 (01-14); the refund of $20 of o-1 (01-16) wants 20 back: o-1's lot is empty, it
    # takes signup's 10 and forgives 10; x-1 is cancelled (01-18): o-1's 50 come back.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(50, 0, 0)
    assert holding(ledger, "m-1") == [("order o-1", 50, at("2026-01-10T10:00:00Z"))]
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


# Points-based tiers where the entry tier earns more: Base x2, Silver x1 from 100 points.
DEMOTING = program(
    activities={"signup": {"points": 40, "limit": "once"}},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0, "earn_multiplier": "2"},
        {"id": "silver", "name": "Silver", "threshold": 100, "earn_multiplier": "1"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)
DEMOTING_REFERRED = program(
    activities={"birthday": {"points": 25, "limit": "per_year"}},
    referral={"referrer_points": 0, "referee_points": 40},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0, "earn_multiplier": "2"},
        {"id": "silver", "name": "Silver", "threshold": 100, "earn_multiplier": "1"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_a_late_earn_reaching_a_lower_earning_tier_withdraws_the_redemption_it_unfunds(
    open_fresh: Open,
) -> None:
    """The purchases topic is read first, the activities topic last: the signup dated
    between the two purchases puts the member in Silver (x1) before the second one."""
    ledger, clock = open_fresh(DEMOTING, READ_AT)
    one = purchase("d-1", "m-1", at("2026-04-20T10:00:00Z"), order_id="o-1", total_minor=4000)
    signup = activity("d-2", "m-1", at("2026-04-21T10:00:00Z"), name="signup")
    two = purchase("d-3", "m-1", at("2026-04-22T10:00:00Z"), order_id="o-2", total_minor=6000)
    spent = redemption("d-4", "m-1", at("2026-04-23T10:00:00Z"), redemption_id="x-1", points=190)
    assert read(ledger, clock, [(one, 0), (two, 0), (spent, 0), (signup, 0)]) == ["applied"] * 4
    # By hand, in time order: Apr 20 $40 at Base x2 = 80 (year 80); Apr 21 signup 40 (year
    # 120 >= 100: Silver from the next earn); Apr 22 $60 at Silver x1 = 60; Apr 23 the
    # redemption of 190 finds 80 + 40 + 60 = 180: it waits (parked). Read in this order, o-2
    # earned 120 at Base and the redemption took 190 of 200; the late signup reprices o-2 to
    # 60, which leaves the redemption unfunded: it is withdrawn and waits again.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.tier_at(at("2026-04-22T10:00:00Z")) == "silver"
    assert account.redemptions["x-1"].status == "withdrawn"
    assert account.balance == Balances(available=180, pending=0, held=0)
    lot_id = account.orders["o-2"].lot_id
    assert lot_id is not None
    assert (account.lots[lot_id].amount, account.lots[lot_id].remaining) == (60, 60)
    assert [e.event_id for _, e in ledger.app.parked()] == ["d-4"]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_refund_of_a_purchase_repriced_by_a_late_tier_takes_its_new_size_in_event_time(
    open_fresh: Open,
) -> None:
    """The purchases, redemptions and activities topics are read before the referrals
    topic, whose welcome bonus (dated before o-2) puts the member in Silver (x1) first."""
    ledger, clock = open_fresh(DEMOTING_REFERRED, READ_AT)
    one = purchase("e-1", "m-1", at("2026-04-20T10:00:00Z"), order_id="o-1", total_minor=4000)
    bonus = referral("e-2", "m-2", at("2026-04-21T10:00:00Z"), referee="m-1")
    two = purchase("e-3", "m-1", at("2026-04-22T10:00:00Z"), order_id="o-2", total_minor=6000)
    first = redemption("e-4", "m-1", at("2026-04-22T12:00:00Z"), redemption_id="x-0", points=10)
    spent = redemption("e-5", "m-1", at("2026-04-23T10:00:00Z"), redemption_id="x-1", points=150)
    birthday = activity("e-6", "m-1", at("2026-04-23T12:00:00Z"), name="birthday")
    back = refund(
        "e-7", "m-1", at("2026-04-24T10:00:00Z"), order_id="o-2", refund_id="r-1", amount_minor=6000
    )
    order = [(one, 0), (two, 0), (spent, 0), (birthday, 0), (back, 0), (bonus, 0), (first, 0)]
    assert read(ledger, clock, order) == ["applied"] * 7
    # By hand, in time order: Apr 20 o-1 $40 at Base x2 = 80; Apr 21 welcome bonus 40 (year
    # 120 >= 100: Silver from the next earn); Apr 22 10:00 o-2 $60 at Silver x1 = 60; 12:00
    # x-0 takes 10 of o-1 (earned first, no expiry) -> o-1 70; Apr 23 10:00 x-1 takes 150:
    # o-1 70, bonus 40, o-2 40 -> o-2 20; 12:00 birthday 25; Apr 24 o-2 refunded in full:
    # 60 back, its own lot's 20, then 25 from the birthday, 15 kept by the member
    # (within_balance). Balance 0.
    # Read in this order, o-2 earned 120 at Base, x-1 took 70 of it and the refund wanted
    # 120; the bonus reprices o-2 to 60 (the refund to 60) with x-1 and the refund taken
    # again on it, and x-0, read last, has them take again once more.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=0, pending=0, held=0)
    assert account.redemptions["x-1"].status == "redeemed"
    by_source = {lot.source: (lot.amount, lot.remaining) for lot in account.lots.values()}
    assert by_source == {
        "order o-1": (80, 0),
        "referral by m-2": (40, 0),
        "order o-2": (60, 0),
        "birthday": (25, 0),
    }
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


# Base x2, Silver x1 from 100 points, Gold from 300: a tier reached earlier earns less.
DEMOTING_GOLD = program(
    activities={"signup": {"points": 40, "limit": "once"}},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0, "earn_multiplier": "2"},
        {"id": "silver", "name": "Silver", "threshold": 100, "earn_multiplier": "1"},
        {"id": "gold", "name": "Gold", "threshold": 300, "earn_multiplier": "1"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_a_late_earn_that_reprices_purchases_down_retracts_an_upgrade_they_no_longer_reach(
    open_fresh: Open,
) -> None:
    """The purchases topic is read before the activities topic: the signup dated before
    o-2 puts the member in Silver (x1) earlier, so o-2 earns less, and the Gold upgrade
    that o-2's Base points had reached is no longer reached."""
    ledger, clock = open_fresh(DEMOTING_GOLD, READ_AT)
    one = purchase("g-1", "m-1", at("2026-04-20T10:00:00Z"), order_id="o-1", total_minor=4000)
    signup = activity("g-2", "m-1", at("2026-04-21T10:00:00Z"), name="signup")
    two = purchase("g-3", "m-1", at("2026-04-22T10:00:00Z"), order_id="o-2", total_minor=6000)
    three = purchase("g-4", "m-1", at("2026-04-23T10:00:00Z"), order_id="o-3", total_minor=10000)
    assert read(ledger, clock, [(one, 0), (two, 0), (three, 0), (signup, 0)]) == ["applied"] * 4
    # By hand, in time order: Apr 20 $40 at Base x2 = 80 (year 80); Apr 21 signup 40 (year
    # 120: Silver); Apr 22 $60 at Silver x1 = 60 (180); Apr 23 $100 at Silver x1 = 100
    # (280 < 300): Silver all along, 280 points. Read in this order, o-2 earned 120 at Base
    # (year 200: Silver) and o-3 100 (year 300: Gold); the late signup reprices o-2 to 60, so
    # the year holds 280 at Apr 23 and the Gold upgrade is retracted.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.tier_at(at("2026-04-23T10:00:00Z")) == "silver"
    assert account.tier_at(READ_AT) == "silver"
    assert account.balance == Balances(available=280, pending=0, held=0)
    by_source = {lot.source: lot.amount for lot in account.lots.values()}
    assert by_source == {"order o-1": 80, "signup": 40, "order o-2": 60, "order o-3": 100}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_funds_a_redemption_dated_before_it_that_waited_past_it(
    open_fresh: Open,
) -> None:
    """A redemption that waited for points from before a late earn until after it was
    funded, in event time, by that earn: when the earn is read after later spends, it
    takes again with them, not only the spends dated after the earn."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    one = purchase("w-1", "m-1", at("2026-01-12T08:00:00Z"), order_id="o-1", total_minor=3000)
    waits = redemption("w-2", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-1", points=40)
    signup = activity("w-3", "m-1", at("2026-01-12T12:00:00Z"), name="signup")
    two = purchase("w-4", "m-1", at("2026-01-12T14:00:00Z"), order_id="o-2", total_minor=5000)
    later = redemption("w-5", "m-1", at("2026-01-13T10:00:00Z"), redemption_id="x-2", points=5)
    reads = [(one, 0), (waits, 0), (two, 0), (later, 0), (signup, 0)]
    assert read(ledger, clock, reads) == ["applied", PARKED, "applied", "applied", "applied"]

    # By hand, in time order (expiry 6 months after earn, soonest-expiring first): o-1
    # earns 30 (01-12 08:00); x-1 (40, 10:00) waits; signup earns 10 (12:00): x-1 is funded
    # then, taking o-1's 30 and signup's 10; o-2 earns 50 (14:00); x-2 (5, 01-13) takes 5
    # of o-2 (the only lot left). Left: o-2's 45, nothing of signup.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(45, 0, 0)
    assert holding(ledger, "m-1") == [("order o-2", 45, at("2026-01-12T14:00:00Z"))]
    assert account.redemptions["x-1"].at == at("2026-01-12T12:00:00Z")
    ledger.projection.run()
    assert verify(ledger.app, ledger.view).ok


def test_a_displaced_bonus_that_funded_a_redemption_dated_before_it_is_taken_out_of_it(
    open_fresh: Open,
) -> None:
    """x-1 is dated before m-a's referral bonus but waited for points, and the bonus
    funded it; m-b's earlier referral of m-a, read last, displaces that bonus (circular):
    x-1 takes again without it, in event time funded by o-2 (not from what is left)."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    earlier = (referral("w-1", "m-b", at("2026-01-05T10:00:00Z"), referee="m-a"), 1)
    one = (
        purchase("w-2", "m-a", at("2026-01-05T12:00:00Z"), order_id="o-1", total_minor=1000),
        0,
    )
    waits = (
        redemption("w-3", "m-a", at("2026-01-06T09:00:00Z"), redemption_id="x-1", points=25),
        0,
    )
    displaced = (referral("w-4", "m-a", at("2026-01-06T10:00:00Z"), referee="m-b"), 0)
    two = (
        purchase("w-5", "m-a", at("2026-01-07T10:00:00Z"), order_id="o-2", total_minor=1000),
        0,
    )
    assert read(ledger, clock, [displaced, one, waits, two, earlier]) == ["applied"] * 5

    # By hand, in time order: 01-05 10:00 m-a's welcome bonus 10 (m-b's referral); 12:00
    # o-1 10 (20); 01-06 09:00 x-1 of 25 waits (deadline 01-09 09:00); 10:00 m-a's
    # referral of m-b is circular and does not count; 01-07 10:00 o-2 10 (30): x-1 is
    # funded then, soonest expiry first: the welcome bonus 10, o-1 10, o-2 5. Left: o-2 5.
    # Read in this order, x-1 was funded at 01-06 10:00 by o-1 10 and 15 of the bonus.
    a = ledger.app.find_account("m-a")
    assert a is not None
    assert a.balance == Balances(5, 0, 0)
    assert holding(ledger, "m-a") == [("order o-2", 5, at("2026-01-07T10:00:00Z"))]
    took = {a.lots[m.lot_id].source: -m.amount for m in a.redemptions["x-1"].moves}
    assert took == {"referral by m-b": 10, "order o-1": 10, "order o-2": 5}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_parked_redemption_is_not_funded_by_points_a_redemption_cancelled_later_held_then(
    open_fresh: Open,
) -> None:
    """x-2 waits (parked) for points that x-1 held at its time; x-1's cancellation, long
    after x-2's deadline, is read next: x-2 is retried then, and must not count the points
    x-1 held until its cancellation."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("v-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    first = redemption("v-2", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=50)
    second = redemption("v-3", "m-1", at("2026-01-16T10:00:00Z"), redemption_id="x-2", points=30)
    undone = cancellation("v-4", "m-1", at("2026-01-25T10:00:00Z"), redemption_id="x-1")
    statuses = read(ledger, clock, [(bought, 0), (first, 0), (second, 0), (undone, 0)])
    assert statuses == ["applied", "applied", PARKED, "applied"]

    # By hand, in time order: 01-10 o-1 50; 01-15 x-1 takes the 50; 01-16 x-2 of 30 finds 0
    # and waits until its deadline (01-19 10:00, 72 hours), when it is declined; 01-25 x-1
    # is cancelled: its 50 come back. Balance 50, x-2 never redeemed.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(50, 0, 0)
    assert "x-2" not in account.redemptions
    assert [e.event_id for _, e in ledger.app.parked()] == ["v-3"]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_redemption_cancelled_while_it_would_have_waited_leaves_the_others_to_take_again(
    open_fresh: Open,
) -> None:
    """x-2 was funded when read and cancelled since; x-1, dated before it, is read last and
    takes the points first. In event time x-2 found too few points, waited and was
    cancelled while waiting: it took nothing and gave nothing back. The spends after it
    still take again: x-3 had taken points that were x-1's in event time, so it waits
    again."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("u-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=2000)
    late = redemption("u-2", "m-1", at("2026-01-11T10:00:00Z"), redemption_id="x-1", points=15)
    undone = redemption("u-3", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-2", points=10)
    cancelled = cancellation("u-4", "m-1", at("2026-01-12T12:00:00Z"), redemption_id="x-2")
    third = redemption("u-5", "m-1", at("2026-01-13T10:00:00Z"), redemption_id="x-3", points=10)
    reads = [(bought, 0), (undone, 0), (cancelled, 0), (third, 0), (late, 1)]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order: 01-10 o-1 earns 20; 01-11 x-1 takes 15 (5 left); 01-12 10:00
    # x-2 of 10 finds 5 and waits; 12:00 it is cancelled while waiting; 01-13 x-3 of 10
    # finds 5 and waits until its deadline (01-16 10:00, 72 hours), when it is declined.
    # Balance 5; x-1 holds o-1's 15; x-2 took nothing.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(5, 0, 0)
    assert account.redemptions["x-1"].status == "redeemed"
    assert -sum(m.amount for m in account.redemptions["x-1"].moves) == 15
    assert account.redemptions["x-2"].status == "cancelled"
    assert account.redemptions["x-2"].moves == ()
    assert account.redemptions["x-3"].status != "redeemed"
    ledger.tick(at("2026-01-16T10:00:00Z"))
    assert "u-5" in [r.event_id for r in ledger.app.rejections()]
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(5, 0, 0)
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_funds_a_cancelled_redemption_that_had_taken_nothing_until_its_cancellation(
    open_fresh: Open,
) -> None:
    """As above, x-2 took nothing in event time (cancelled while waiting). A signup bonus
    dated while x-2 waited, read last, funds it until its cancellation, which then gives the
    points back: x-3 takes them."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("u-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=2000)
    late = redemption("u-2", "m-1", at("2026-01-11T10:00:00Z"), redemption_id="x-1", points=15)
    undone = redemption("u-3", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-2", points=10)
    cancelled = cancellation("u-4", "m-1", at("2026-01-12T12:00:00Z"), redemption_id="x-2")
    third = redemption("u-5", "m-1", at("2026-01-13T10:00:00Z"), redemption_id="x-3", points=10)
    signup = activity("u-6", "m-1", at("2026-01-12T11:00:00Z"), name="signup")
    reads = [(bought, 0), (undone, 0), (cancelled, 0), (third, 0), (late, 1), (signup, 2)]
    assert read(ledger, clock, reads) == ["applied"] * 6

    # By hand, in time order (soonest expiry first: o-1 07-10, signup 07-12): 01-10 o-1 20;
    # 01-11 x-1 takes 15 (o-1 5 left); 01-12 10:00 x-2 of 10 waits; 11:00 signup 10: x-2 is
    # funded, o-1 5 and signup 5; 12:00 x-2 is cancelled: o-1 5 and signup 10 again; 01-13
    # x-3 of 10 takes o-1 5 and signup 5. Balance 5 (signup's), x-3 redeemed.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(5, 0, 0)
    assert account.redemptions["x-3"].status == "redeemed"
    took = {account.lots[m.lot_id].source: -m.amount for m in account.redemptions["x-3"].moves}
    assert took == {"order o-1": 5, "signup": 5}
    assert holding(ledger, "m-1") == [("signup", 5, at("2026-01-12T11:00:00Z"))]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


COFFEE_LIKE = program(
    earn={"caps": {"per_member_per_day": 100}},
    activities={"signup": {"points": 10, "limit": "once"}},
    tiers=[
        {"id": "green", "name": "Green", "threshold": 0},
        {"id": "gold", "name": "Gold", "threshold": 50, "earn_multiplier": "2"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_a_late_signup_that_brings_an_upgrade_forward_reprices_under_the_daily_cap(
    open_fresh: Open,
) -> None:
    """The member was Gold from o-3 on when the enrolment's signup bonus, dated before
    every purchase, is read: Gold counts from o-3 itself, which earns double, and o-4 gets
    what the day's cap leaves after it (the two-store test found this on the coffee
    program)."""
    ledger, clock = open_fresh(COFFEE_LIKE, READ_AT)
    joined = enrolment("g-1", "m-1", at("2026-04-19T00:30:00Z"))
    one = purchase("g-2", "m-1", at("2026-04-19T01:00:00Z"), order_id="o-1", total_minor=2400)
    two = purchase("g-3", "m-1", at("2026-04-19T02:00:00Z"), order_id="o-2", total_minor=2300)
    three = purchase("g-4", "m-1", at("2026-04-19T03:00:00Z"), order_id="o-3", total_minor=2100)
    four = purchase("g-5", "m-1", at("2026-04-19T04:00:00Z"), order_id="o-4", total_minor=3000)
    reads = [(one, 0), (two, 0), (three, 0), (four, 0), (joined, 1)]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order: signup 10; o-1 24 (34 in the window); o-2 23 (57 >= 50: Gold
    # from the next earn); o-3 $21 at Gold x2 = 42; o-4 $30 x2 = 60, but the day's purchases
    # have 24 + 23 + 42 = 89 of the cap of 100: 11. Total 10 + 24 + 23 + 42 + 11 = 110.
    # Read in this order, o-3 earned 21 at Green (and made the member Gold), o-4 the 32 the
    # cap left then.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert {o.order_id: o.points for o in account.orders.values()} == {
        "o-1": 24,
        "o-2": 23,
        "o-3": 42,
        "o-4": 11,
    }
    assert account.balance == Balances(available=110, pending=0, held=0)
    assert sorted(lot.remaining for lot in account.lots.values()) == [10, 11, 23, 24, 42]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


CAPPED = program(
    timezone="UTC",
    earn={"caps": {"per_member_per_day": 200}},
)


def test_a_purchase_read_after_a_later_one_of_the_same_day_comes_first_under_the_daily_cap(
    open_fresh: Open,
) -> None:
    """The daily cap is used in event-time order: the earlier purchase, read last, earns
    in full, and the later one gives up what no longer fits under the cap."""
    ledger, clock = open_fresh(CAPPED, READ_AT)
    early = purchase("c-1", "m-1", at("2026-04-10T09:00:00Z"), order_id="o-1", total_minor=10000)
    later = purchase("c-2", "m-1", at("2026-04-10T10:00:00Z"), order_id="o-2", total_minor=15000)
    assert read(ledger, clock, [(later, 0), (early, 1)]) == ["applied"] * 2

    # By hand, in time order: o-1 $100 earns 100 (100 of the day's 200); o-2 $150 earns
    # the 100 left. Read in this order, o-2 first earned 150 and o-1 the 50 left.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=200, pending=0, held=0)
    assert {o.order_id: o.points for o in account.orders.values()} == {"o-1": 100, "o-2": 100}
    assert sorted(lot.amount for lot in account.lots.values()) == [100, 100]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_an_account_snapshot_taken_before_the_latest_purchase_per_day_was_kept_finds_it(
    open_fresh: Open,
) -> None:
    """Snapshots written before this release have no latest purchase per day: it is built
    from the orders the first time it is asked for, so a late purchase is still capped
    in event-time order."""
    ledger, clock = open_fresh(CAPPED, READ_AT)
    first = purchase("s-1", "m-1", at("2026-04-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    second = purchase("s-2", "m-1", at("2026-04-10T12:00:00Z"), order_id="o-2", total_minor=5000)
    other = purchase("s-3", "m-1", at("2026-04-11T08:00:00Z"), order_id="o-3", total_minor=5000)
    assert read(ledger, clock, [(first, 0), (second, 0), (other, 0)]) == ["applied"] * 3
    account = ledger.app.find_account("m-1")
    assert account is not None
    kept = dict(account.last_order_by_day)
    del account.__dict__["_last_order_by_day"]  # as a snapshot of the previous release
    assert (
        account.last_order_by_day
        == kept
        == {
            "2026-04-10": at("2026-04-10T12:00:00Z"),
            "2026-04-11": at("2026-04-11T08:00:00Z"),
        }
    )


TOPPED = program(
    expiry={"months_after_earn": 6},
    activities={"signup": {"points": 10, "limit": "once"}},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "gold", "name": "Gold", "threshold": 50, "earn_multiplier": "2"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_a_purchase_topped_up_by_a_late_earn_is_spent_first_by_later_redemptions(
    open_fresh: Open,
) -> None:
    """A late signup bonus brings Gold forward, which tops up o-2: in event time o-2 was
    that much larger when x-1 spent, and being the sooner to expire it gave x-1 all of it
    before o-3 gave anything."""
    ledger, clock = open_fresh(TOPPED, READ_AT)
    signup = activity("p-1", "m-1", at("2026-01-05T10:00:00Z"), name="signup")
    one = purchase("p-2", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=4000)
    two = purchase("p-3", "m-1", at("2026-02-10T10:00:00Z"), order_id="o-2", total_minor=1000)
    three = purchase("p-4", "m-1", at("2026-03-10T10:00:00Z"), order_id="o-3", total_minor=3000)
    spent = redemption("p-5", "m-1", at("2026-04-01T10:00:00Z"), redemption_id="x-1", points=70)
    reads = [(one, 0), (two, 0), (three, 0), (spent, 1), (signup, 2)]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order (6-month expiry: signup 07-05, o-1 07-10, o-2 08-10, o-3
    # 09-10): signup 10; o-1 40 (50 in the window: Gold from the next earn); o-2 $10 x2 =
    # 20; o-3 $30 x2 = 60; x-1 70 takes signup 10, o-1 40, o-2 20. Left: o-3's 60.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=60, pending=0, held=0)
    assert holding(ledger, "m-1") == [("order o-3", 60, at("2026-03-10T10:00:00Z"))]
    took = {account.lots[m.lot_id].source: -m.amount for m in account.redemptions["x-1"].moves}
    assert took == {"signup": 10, "order o-1": 40, "order o-2": 20}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_waiting_redemption_funded_by_a_cancellation_before_its_deadline_is_redeemed(
    open_fresh: Open,
) -> None:
    """x-2 waits (parked) for points that x-1 holds; x-1 is cancelled before x-2's deadline,
    which in time order funds x-2 then. A refund dated after both is read first, so x-2's
    retry on the cancellation takes again with a spend dated after it: the points the
    cancellation gave back fund it there too."""
    ledger, clock = open_fresh(ARRIVAL, READ_AT)
    bought = purchase("w-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    first = redemption("w-2", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=50)
    waits = redemption("w-3", "m-1", at("2026-01-16T10:00:00Z"), redemption_id="x-2", points=30)
    undone = cancellation("w-4", "m-1", at("2026-01-17T10:00:00Z"), redemption_id="x-1")
    refunded = refund(
        "w-5", "m-1", at("2026-01-20T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=1000
    )
    reads = [(bought, 0), (first, 0), (refunded, 0), (waits, 0), (undone, 0)]
    assert read(ledger, clock, reads) == ["applied", "applied", "applied", PARKED, "applied"]

    # By hand, in time order: 01-10 o-1 earns 50; 01-15 x-1 takes the 50; 01-16 x-2 of 30
    # finds 0 and waits (deadline 01-19 10:00, 72 hours); 01-17 x-1 is cancelled, its 50
    # go back to o-1 and fund x-2 (o-1 20 left); 01-20 the refund of $10 takes back 10 of
    # o-1. Balance 10, x-2 redeemed from o-1.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(10, 0, 0)
    assert account.redemptions["x-2"].status == "redeemed"
    took = {account.lots[m.lot_id].source: -m.amount for m in account.redemptions["x-2"].moves}
    assert took == {"order o-1": 30}
    assert holding(ledger, "m-1") == [("order o-1", 10, at("2026-01-10T10:00:00Z"))]
    assert ledger.app.parked() == []
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


# Points-based tiers: Silver (x2) from 30 points in 3 rolling months, held 3 months from
# the last qualifying earn; a signup bonus and reviews.
TIERED_ROLLING = program(
    expiry={"months_after_earn": 6},
    activities={"signup": {"points": 10, "limit": "once"}, "review": {"points": 5}},
    referral={"referrer_points": 20, "referee_points": 10},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 30, "earn_multiplier": "2"},
    ],
    tier_qualification={"basis": "points", "window": "rolling_months", "months": 3},
)


def test_a_refund_read_last_retracts_an_upgrade_dated_before_the_event_that_opened_the_account(
    open_fresh: Open,
) -> None:
    """m-a's account is opened by a referral read first (dated 03-31); earlier-dated earns
    read after it reach Silver at 03-08, decided again at the referral's instant; the
    refund of the purchase (03-04), read last, retracts the upgrade, and the tier decided
    again at 03-31 goes with it (there is no tier change at or before the refund's time to
    walk the tier policy from: the walk starts at the first one)."""
    ledger, clock = open_fresh(TIERED_ROLLING, READ_AT)
    referred = (referral("g-1", "m-b", at("2026-03-31T10:00:00Z"), referee="m-a"), 1)
    signup = (activity("g-2", "m-a", at("2026-03-08T10:00:00Z"), name="signup"), 0)
    bought = (
        purchase("g-3", "m-a", at("2026-03-03T10:00:00Z"), order_id="o-1", total_minor=2500),
        0,
    )
    refunded = (
        refund(
            "g-4",
            "m-a",
            at("2026-03-04T10:00:00Z"),
            order_id="o-1",
            refund_id="r-1",
            amount_minor=2500,
        ),
        0,
    )
    reviewed = (activity("g-5", "m-a", at("2026-03-20T10:00:00Z"), name="review"), 0)
    reads = [referred, signup, bought, reviewed, refunded]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order: 03-03 o-1 earns 25 (Base x1); 03-04 the refund takes the 25
    # back; 03-08 signup 10; 03-20 review 5; 03-31 m-b's referral gives m-a 10: the last
    # 3 months hold 25 (< 30), Base all along. Balance 25. (Read in this order, the
    # upgrade at 03-08 is recorded, and decided again at 03-31 when the review is read.)
    account = ledger.app.find_account("m-a")
    assert account is not None
    assert account.balance == Balances(25, 0, 0)
    assert account.tier == "base"
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


UNLIMITED = program(expiry={"months_after_earn": 6}, returns={"policy": "unlimited"})


@pytest.mark.parametrize("settled", ["no later earn", "a later earn"])
def test_a_redemption_read_after_a_refund_dated_later_leaves_it_owing_in_event_time(
    open_fresh: Open, settled: str
) -> None:
    """Under the unlimited policy: the refund read first found its order's points; x-1,
    dated before it, read last, spends them first in event time, so the refund finds too
    few points and owes the rest (the balance below zero); a purchase dated after the
    refund settles that debt first."""
    ledger, clock = open_fresh(UNLIMITED, READ_AT)
    o1 = purchase("u-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    o2 = purchase("u-2", "m-1", at("2026-01-11T10:00:00Z"), order_id="o-2", total_minor=3000)
    spent = redemption("u-3", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=70)
    refunded = refund(
        "u-4", "m-1", at("2026-01-20T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    o3 = purchase("u-5", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-3", total_minor=2500)
    purchases = [o1, o2, refunded] + ([o3] if settled == "a later earn" else [])
    reads = [(event, 0) for event in purchases] + [(spent, 0)]
    assert read(ledger, clock, reads) == ["applied"] * len(reads)

    # By hand, in time order (soonest expiry first): 01-10 o-1 50; 01-11 o-2 30; 01-15 x-1
    # of 70 takes o-1's 50 and 20 of o-2 (10 left); 01-20 the refund of all of o-1 (50)
    # finds o-1 empty, takes o-2's 10 and owes 40: balance -40; 01-25 o-3 earns 25, which
    # settle 25 of the 40 first: balance -15, o-3's lot empty.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    took = {account.lots[m.lot_id].source: -m.amount for m in account.redemptions["x-1"].moves}
    assert took == {"order o-1": 50, "order o-2": 20}
    want = -40 if settled == "no later earn" else -15
    assert account.balance == Balances(want, 0, 0)
    assert holding(ledger, "m-1") == []
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_refund_owing_points_read_after_a_later_earn_has_that_earn_settle_the_debt(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy, a refund that owes points is read after a purchase
    dated after it: in time order that purchase's points settled the debt first."""
    ledger, clock = open_fresh(UNLIMITED, READ_AT)
    o1 = purchase("s-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    spent = redemption("s-2", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=40)
    refunded = refund(
        "s-3", "m-1", at("2026-01-20T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    o2 = purchase("s-4", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-2", total_minor=3000)
    reads = [(o1, 0), (spent, 0), (o2, 0), (refunded, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 4

    # By hand, in time order: 01-10 o-1 50; 01-15 x-1 takes 40 (10 left); 01-20 the refund
    # of all of o-1 (50) takes the 10 and owes 40: balance -40; 01-25 o-2 earns 30, which
    # settle 30 of the 40: balance -10, o-2's lot empty.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(-10, 0, 0)
    assert holding(ledger, "m-1") == []
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_redemption_read_while_a_refund_dated_after_it_leaves_the_balance_below_zero(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy the balance is below zero when x-1 is read, all of it
    owed by a refund dated after x-1 (nothing came since to settle it): in event time x-1
    found its points, and the refund owes more."""
    ledger, clock = open_fresh(UNLIMITED, READ_AT)
    o1 = purchase("z-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=10000)
    first = redemption("z-2", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-0", points=50)
    late = redemption("z-3", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=30)
    refunded = refund(
        "z-4",
        "m-1",
        at("2026-01-20T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    reads = [(o1, 0), (refunded, 0), (first, 1), (late, 1)]
    assert read(ledger, clock, reads) == ["applied"] * 4

    # By hand, in time order: 01-10 o-1 100; 01-12 x-0 takes 50; 01-15 x-1 takes 30 (20
    # left); 01-20 the refund of all of o-1 (100) takes the 20 and owes 80: balance -80.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    assert account.balance == Balances(-80, 0, 0)
    assert holding(ledger, "m-1") == []
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_redemption_read_after_a_later_earn_settled_part_of_a_later_refunds_debt(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: the refund left points owed, a purchase dated after it
    settled part of that debt, then x-1, dated before the refund, is read. In event time
    x-1 found its points, the refund owes more, and the purchase settles what it can of
    that."""
    ledger, clock = open_fresh(UNLIMITED, READ_AT)
    o1 = purchase("y-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=10000)
    first = redemption("y-2", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-0", points=50)
    late = redemption("y-3", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=30)
    refunded = refund(
        "y-4",
        "m-1",
        at("2026-01-20T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    o2 = purchase("y-5", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-2", total_minor=2000)
    reads = [(o1, 0), (first, 0), (refunded, 0), (o2, 0), (late, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order: 01-10 o-1 100; 01-12 x-0 takes 50; 01-15 x-1 takes 30 (20
    # left); 01-20 the refund of all of o-1 (100) takes the 20 and owes 80: balance -80;
    # 01-25 o-2 earns 20, which settle 20 of the 80: balance -60, every lot empty.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    assert account.balance == Balances(-60, 0, 0)
    assert holding(ledger, "m-1") == []
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


UNLIMITED_SIGNUP = program(
    expiry={"months_after_earn": 6},
    returns={"policy": "unlimited"},
    activities={"signup": {"points": 10, "limit": "once"}},
)


@pytest.mark.parametrize(("later_minor", "left"), [(3000, 20), (1500, 5)])
def test_a_late_earn_before_a_refund_that_owed_points_has_it_owe_less_in_event_time(
    open_fresh: Open, later_minor: int, left: int
) -> None:
    """Under the unlimited policy the refund owed 20 when recorded, and o-2 (dated after
    it) settled them (all, or 15 with the signup bonus settling the rest when read). The
    signup bonus, dated before the redemption, is read last: in event time the refund
    took it and owed only 10, which o-2 settled."""
    ledger, clock = open_fresh(UNLIMITED_SIGNUP, READ_AT)
    o1 = purchase("q-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    signup = activity("q-2", "m-1", at("2026-01-12T10:00:00Z"), name="signup")
    spent = redemption("q-3", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-1", points=40)
    refunded = refund(
        "q-4", "m-1", at("2026-01-20T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=3000
    )
    o2 = purchase("q-5", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-2", total_minor=later_minor)
    reads = [(o1, 0), (spent, 0), (refunded, 0), (o2, 0), (signup, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order (soonest expiry first: o-1 07-10, signup 07-12): 01-10 o-1 50;
    # 01-12 signup 10; 01-15 x-1 takes 40 of o-1 (o-1 10, signup 10 left); 01-20 the
    # refund of $30 (30) takes o-1's 10, the signup's 10 and owes 10: balance -10; 01-25
    # o-2 earns 30 (or 15), which settles the 10 first: o-2 holds 20 (or 5).
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(left, 0, 0)
    assert holding(ledger, "m-1") == [("order o-2", left, at("2026-01-25T10:00:00Z"))]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_settles_the_whole_debt_before_points_that_came_after_it(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy the refund owed 40; the signup bonus (dated 01-25) was read
    first and settled 10 of it. o-2, dated 01-20, is read last, with no spend dated after
    it: in event time o-2 settled the whole debt first and the signup bonus was untouched."""
    ledger, clock = open_fresh(UNLIMITED_SIGNUP, READ_AT)
    o1 = purchase("w-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    spent = redemption("w-2", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-1", points=40)
    refunded = refund(
        "w-3", "m-1", at("2026-01-15T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    o2 = purchase("w-4", "m-1", at("2026-01-20T10:00:00Z"), order_id="o-2", total_minor=6000)
    signup = activity("w-5", "m-1", at("2026-01-25T10:00:00Z"), name="signup")
    reads = [(o1, 0), (spent, 0), (refunded, 0), (signup, 0), (o2, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order: 01-10 o-1 50; 01-12 x-1 takes 40 (10 left); 01-15 the refund
    # of all of o-1 (50) takes the 10 and owes 40: balance -40; 01-20 o-2 earns 60, which
    # settle the 40 first: o-2 holds 20; 01-25 the signup bonus 10, untouched. Balance 30.
    # (As read, the signup bonus settled 10 and o-2 only the 30 left: o-2 30, signup 0.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(30, 0, 0)
    assert holding(ledger, "m-1") == [
        ("order o-2", 20, at("2026-01-20T10:00:00Z")),
        ("signup", 10, at("2026-01-25T10:00:00Z")),
    ]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_before_a_refund_settles_an_older_debt_first_in_event_time(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy r-1 owed 40 (dated before o-0), which o-2 settled when
    read; r-2 then found too few points and owed 10, which o-0, read last, settled. In
    event time o-0 settled the older debt first, o-2 kept more of its own points for r-2,
    and r-2 left o-3 points."""
    ledger, clock = open_fresh(UNLIMITED, READ_AT)
    o1 = purchase("v-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    spent = redemption("v-2", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-1", points=40)
    r1 = refund(
        "v-3", "m-1", at("2026-01-15T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    o0 = purchase("v-4", "m-1", at("2026-01-20T10:00:00Z"), order_id="o-0", total_minor=2500)
    o2 = purchase("v-5", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-2", total_minor=6000)
    o3 = purchase("v-6", "m-1", at("2026-02-05T10:00:00Z"), order_id="o-3", total_minor=3000)
    r2 = refund(
        "v-7", "m-1", at("2026-02-10T10:00:00Z"), order_id="o-2", refund_id="r-2", amount_minor=6000
    )
    reads = [(o1, 0), (spent, 0), (r1, 0), (o2, 0), (o3, 0), (r2, 0), (o0, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 7

    # By hand, in time order: 01-10 o-1 50; 01-12 x-1 takes 40 (10 left); 01-15 r-1, all
    # of o-1 (50), takes the 10 and owes 40: balance -40; 01-20 o-0 earns 25, all settling
    # the debt: -15; 01-25 o-2 earns 60, 15 settle the rest: o-2 45; 02-05 o-3 30; 02-10
    # r-2, all of o-2 (60), takes o-2's 45, then 15 of o-3: o-3 holds 15, balance 15.
    # (As read, o-2 settled the 40 and kept 20; r-2 took those 20, o-3's 30 and owed 10,
    # which o-0 settled: o-0 15, o-3 0.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(15, 0, 0)
    assert holding(ledger, "m-1") == [("order o-3", 15, at("2026-02-05T10:00:00Z"))]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_redemption_before_an_expiry_has_a_refund_after_it_owe_in_event_time(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy r-1, dated after o-1's lot expired, was read when all of
    it had expired: it counted its 30 points as expired, owing nothing. x-1, dated before
    the expiry, is read last: in event time it spent 80, only 20 expired, and r-1 owes the
    other 10."""
    ledger, clock = open_fresh(UNLIMITED, READ_AT)
    o1 = purchase("t-1", "m-1", at("2025-01-10T10:00:00Z"), order_id="o-1", total_minor=10000)
    spent = redemption("t-2", "m-1", at("2025-06-01T10:00:00Z"), redemption_id="x-1", points=80)
    refunded = refund(
        "t-3", "m-1", at("2025-08-01T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=3000
    )
    reads = [(o1, 0), (refunded, 0), (spent, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 3

    # By hand, in time order (2025): 01-10 o-1 100 (expires 07-10); 06-01 x-1 takes 80 (20 left);
    # 07-10 the 20 expire; 08-01 r-1 of $30 (30): 20 of them had expired, it owes the other
    # 10: balance -10, o-1's lot empty, 20 expired.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.redemptions["x-1"].status == "redeemed"
    assert account.balance == Balances(-10, 0, 0)
    assert holding(ledger, "m-1") == []
    assert sum(account.expired_by_lot.values()) == 20
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


UNLIMITED_PENDING = program(
    expiry={"months_after_earn": 6},
    returns={"policy": "unlimited"},
    earn={"pending_days": 5},
    activities={"signup": {"points": 10, "limit": "once"}},
)


def test_a_release_settles_the_whole_debt_before_points_that_came_after_it(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy r-1 owed 40; the signup bonus (02-08) was read first and
    settled 10 of it. o-2's points, pending until 02-06, are released after: in event time
    their release settled the whole debt first and the signup bonus was untouched."""
    ledger, clock = open_fresh(UNLIMITED_PENDING, READ_AT)
    o1 = purchase("p-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    spent = redemption("p-2", "m-1", at("2026-01-20T10:00:00Z"), redemption_id="x-1", points=40)
    refunded = refund(
        "p-3", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    o2 = purchase("p-4", "m-1", at("2026-02-01T10:00:00Z"), order_id="o-2", total_minor=6000)
    signup = activity("p-5", "m-1", at("2026-02-08T10:00:00Z"), name="signup")
    reads = [(o1, 0), (spent, 0), (refunded, 0), (signup, 0), (o2, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 5
    ledger.app.advance_members(["m-1"], at("2026-02-10T10:00:00Z"))

    # By hand, in time order: 01-10 o-1 50, pending until 01-15; 01-20 x-1 takes 40 (10
    # left); 01-25 r-1, all of o-1 (50), takes the 10 and owes 40: balance -40; 02-01 o-2
    # earns 60, pending until 02-06, when they settle the 40 first: o-2 holds 20; 02-08 the
    # signup bonus 10, untouched. Balance 30. (As read, the signup bonus settled 10 and the
    # release only the 30 left: o-2 30, signup 0.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(30, 0, 0)
    assert holding(ledger, "m-1") == [
        ("order o-2", 20, at("2026-02-01T10:00:00Z")),
        ("signup", 10, at("2026-02-08T10:00:00Z")),
    ]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_leaves_what_a_refund_took_of_pending_points_taken(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy r-1 took back o-1's points while they were pending (not a
    settle of a debt): the signup bonus, dated before o-1 and read last, keeps its points."""
    ledger, clock = open_fresh(UNLIMITED_PENDING, READ_AT)
    o1 = purchase("n-1", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    refunded = refund(
        "n-2", "m-1", at("2026-01-12T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    signup = activity("n-3", "m-1", at("2026-01-05T10:00:00Z"), name="signup")
    assert read(ledger, clock, [(o1, 0), (refunded, 0)]) == ["applied"] * 2
    ledger.app.advance_members(["m-1"], at("2026-01-20T10:00:00Z"))
    assert read(ledger, clock, [(signup, 0)]) == ["applied"]

    # By hand: 01-05 signup 10; 01-10 o-1 50, pending until 01-15; 01-12 r-1 takes the 50
    # pending points back. Balance 10, all of it the signup bonus's.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(10, 0, 0)
    assert holding(ledger, "m-1") == [("signup", 10, at("2026-01-05T10:00:00Z"))]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_cancellation_settles_the_whole_debt_before_points_that_came_after_it(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy r-1 owed 40; the signup bonus (01-25) was read first and
    settled 10 of it. x-1's cancellation, dated 01-20, is read last: in event time the 40
    points it gave back settled the whole debt first and the signup bonus was untouched."""
    ledger, clock = open_fresh(UNLIMITED_SIGNUP, READ_AT)
    o1 = purchase("m-01", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    spent = redemption("m-02", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-1", points=40)
    refunded = refund(
        "m-03",
        "m-1",
        at("2026-01-15T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=5000,
    )
    undo = cancellation("m-04", "m-1", at("2026-01-20T10:00:00Z"), redemption_id="x-1")
    signup = activity("m-05", "m-1", at("2026-01-25T10:00:00Z"), name="signup")
    reads = [(o1, 0), (spent, 0), (refunded, 0), (signup, 0), (undo, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 5

    # By hand, in time order: 01-10 o-1 50; 01-12 x-1 takes 40 (10 left); 01-15 r-1, all
    # of o-1 (50), takes the 10 and owes 40: balance -40; 01-20 x-1 cancelled: its 40
    # points go back to o-1's lot and settle the 40: balance 0, o-1's lot empty; 01-25 the
    # signup bonus 10, untouched. (As read, the signup bonus settled 10, and the
    # cancellation only the 30 left: o-1 10, signup 0.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(10, 0, 0)
    assert holding(ledger, "m-1") == [("signup", 10, at("2026-01-25T10:00:00Z"))]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_cancellation_while_points_were_owed_settles_them_first_in_event_time(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy r-1 owed 40, o-3 settled 20 of it and r-2 (dated after
    the cancellation) owed 10 more when read. x-1's cancellation, dated while the 40 were
    owed, is read last: in event time its points settled the 40 first, o-3 kept its
    points, and r-2 found its order's own points."""
    ledger, clock = open_fresh(UNLIMITED_SIGNUP, READ_AT)
    o1 = purchase("k-01", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=5000)
    o2 = purchase("k-02", "m-1", at("2026-01-11T10:00:00Z"), order_id="o-2", total_minor=3000)
    x1 = redemption("k-03", "m-1", at("2026-01-12T10:00:00Z"), redemption_id="x-1", points=70)
    r1 = refund(
        "k-04",
        "m-1",
        at("2026-01-15T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=5000,
    )
    undo = cancellation("k-05", "m-1", at("2026-01-20T10:00:00Z"), redemption_id="x-1")
    o3 = purchase("k-06", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-3", total_minor=2000)
    r2 = refund(
        "k-07",
        "m-1",
        at("2026-02-01T10:00:00Z"),
        order_id="o-2",
        refund_id="r-2",
        amount_minor=1000,
    )
    reads = [(o1, 0), (o2, 0), (x1, 0), (r1, 0), (o3, 0), (r2, 0), (undo, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 7

    # By hand, in time order: 01-10 o-1 50; 01-11 o-2 30; 01-12 x-1 takes o-1's 50 and 20
    # of o-2 (10 left); 01-15 r-1, all of o-1 (50), takes o-2's 10 and owes 40: balance
    # -40; 01-20 x-1 cancelled: 50 back to o-1, 20 to o-2, and o-1's settle the 40: o-1
    # 10, o-2 20, balance 30; 01-25 o-3 20; 02-01 r-2 of $10 (10) takes them from o-2's
    # own lot: o-1 10, o-2 10, o-3 20, balance 40. (As read, o-3 settled 20 and r-2 owed
    # 10; the cancellation settled the 30 left: o-1 20, o-2 20, o-3 0.)
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(40, 0, 0)
    assert holding(ledger, "m-1") == [
        ("order o-1", 10, at("2026-01-10T10:00:00Z")),
        ("order o-2", 10, at("2026-01-11T10:00:00Z")),
        ("order o-3", 20, at("2026-01-25T10:00:00Z")),
    ]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


SHORT_LIVED = program(
    expiry={"months_after_earn": 2},
    referral={"referrer_points": 20, "referee_points": 10},
)


def test_a_displaced_bonus_a_cancelled_redemption_held_past_its_expiry_is_taken_out_of_it(
    open_fresh: Open,
) -> None:
    """m-1's referral of m-0 is read first and pays m-0 a welcome bonus; x-1 takes from it
    and is cancelled after it expired. m-0's earlier referral of m-1, read last, displaces
    that referral (circular): in event time the welcome bonus never existed, x-1 held o-1's
    points instead, and x-2 found too few (the cab-6 case of the unlimited catalogue)."""
    ledger, clock = open_fresh(SHORT_LIVED, READ_AT)
    first = (referral("d-1", "m-0", at("2026-01-06T10:00:00Z"), referee="m-1"), 1)
    circular = (referral("d-2", "m-1", at("2026-01-07T10:00:00Z"), referee="m-0"), 0)
    bought = (
        purchase("d-3", "m-0", at("2026-01-10T10:00:00Z"), order_id="o-1", total_minor=10000),
        0,
    )
    held = (redemption("d-4", "m-0", at("2026-01-14T10:00:00Z"), redemption_id="x-1", points=50), 0)
    later = (
        redemption("d-5", "m-0", at("2026-02-01T10:00:00Z"), redemption_id="x-2", points=75),
        0,
    )
    undone = (cancellation("d-6", "m-0", at("2026-03-20T10:00:00Z"), redemption_id="x-1"), 0)
    statuses = read(ledger, clock, [circular, bought, held, later, undone, first])
    assert statuses == ["applied", "applied", "applied", PARKED, "applied", "applied"]

    # By hand, in time order (expiry 2 months after earn): 01-06 m-0 refers m-1: m-0 earns
    # 20 (expires 03-06); 01-07 m-1's referral of m-0 is circular and does not count; 01-10
    # o-1 earns 100 (expires 03-10); 01-14 x-1 takes the bonus's 20 and 30 of o-1 (70 left);
    # 02-01 x-2 of 75 finds 70: it waits until its deadline (02-04) and is declined. Read
    # in this order, x-1 had taken m-0's 10-point welcome bonus and 40 of o-1; with the
    # late bonus taken again it took 20 + 10 + 20, and o-1's 80 funded x-2.
    account = ledger.app.find_account("m-0")
    assert account is not None
    took = {account.lots[m.lot_id].source: -m.amount for m in account.redemptions["x-1"].moves}
    assert took == {"referral of m-1": 20, "order o-1": 30}
    assert "x-2" not in account.redemptions or account.redemptions["x-2"].status != "redeemed"
    ledger.tick(READ_AT)  # past x-2's deadline: declined
    assert "d-5" in [r.event_id for r in ledger.app.rejections()]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


@pytest.mark.parametrize("policy", ["unlimited", "within_balance"])
def test_a_late_refund_takes_points_that_expired_since_as_of_its_own_time(
    open_fresh: Open, policy: str
) -> None:
    """A refund of an order whose points a redemption spent takes what else was there at
    its own time. Read after those points expired (and after a later earn), it takes them
    as of then: they expire one fewer, and nothing is owed or kept (the CI case of the
    arrival-order property, which under the unlimited policy broke the lots' invariant)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": policy},
    )
    ledger, clock = open_fresh(rules, at("2026-05-01T00:00:00Z"))
    o1 = purchase("v-1", "m-1", at("2026-05-01T10:00:00Z"), order_id="o-1", total_minor=100)
    o2 = purchase("v-2", "m-1", at("2026-05-10T10:00:00Z"), order_id="o-2", total_minor=5200)
    spent = redemption("v-3", "m-1", at("2026-05-20T10:00:00Z"), redemption_id="x-1", points=11)
    refunded = refund(
        "v-4", "m-1", at("2026-06-05T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=100
    )
    signup = activity("v-5", "m-1", at("2026-07-20T10:00:00Z"), name="signup")
    # Read in this order, each at the wall clock of the latest event read so far: the
    # refund last, after o-2's points expired and the signup earned.
    assert read_as_it_comes(ledger, clock, [o1, o2, spent, signup, refunded]) == ["applied"] * 5

    # By hand, in time order (expiry two months after earn): 05-01 o-1 +1; 05-10 o-2 +52;
    # 05-20 x-1 of 11 takes o-1's 1 and 10 of o-2 (42 left); 06-05 r-1 finds o-1 empty and
    # takes 1 of o-2 (41 left); 07-10 o-2's 41 expire; 07-20 signup +10. m-1 holds 10,
    # 41 expired, nothing owed.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(10, 0, 0)
    assert account.debt == 0
    assert sum(account.expired_by_lot.values()) == 41
    assert account.orders["o-1"].refunds[-1].taken_from != ()
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_that_expired_before_the_balance_went_below_zero_settles_nothing(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy a refund leaves the balance below zero; an earn dated
    before it, read after it, whose points expired before that refund, settles nothing:
    in event time those points were gone before anything was owed. They expire at once
    (before, they settled 10 of the 50 owed)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("w-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=5000)
    spent = redemption("w-2", "m-1", at("2026-01-02T10:00:00Z"), redemption_id="x-1", points=50)
    signup = activity("w-3", "m-1", at("2026-01-05T10:00:00Z"), name="signup")
    refunded = refund(
        "w-4", "m-1", at("2026-04-01T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=5000
    )
    # the signup last, after the refund
    assert read_as_it_comes(ledger, clock, [o1, spent, refunded, signup]) == ["applied"] * 4

    # By hand, in time order (expiry two months after earn): 01-01 o-1 +50; 01-02 x-1
    # takes them all; 01-05 signup +10 (expires 03-05); 03-05 those 10 expire; 04-01 r-1
    # takes back o-1's 50: all spent, so all owed: balance -50, 10 expired.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(-50, 0, 0)
    assert sum(account.expired_by_lot.values()) == 10
    assert all(lot.remaining == 0 for lot in account.lots.values())
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_cancellation_settles_what_was_owed_at_its_time_before_later_earns(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: a refund leaves points owed; the cancellation of the
    redemption that spent them, read after later spends and earns, gives its points back
    as of its own time, where they settle what was owed first; the later earn keeps its
    points (before, the later earn had settled half of it and the cancellation's points
    that were left expired)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("y-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    spent = redemption("y-2", "m-1", at("2026-01-05T10:00:00Z"), redemption_id="x-1", points=50)
    r1 = refund(
        "y-3",
        "m-1",
        at("2026-01-10T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    undone = cancellation("y-4", "m-1", at("2026-01-20T10:00:00Z"), redemption_id="x-1")
    o2 = purchase("y-5", "m-1", at("2026-01-25T10:00:00Z"), order_id="o-2", total_minor=3000)
    r2 = refund(
        "y-6", "m-1", at("2026-04-01T10:00:00Z"), order_id="o-2", refund_id="r-2", amount_minor=3000
    )
    signup = activity("y-7", "m-1", at("2026-04-15T10:00:00Z"), name="signup")
    # the redemptions topic last
    assert (
        read_as_it_comes(ledger, clock, [o1, r1, o2, r2, signup, spent, undone]) == ["applied"] * 7
    )

    # By hand, in time order (expiry two months after earn): 01-01 o-1 +100; 01-05 x-1
    # takes 50 of them; 01-10 r-1 takes back 100: 50 there, 50 owed (balance -50); 01-20
    # x-1 cancelled: its 50 go back to o-1 and settle the 50 owed (balance 0); 01-25 o-2
    # +30; 03-25 they expire; 04-01 r-2 finds them expired already (takes nothing); 04-15
    # signup +10. m-1 holds 10, all of them the signup's; o-2's 30 expired.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(10, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"signup": 10}
    assert {lot.source: lot.settled for lot in account.lots.values() if lot.settled} == {
        "order o-1": 50
    }
    assert {account.lots[k].source: v for k, v in account.expired_by_lot.items() if v} == {
        "order o-2": 30
    }
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_redemption_dated_while_a_late_refund_left_points_owed_waits_again(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy a refund read after a redemption dated after it leaves
    points owed at that redemption's time: in event time the redemption found nothing (the
    balance was below zero), so it is withdrawn and waits for points again; the refund
    owes only what was spent before it (before, the redemption stayed funded and the
    refund owed its points too)."""
    ledger, clock = open_fresh(UNLIMITED, READ_AT)
    o1 = purchase("z-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    x1 = redemption("z-2", "m-1", at("2026-01-05T10:00:00Z"), redemption_id="x-1", points=80)
    r1 = refund(
        "z-3",
        "m-1",
        at("2026-01-10T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    x2 = redemption("z-4", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-2", points=20)
    statuses = read(ledger, clock, [(o1, 0), (x1, 0), (x2, 0), (r1, 0)])
    assert statuses == ["applied"] * 4

    # By hand, in time order: 01-01 o-1 +100; 01-05 x-1 takes 80 (20 left); 01-10 r-1
    # takes back 100: 20 there, 80 owed (balance -80); 01-15 x-2 of 20 finds nothing (the
    # balance is below zero): it waits for points.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(-80, 0, 0)
    assert account.redemptions["x-1"].status == "redeemed"
    assert account.redemptions["x-2"].status == "withdrawn"
    assert ("m-1", "z-4") in [(m, p.event_id) for m, p in ledger.app.parked()]
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_that_expired_before_a_refund_a_late_redemption_left_owing_settles_nothing(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy a redemption read late makes a refund recorded before it
    owe points; the balance is below zero from the refund's time, not the redemption's. An
    earn dated before both, read last, whose points expired between the two, settles
    nothing (before, the debt counted from the redemption's time and the earn settled 10
    of it)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("q-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    signup = activity("q-2", "m-1", at("2026-01-10T10:00:00Z"), name="signup")
    x1 = redemption("q-3", "m-1", at("2026-02-01T10:00:00Z"), redemption_id="x-1", points=80)
    r1 = refund(
        "q-4", "m-1", at("2026-04-01T10:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=6000
    )
    assert read_as_it_comes(ledger, clock, [o1, r1, x1, signup]) == ["applied"] * 4

    # By hand, in time order (expiry two months after earn): 01-01 o-1 +100 (expires
    # 03-01); 01-10 signup +10 (expires 03-10); 02-01 x-1 takes 80 of o-1 (soonest to
    # expire); 03-01 o-1's other 20 expire; 03-10 the signup's 10 expire; 04-01 r-1 takes
    # back 60 of o-1's points: 20 had expired, 40 are owed. Balance -40; 30 expired.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(-40, 0, 0)
    assert sum(account.expired_by_lot.values()) == 30
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_cancellation_while_points_are_owed_settles_them_with_points_past_expiry(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: a cancellation read after a refund that owes points gives
    its points back to a lot whose expiry has passed; they settle what is owed first, as a
    cancellation read in time does, and the rest expire at once (the property's case: the
    lots' invariant broke when those points were left out of the settle)."""
    rules = program(expiry={"months_after_earn": 2}, returns={"policy": "unlimited"})
    ledger, clock = open_fresh(rules, at("2026-08-01T00:00:00Z"))
    o1 = purchase("c-1", "m-1", at("2026-08-03T09:10:00Z"), order_id="o-1", total_minor=17500)
    x1 = redemption("c-2", "m-1", at("2026-08-03T09:20:00Z"), redemption_id="x-1", points=132)
    r1 = refund(
        "c-3",
        "m-1",
        at("2026-10-05T11:46:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10500,
    )
    undone = cancellation("c-4", "m-1", at("2026-10-05T11:54:00Z"), redemption_id="x-1")
    # the redemptions topic after the purchases topic
    assert read_as_it_comes(ledger, clock, [o1, r1, x1, undone]) == ["applied"] * 4

    # By hand, in time order (expiry two months after earn): 08-03 o-1 +175 (expires
    # 10-03); x-1 takes 132 (43 left); 10-03 those 43 expire; 10-05 r-1 takes back 105:
    # 43 had expired, 62 are owed (balance -62); x-1 cancelled: its 132 go back to o-1,
    # settle the 62 owed, and the other 70 expire at once (o-1 expired on 10-03).
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(0, 0, 0)
    assert sum(account.expired_by_lot.values()) == 43 + 70
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_before_spends_settles_what_was_owed_at_its_time_though_expired_since(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: an earn dated while points were owed, read after a
    later purchase settled them and a later redemption spent the rest, settles first at
    its own time, though its points have expired since; the purchase settles less and
    keeps more (before, the earn's points expired unused and the purchase kept 10 fewer)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("s-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    x1 = redemption("s-2", "m-1", at("2026-01-02T10:00:00Z"), redemption_id="x-1", points=100)
    r1 = refund(
        "s-3",
        "m-1",
        at("2026-01-05T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    signup = activity("s-4", "m-1", at("2026-01-10T10:00:00Z"), name="signup")
    o2 = purchase("s-5", "m-1", at("2026-02-01T10:00:00Z"), order_id="o-2", total_minor=15000)
    x2 = redemption("s-6", "m-1", at("2026-03-15T10:00:00Z"), redemption_id="x-2", points=50)
    # the activities topic last
    assert read_as_it_comes(ledger, clock, [o1, x1, r1, o2, x2, signup]) == ["applied"] * 6

    # By hand, in time order (expiry two months after earn): 01-01 o-1 +100; 01-02 x-1
    # takes them; 01-05 r-1 takes back 100, all owed (balance -100); 01-10 signup +10
    # settles 10 (90 owed); 02-01 o-2 +150 settles 90 (60 left); 03-10 nothing left of the
    # signup to expire; 03-15 x-2 takes 50 of o-2. m-1 holds o-2's last 10.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(10, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-2": 10}
    assert sum(account.expired_by_lot.values()) == 0
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_settles_an_older_debt_though_it_expired_before_the_current_one(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: an earn read late came while an older debt was owed
    (settled since by a later purchase) and expired before the balance went below zero
    again. In event time it settled 10 of the older debt, the purchase settled 10 fewer and
    a refund of that purchase found those 10, not its points expired unused (the history
    kept in tests/property/histories/arrival_order.txt adds a cancellation to this)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("t-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    x1 = redemption("t-2", "m-1", at("2026-01-02T10:00:00Z"), redemption_id="x-1", points=100)
    r1 = refund(
        "t-3",
        "m-1",
        at("2026-01-05T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    signup = activity("t-4", "m-1", at("2026-01-10T10:00:00Z"), name="signup")
    o2 = purchase("t-5", "m-1", at("2026-02-01T10:00:00Z"), order_id="o-2", total_minor=15000)
    x2 = redemption("t-6", "m-1", at("2026-02-15T10:00:00Z"), redemption_id="x-2", points=50)
    r2 = refund(
        "t-7",
        "m-1",
        at("2026-03-20T10:00:00Z"),
        order_id="o-2",
        refund_id="r-2",
        amount_minor=15000,
    )
    # the activities topic last
    assert read_as_it_comes(ledger, clock, [o1, x1, r1, o2, x2, r2, signup]) == ["applied"] * 7

    # By hand, in time order (expiry two months after earn): 01-01 o-1 +100; 01-02 x-1
    # takes them; 01-05 r-1 takes back 100, all owed (balance -100); 01-10 signup +10
    # settles 10 (90 owed); 02-01 o-2 +150 settles 90 (60 left); 02-15 x-2 takes 50 (10
    # left); 03-20 r-2 takes back 150: 10 there, 140 owed. Balance -140; nothing expired.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(-140, 0, 0)
    assert sum(account.expired_by_lot.values()) == 0
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_settles_first_though_a_redemption_after_it_was_cancelled_since(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: an earn dated while points were owed, read after a later
    purchase settled them and a redemption of that purchase's points was cancelled, settles
    first at its own time; the purchase gives back what it settled in its place (before,
    the cancellation since made the late earn keep the arrival order)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("u-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    x1 = redemption("u-2", "m-1", at("2026-01-02T10:00:00Z"), redemption_id="x-1", points=100)
    r1 = refund(
        "u-3",
        "m-1",
        at("2026-01-05T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=10000,
    )
    signup = activity("u-4", "m-1", at("2026-01-10T10:00:00Z"), name="signup")
    o2 = purchase("u-5", "m-1", at("2026-02-01T10:00:00Z"), order_id="o-2", total_minor=15000)
    x2 = redemption("u-6", "m-1", at("2026-02-05T10:00:00Z"), redemption_id="x-2", points=40)
    undone = cancellation("u-7", "m-1", at("2026-02-10T10:00:00Z"), redemption_id="x-2")
    # the activities topic last
    assert read_as_it_comes(ledger, clock, [o1, x1, r1, o2, x2, undone, signup]) == ["applied"] * 7

    # By hand, in time order: 01-01 o-1 +100; 01-02 x-1 takes them; 01-05 r-1 takes back
    # 100, all owed (balance -100); 01-10 signup +10 settles 10 (90 owed); 02-01 o-2 +150
    # settles 90 (60 left); 02-05 x-2 takes 40 (20 left); 02-10 x-2 cancelled: its 40 go
    # back (60 left). m-1 holds 60, all of them o-2's; the signup settled its 10.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(60, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-2": 60}
    settled = {lot.source: lot.settled for lot in account.lots.values() if lot.settled}
    assert settled == {"signup": 10, "order o-2": 90}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_refund_before_a_cancellation_is_settled_by_its_points_though_expired(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: a refund read after the cancellation of a redemption
    dated before it owes what that redemption held; in event time the cancellation's points
    settle that debt first, in the redemption's order, those given back to a lot already
    expired included (before, they were left out and expired, and the purchase still held
    settled the whole debt)."""
    rules = program(expiry={"months_after_earn": 2}, returns={"policy": "unlimited"})
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("k-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=5000)
    o2 = purchase("k-2", "m-1", at("2026-02-01T10:00:00Z"), order_id="o-2", total_minor=12000)
    x1 = redemption("k-3", "m-1", at("2026-02-10T10:00:00Z"), redemption_id="x-1", points=140)
    r2 = refund(
        "k-4",
        "m-1",
        at("2026-03-10T10:00:00Z"),
        order_id="o-2",
        refund_id="r-2",
        amount_minor=12000,
    )
    undone = cancellation("k-5", "m-1", at("2026-03-20T10:00:00Z"), redemption_id="x-1")
    # the refund last
    assert read_as_it_comes(ledger, clock, [o1, o2, x1, undone, r2]) == ["applied"] * 5

    # By hand, in time order (expiry two months after earn): 01-01 o-1 +50 (expires
    # 03-01); 02-01 o-2 +120 (expires 04-01); 02-10 x-1 takes o-1's 50 and 90 of o-2 (30
    # left); 03-10 r-2 takes back 120: 30 there, 90 owed (balance -90); 03-20 x-1 is
    # cancelled: its 50 back to o-1 and 90 back to o-2 settle the 90 owed in that order
    # (o-1's 50, then 40 of o-2): o-2 holds 50, balance 50, nothing expired.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(50, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-2": 50}
    assert sum(account.expired_by_lot.values()) == 0
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_refund_owes_until_an_earn_then_a_cancellation_settle_it_in_that_order(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: a refund read last, dated before an earn and a
    cancellation, owes what the cancelled redemption held; in event time the earn settles
    first, then the cancellation's points (before, the cancellation settled it all and the
    earn kept its points)."""
    rules = program(
        expiry={"months_after_earn": 2},
        activities={"signup": {"points": 10, "limit": "once"}},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("n-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    o2 = purchase("n-2", "m-1", at("2026-01-05T10:00:00Z"), order_id="o-2", total_minor=12000)
    x1 = redemption("n-3", "m-1", at("2026-01-10T10:00:00Z"), redemption_id="x-1", points=200)
    r2 = refund(
        "n-4",
        "m-1",
        at("2026-02-01T10:00:00Z"),
        order_id="o-2",
        refund_id="r-2",
        amount_minor=12000,
    )
    signup = activity("n-5", "m-1", at("2026-02-10T10:00:00Z"), name="signup")
    undone = cancellation("n-6", "m-1", at("2026-02-20T10:00:00Z"), redemption_id="x-1")
    # the refund last
    assert read_as_it_comes(ledger, clock, [o1, o2, x1, signup, undone, r2]) == ["applied"] * 6

    # By hand, in time order: 01-01 o-1 +100; 01-05 o-2 +120; 01-10 x-1 takes o-1's 100
    # and 100 of o-2 (20 left); 02-01 r-2 takes back 120: 20 there, 100 owed; 02-10 signup
    # +10 settles 10 (90 owed); 02-20 x-1 cancelled: its 100 back to o-1 and 100 to o-2
    # settle the 90 owed from o-1 first: o-1 holds 10, o-2 100. Balance 110.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(110, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 10, "order o-2": 100}
    settled = {lot.source: lot.settled for lot in account.lots.values() if lot.settled}
    assert settled == {"signup": 10, "order o-1": 90}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_cancellation_before_a_debt_settles_nothing_with_points_expired_by_then(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: a cancellation read after a refund dated later that owes
    points gives its points back to a lot that expired before that refund; in event time
    they expired before anything was owed and settle nothing (before, they settled 50 of
    the debt)."""
    rules = program(expiry={"months_after_earn": 2}, returns={"policy": "unlimited"})
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("e-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=10000)
    x1 = redemption("e-2", "m-1", at("2026-01-05T10:00:00Z"), redemption_id="x-1", points=100)
    o2 = purchase("e-3", "m-1", at("2026-01-10T10:00:00Z"), order_id="o-2", total_minor=15000)
    x2 = redemption("e-4", "m-1", at("2026-01-15T10:00:00Z"), redemption_id="x-2", points=50)
    undone = cancellation("e-5", "m-1", at("2026-02-01T10:00:00Z"), redemption_id="x-1")
    r2 = refund(
        "e-6",
        "m-1",
        at("2026-04-01T10:00:00Z"),
        order_id="o-2",
        refund_id="r-2",
        amount_minor=15000,
    )
    statuses = read_as_it_comes(ledger, clock, [o1, x1, o2, x2, r2, undone])
    assert statuses == ["applied"] * 6

    # By hand, in time order (expiry two months after earn): 01-01 o-1 +100 (expires
    # 03-01); 01-05 x-1 takes them; 01-10 o-2 +150 (expires 03-10); 01-15 x-2 takes 50 of
    # them; 02-01 x-1 cancelled: o-1 holds 100 again; 03-01 they expire; 03-10 o-2's 100
    # expire; 04-01 r-2 takes back 150: 100 had expired, 50 were spent: owed. Balance -50;
    # 200 expired.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(-50, 0, 0)
    assert sum(account.expired_by_lot.values()) == 200
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


DOUBLE_ENTRY = program(
    earn={"caps": {"per_member_per_day": 100}},
    activities={"signup": {"points": 10, "limit": "once"}},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0, "earn_multiplier": "2"},
        {"id": "plus", "name": "Plus", "threshold": 50, "earn_multiplier": "1"},
    ],
    tier_qualification={"basis": "points", "window": "calendar_year"},
)


def test_a_purchase_the_cap_left_with_nothing_earns_when_a_late_upgrade_frees_room(
    open_fresh: Open,
) -> None:
    """The entry tier earns double and the next one single. Read before the signup bonus
    that brings the upgrade forward, o-2 earned double and filled the day's cap, so o-3
    earned nothing and got no lot; repriced single, o-2 leaves room for o-3, which gets
    its points and a lot (before, a purchase without a lot was never topped up)."""
    ledger, clock = open_fresh(DOUBLE_ENTRY, READ_AT)
    joined = enrolment("d-1", "m-1", at("2026-04-19T00:30:00Z"))
    one = purchase("d-2", "m-1", at("2026-04-19T01:00:00Z"), order_id="o-1", total_minor=2000)
    two = purchase("d-3", "m-1", at("2026-04-19T02:00:00Z"), order_id="o-2", total_minor=5000)
    three = purchase("d-4", "m-1", at("2026-04-19T03:00:00Z"), order_id="o-3", total_minor=1000)
    reads = [(one, 0), (two, 0), (three, 0), (joined, 1)]
    assert read(ledger, clock, reads) == ["applied"] * 4

    # By hand, in time order: signup 10; o-1 $20 at Base x2 = 40 (50 in the window: Plus
    # from the next earn); o-2 $50 at Plus = 50; o-3 $10 at Plus = 10, and the day's
    # purchases leave 100 - 40 - 50 = 10 of the cap: 10. Total 110.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert {o.order_id: o.points for o in account.orders.values()} == {
        "o-1": 40,
        "o-2": 50,
        "o-3": 10,
    }
    assert account.balance == Balances(available=110, pending=0, held=0)
    assert "order o-3" in {lot.source for lot in account.lots.values()}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_cancellation_funds_a_redemption_that_waited_past_it(open_fresh: Open) -> None:
    """A redemption that waited for points was funded by a purchase read before the
    cancellation of another redemption dated earlier; in event time the cancellation's
    points funded it first (before, it kept the purchase's points: the lots differed from
    the same events read in time order)."""
    ledger, clock = open_fresh(ARRIVAL, at("2026-01-01T00:00:00Z"))
    o1 = purchase("w-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=1000)
    x1 = redemption("w-2", "m-1", at("2026-01-02T10:00:00Z"), redemption_id="x-1", points=10)
    x2 = redemption("w-3", "m-1", at("2026-01-03T10:00:00Z"), redemption_id="x-2", points=8)
    undone = cancellation("w-4", "m-1", at("2026-01-04T10:00:00Z"), redemption_id="x-1")
    o2 = purchase("w-5", "m-1", at("2026-01-05T10:00:00Z"), order_id="o-2", total_minor=1000)
    statuses = read_as_it_comes(ledger, clock, [o1, x1, x2, o2, undone])
    assert statuses == ["applied", "applied", PARKED, "applied", "applied"]

    # By hand, in time order: 01-01 o-1 +10; 01-02 x-1 takes them; 01-03 x-2 (8) finds
    # none and waits; 01-04 x-1 cancelled: o-1 holds 10 again and x-2 takes 8 of them
    # (2 left); 01-05 o-2 +10. Balance 12: o-1 2, o-2 10.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(12, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 2, "order o-2": 10}
    assert account.redemptions["x-2"].status == "redeemed"
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_funds_a_redemption_that_had_been_cancelled_while_waiting(
    open_fresh: Open,
) -> None:
    """A late refund made a redemption wait in event time, and it was cancelled while
    waiting (it took nothing); a purchase read after that, dated between the redemption
    and its cancellation, funded it in event time: it held the purchase's points until
    its cancellation, so a refund in between took from elsewhere (before, the redemption
    stayed unfunded and the refund took back its own order's point)."""
    ledger, clock = open_fresh(ARRIVAL, at("2026-01-01T00:00:00Z"))
    o1 = purchase("v-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=100)
    o2 = purchase("v-2", "m-1", at("2026-01-02T10:00:00Z"), order_id="o-2", total_minor=14400)
    r2 = refund(
        "v-3",
        "m-1",
        at("2026-01-03T10:00:00Z"),
        order_id="o-2",
        refund_id="r-2",
        amount_minor=14400,
    )
    x1 = redemption("v-4", "m-1", at("2026-01-03T11:00:00Z"), redemption_id="x-1", points=50)
    o3 = purchase("v-5", "m-1", at("2026-01-03T12:00:00Z"), order_id="o-3", total_minor=5700)
    r1 = refund(
        "v-6", "m-1", at("2026-01-03T13:00:00Z"), order_id="o-1", refund_id="r-1", amount_minor=100
    )
    undone = cancellation("v-7", "m-1", at("2026-01-03T14:00:00Z"), redemption_id="x-1")
    # The redemption and its cancellation first, then the purchases and refunds: the
    # refund r-2 (read after x-1 took o-2's points) makes x-1 wait, cancelled while
    # waiting; o-3 then comes late.
    reads = [o1, o2, x1, undone, r2, o3, r1]
    assert read_as_it_comes(ledger, clock, reads) == ["applied"] * 7

    # By hand, in time order: o-1 +1, o-2 +144; r-2 takes back 144 (1 left); x-1 (50)
    # waits; o-3 +57 funds it at 12:00: 1 of o-1 and 49 of o-3 (8 left); r-1 takes back
    # o-1's point, which x-1 holds: 1 of o-3 instead (7 left); x-1 cancelled: o-1 holds 1
    # again, o-3 56. Balance 57.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(57, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 1, "order o-3": 56}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_release_settles_a_debt_before_a_cancellation_that_settled_it_when_read(
    open_fresh: Open,
) -> None:
    """Under the unlimited policy: a cancellation read before a purchase dated earlier
    settled the whole debt with the points it gave back; in event time the purchase's
    release came first and settled it, and the cancellation's points went back to their
    lot with nothing owed (before, the re-take could not tell what the cancellation had
    settled and kept the arrival order's lots)."""
    rules = program(
        earn={"pending_days": 2},
        expiry={"months_after_earn": 12},
        returns={"policy": "unlimited"},
    )
    ledger, clock = open_fresh(rules, at("2026-01-01T00:00:00Z"))
    o1 = purchase("u-1", "m-1", at("2026-01-01T10:00:00Z"), order_id="o-1", total_minor=25500)
    x1 = redemption("u-2", "m-1", at("2026-01-04T10:00:00Z"), redemption_id="x-1", points=127)
    r1 = refund(
        "u-3",
        "m-1",
        at("2026-01-10T10:00:00Z"),
        order_id="o-1",
        refund_id="r-1",
        amount_minor=25500,
    )
    o2 = purchase("u-4", "m-1", at("2026-02-01T10:00:00Z"), order_id="o-2", total_minor=17800)
    undone = cancellation("u-5", "m-1", at("2026-02-10T10:00:00Z"), redemption_id="x-1")
    assert read_as_it_comes(ledger, clock, [o1, x1, r1, undone, o2]) == ["applied"] * 5
    ledger.app.advance_members(["m-1"], at("2026-02-10T10:00:00Z"))  # o-2's release is due

    # By hand, in time order: 01-01 o-1 +255 pending until 01-03; 01-04 x-1 takes 127 of
    # them (128 left); 01-10 r-1 takes back 255: 128 there, 127 owed (balance -127); 02-01
    # o-2 +178 pending until 02-03, when they settle the 127 (51 left); 02-10 x-1 cancelled:
    # its 127 go back to o-1, nothing owed. Balance 178: o-1 127, o-2 51.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(178, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 127, "order o-2": 51}
    settled = {lot.source: lot.settled for lot in account.lots.values() if lot.settled}
    assert settled == {"order o-2": 127}
    assert account.redemptions["x-1"].settled == ()
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


SPEND_ROLLING = program(
    expiry={"months_after_earn": 12},
    referral={"referrer_points": 20, "referee_points": 10},
    tiers=[
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 30000},
    ],
    tier_qualification={
        "basis": "spend",
        "window": "rolling_months",
        "months": 6,
        "grace_days": 0,
        "downgrade": "to_qualified",
    },
)


def test_a_displaced_welcome_bonus_renews_no_tier(open_fresh: Open) -> None:
    """m-1's referral of m-0 (circular: m-0 referred m-1 first) is read first and pays m-0
    a welcome bonus; the tier decided again when m-0's purchase arrives renews Silver at
    the bonus's instant. Once m-0's own referral displaces it, the bonus was never given:
    Silver is held from m-0's last real earn (before, the displaced bonus kept it two
    weeks longer)."""
    ledger, clock = open_fresh(SPEND_ROLLING, at("2026-01-01T00:00:00Z"))
    bought = purchase("s-1", "m-0", at("2026-01-05T10:00:00Z"), order_id="o-1", total_minor=50000)
    first = referral("s-2", "m-0", at("2026-01-06T10:00:00Z"), referee="m-1")
    circular = referral("s-3", "m-1", at("2026-01-20T10:00:00Z"), referee="m-0")
    reads = [(circular, 1), (bought, 0), (first, 0)]
    assert read(ledger, clock, reads) == ["applied"] * 3

    # By hand, in time order: 01-05 o-1 spends $500 (>= $300): Silver, held 6 months;
    # 01-06 m-0's referral of m-1 pays m-0 20, which renews Silver until 07-06; 01-20
    # m-1's referral of m-0 is circular and pays nothing. The review of 07-06 finds no
    # spend in the 6 months before: Base on 07-10. m-0 holds 500 + 20 points.
    ledger.app.advance_members(["m-0", "m-1"], at("2026-07-10T00:00:00Z"))
    account = ledger.app.find_account("m-0")
    assert account is not None
    assert account.balance == Balances(520, 0, 0)
    assert account.tier == "base"
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_purchase_the_cap_left_with_nothing_earns_as_released_once_its_window_passed(
    open_fresh: Open,
) -> None:
    """As above, with a 2-day return window, and a review dated after it passed read
    before the signup: o-3's lot, made when the late upgrade frees room, is available at
    once and says it was released when its window closed, as in time order (before, it
    had no release time: the lots differed from the same events read in time order)."""
    rules = program(
        earn={"caps": {"per_member_per_day": 100}, "pending_days": 2},
        activities={"signup": {"points": 10, "limit": "once"}, "review": {"points": 5}},
        tiers=[
            {"id": "base", "name": "Base", "threshold": 0, "earn_multiplier": "2"},
            {"id": "plus", "name": "Plus", "threshold": 50, "earn_multiplier": "1"},
        ],
        tier_qualification={"basis": "points", "window": "calendar_year"},
    )
    ledger, clock = open_fresh(rules, READ_AT)
    joined = enrolment("f-1", "m-1", at("2026-04-19T00:30:00Z"))
    one = purchase("f-2", "m-1", at("2026-04-19T01:00:00Z"), order_id="o-1", total_minor=2000)
    two = purchase("f-3", "m-1", at("2026-04-19T02:00:00Z"), order_id="o-2", total_minor=5000)
    three = purchase("f-4", "m-1", at("2026-04-19T03:00:00Z"), order_id="o-3", total_minor=1000)
    four = purchase("f-5", "m-1", at("2026-04-22T01:00:00Z"), order_id="o-4", total_minor=1000)
    review = activity("f-6", "m-1", at("2026-04-25T10:00:00Z"), name="review", reference="v")
    reads = [(one, 0), (two, 0), (three, 0), (four, 0), (review, 0), (joined, 1)]
    assert read(ledger, clock, reads) == ["applied"] * 6

    # By hand, in time order: signup 10; o-1 40 (Base x2), o-2 50 and o-3 10 at Plus (the
    # day's cap leaves 10), each pending 2 days (o-3's until 04-21 03:00); o-4 10 on 04-22,
    # released 04-24; review 5 on 04-25. Read in this order, o-4's release on 04-24 was
    # done before the signup arrived and gave o-3 its points.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(available=125, pending=0, held=0)
    lot = next(lot for lot in account.lots.values() if lot.source == "order o-3")
    assert (lot.amount, lot.status) == (10, "available")
    assert lot.release_at == at("2026-04-21T03:00:00Z")
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_funds_first_a_cancelled_redemption_that_waited_past_it(
    open_fresh: Open,
) -> None:
    """Two redemptions wait for points; a purchase dated after them both is read first and
    funds them, the first is cancelled, and then a purchase dated before that one
    arrives. In event time it funded the first redemption (which held its points until
    its cancellation) before the second (before, the cancelled one kept the later
    purchase's points as if held all along)."""
    ledger, clock = open_fresh(ARRIVAL, at("2026-01-01T00:00:00Z"))
    x1 = redemption("c-1", "m-1", at("2026-01-01T10:00:00Z"), redemption_id="x-1", points=2)
    x2 = redemption("c-2", "m-1", at("2026-01-01T11:00:00Z"), redemption_id="x-2", points=6)
    o1 = purchase("c-3", "m-1", at("2026-01-01T12:00:00Z"), order_id="o-1", total_minor=500)
    o2 = purchase("c-4", "m-1", at("2026-01-02T10:00:00Z"), order_id="o-2", total_minor=1000)
    undone = cancellation("c-5", "m-1", at("2026-01-02T12:00:00Z"), redemption_id="x-1")
    assert read_as_it_comes(ledger, clock, [o2, x1, x2, undone, o1]) == ["applied"] * 5

    # By hand, in time order: x-1 (2) and x-2 (6) wait; 01-01 12:00 o-1 +5: x-1 takes 2 of
    # them (3 left), x-2 still waits; 01-02 10:00 o-2 +10: x-2 takes o-1's 3 (it expires
    # first) and 3 of o-2 (7 left); 01-02 12:00 x-1 cancelled: its 2 back to o-1.
    # Balance 9: o-1 2, o-2 7.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(9, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 2, "order o-2": 7}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_redemption_waiting_first_is_funded_first_though_cancelled_since(
    open_fresh: Open,
) -> None:
    """Two redemptions wait for points; both, and the cancellation of the first, are read
    before the purchases. The first is funded by the second purchase and cancelled later;
    in event time it was funded before the second redemption (oldest first), which waited
    for the third purchase (before, the second took the first's place and the first took
    what the third purchase brought)."""
    ledger, clock = open_fresh(ARRIVAL, at("2026-01-01T00:00:00Z"))
    o1 = purchase("w-1", "m-1", at("2026-01-01T09:00:00Z"), order_id="o-1", total_minor=500)
    x1 = redemption("w-2", "m-1", at("2026-01-01T10:00:00Z"), redemption_id="x-1", points=8)
    x2 = redemption("w-3", "m-1", at("2026-01-01T11:00:00Z"), redemption_id="x-2", points=8)
    o2 = purchase("w-4", "m-1", at("2026-01-01T12:00:00Z"), order_id="o-2", total_minor=500)
    o3 = purchase("w-5", "m-1", at("2026-01-01T13:00:00Z"), order_id="o-3", total_minor=2000)
    undone = cancellation("w-6", "m-1", at("2026-01-01T14:00:00Z"), redemption_id="x-1")
    statuses = read_as_it_comes(ledger, clock, [x1, x2, undone, o1, o2, o3])
    assert statuses == [PARKED, PARKED, PARKED, "applied", "applied", "applied"]

    # By hand, in time order: 09:00 o-1 +5; x-1 (8) and x-2 (8) wait; 12:00 o-2 +5: x-1
    # takes o-1's 5 and 3 of o-2 (2 left), x-2 still waits; 13:00 o-3 +20: x-2 takes o-2's 2
    # and 6 of o-3 (14 left); 14:00 x-1 cancelled: 5 back to o-1, 3 to o-2. Balance 22.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(22, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 5, "order o-2": 3, "order o-3": 14}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_cancellation_holds_its_points_until_its_time_for_those_that_waited(
    open_fresh: Open,
) -> None:
    """The purchases are read first, then three redemptions and the cancellation of the
    first. In event time the first (dated first) held its points from when it was funded
    until its cancellation, so the second waited for that cancellation (before, the
    re-take gave the cancelled one's points back from the start, and the second and
    third took other points)."""
    ledger, clock = open_fresh(ARRIVAL, at("2026-01-01T00:00:00Z"))
    x1 = redemption("h-1", "m-1", at("2026-01-01T10:00:00Z"), redemption_id="x-1", points=12)
    o1 = purchase("h-2", "m-1", at("2026-01-01T11:00:00Z"), order_id="o-1", total_minor=1000)
    x2 = redemption("h-3", "m-1", at("2026-01-01T12:00:00Z"), redemption_id="x-2", points=6)
    o2 = purchase("h-4", "m-1", at("2026-01-01T13:00:00Z"), order_id="o-2", total_minor=500)
    x3 = redemption("h-5", "m-1", at("2026-01-01T14:00:00Z"), redemption_id="x-3", points=1)
    undone = cancellation("h-6", "m-1", at("2026-01-01T15:00:00Z"), redemption_id="x-1")
    o3 = purchase("h-7", "m-1", at("2026-01-01T16:00:00Z"), order_id="o-3", total_minor=500)
    statuses = read_as_it_comes(ledger, clock, [o2, o3, o1, x1, x2, x3, undone])
    assert statuses == ["applied"] * 7

    # By hand, in time order: x-1 (12) waits; 11:00 o-1 +10; 12:00 x-2 takes 6 of them;
    # 13:00 o-2 +5: x-1, dated first, is funded with o-1's 10 and 2 of o-2, and x-2 waits
    # again (3 left); 14:00 x-3 takes 1 of o-2 (2 left); 15:00 x-1 cancelled: o-1 holds
    # 10 again, o-2 4, and x-2 takes 6 of o-1 (4 left); 16:00 o-3 +5. Balance 13.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(13, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-1": 4, "order o-2": 4, "order o-3": 5}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_displaced_bonus_a_cancelled_redemption_held_is_taken_out_of_the_refund_after(
    open_fresh: Open,
) -> None:
    """m-a's referral of m-b, read first, pays m-a 20; m-b's earlier referral of m-a, read
    last, makes it circular: the 20 were never given. A redemption took them and was
    cancelled since (the bonus's lot is whole again), but a refund between the two took
    what was left with them counted: it takes again without them (before, the bonus's
    lot, being whole, was simply emptied, and the refund kept its larger take)."""
    ledger, clock = open_fresh(ARRIVAL, at("2026-01-01T00:00:00Z"))
    first = (referral("q-1", "m-b", at("2026-01-01T09:00:00Z"), referee="m-a"), 1)
    circular = (referral("q-2", "m-a", at("2026-01-01T10:00:00Z"), referee="m-b"), 0)
    bought = (
        purchase("q-3", "m-a", at("2026-01-02T10:00:00Z"), order_id="o-1", total_minor=10000),
        0,
    )
    spent = (
        redemption("q-4", "m-a", at("2026-01-03T10:00:00Z"), redemption_id="x-1", points=105),
        0,
    )
    returned = (
        refund(
            "q-5",
            "m-a",
            at("2026-01-04T10:00:00Z"),
            order_id="o-1",
            refund_id="r-1",
            amount_minor=5000,
        ),
        0,
    )
    undone = (cancellation("q-6", "m-a", at("2026-01-05T10:00:00Z"), redemption_id="x-1"), 0)
    reads = [circular, bought, returned, spent, undone, first]
    assert read(ledger, clock, reads) == ["applied"] * 6

    # By hand, in time order: 01-01 m-b's referral pays m-a 10 (m-a's of m-b is circular:
    # nothing); 01-02 o-1 +100; 01-03 x-1 takes 105 (5 left); 01-04 r-1 takes back 50
    # within the balance: 5, 45 kept by the member; 01-05 x-1 cancelled: 105 back.
    # Balance 10 + 100 - 5 = 105.
    account = ledger.app.find_account("m-a")
    assert account is not None
    assert account.balance == Balances(105, 0, 0)
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_redemptions_waiting_at_once_take_in_their_own_order_whatever_the_reads(
    open_fresh: Open,
) -> None:
    """Five redemptions wait at once; a smaller later one is funded before an older one,
    which is then decided by its own time; one is cancelled. Read with the purchases
    scattered, a late redemption had the one cancelled since decided as if a younger one
    held its points from the start (before, the lots differed from time order)."""
    ledger, clock = open_fresh(ARRIVAL, at("2026-01-01T00:00:00Z"))
    x1 = redemption("t-1", "m-1", at("2026-01-01T10:00:00Z"), redemption_id="x-1", points=10)
    x2 = redemption("t-2", "m-1", at("2026-01-01T11:00:00Z"), redemption_id="x-2", points=6)
    o1 = purchase("t-3", "m-1", at("2026-01-01T12:00:00Z"), order_id="o-1", total_minor=1000)
    x3 = redemption("t-4", "m-1", at("2026-01-01T13:00:00Z"), redemption_id="x-3", points=4)
    o2 = purchase("t-5", "m-1", at("2026-01-01T14:00:00Z"), order_id="o-2", total_minor=500)
    x4 = redemption("t-6", "m-1", at("2026-01-02T10:00:00Z"), redemption_id="x-4", points=1)
    x5 = redemption("t-7", "m-1", at("2026-01-02T11:00:00Z"), redemption_id="x-5", points=1)
    o3 = purchase("t-8", "m-1", at("2026-01-02T12:00:00Z"), order_id="o-3", total_minor=500)
    o4 = purchase("t-9", "m-1", at("2026-01-02T14:00:00Z"), order_id="o-4", total_minor=2000)
    undone = cancellation("t-10", "m-1", at("2026-01-03T10:00:00Z"), redemption_id="x-3")
    reads = [o2, o3, x1, x2, x3, x4, x5, undone, o1, o4]
    assert read_as_it_comes(ledger, clock, reads)[-1] == "applied"

    # By hand, in time order: x-1 (10) and x-2 (6) wait; 01-01 12:00 o-1 +10 funds x-1;
    # x-3 (4) waits; 14:00 o-2 +5: x-2 still waits, x-3 takes 4 of o-2 (1 left); 01-02
    # 10:00 x-4 takes o-2's last point; x-5 waits; 12:00 o-3 +5: x-2, dated first, is
    # funded by o-2's 5 and 1 of o-3, so x-3 takes 4 of o-3 and x-4 waits again; 14:00
    # o-4 +20 funds x-4 and x-5 (18 left); 01-03 x-3 cancelled: 4 back to o-3.
    # Balance 22: o-3 4, o-4 18.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(22, 0, 0)
    held = {lot.source: lot.remaining for lot in account.lots.values() if lot.remaining}
    assert held == {"order o-3": 4, "order o-4": 18}
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations


def test_a_late_earn_that_upgrades_lets_the_earns_recorded_after_it_upgrade_further(
    open_fresh: Open,
) -> None:
    """A signup bonus is read before the purchase dated before it: the late purchase
    reaches Silver at its instant, and with the bonus recorded after it the window reaches
    Gold at the bonus's instant (before, the walk stopped at the first upgrade: Silver)."""
    rules = program(
        expiry={"months_after_earn": 6},
        activities={"signup": {"points": 10, "limit": "once"}},
        tiers=[
            {"id": "base", "name": "Base", "threshold": 0},
            {"id": "silver", "name": "Silver", "threshold": 50},
            {"id": "gold", "name": "Gold", "threshold": 85},
        ],
        tier_qualification={"basis": "points", "window": "calendar_year"},
    )
    ledger, clock = open_fresh(rules, at("2026-03-01T00:00:00Z"))
    bought = purchase("g-1", "m-1", at("2026-03-01T09:00:00Z"), order_id="o-1", total_minor=8000)
    signup = activity("g-2", "m-1", at("2026-03-01T09:30:00Z"), name="signup")
    assert read_as_it_comes(ledger, clock, [signup, bought]) == ["applied"] * 2

    # By hand, in time order: 09:00 o-1 earns 80 (Base): Silver (80 >= 50); 09:30 the
    # signup earns 10: 90 in the window, Gold (>= 85). Balance 90.
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance == Balances(90, 0, 0)
    assert account.tier == "gold"
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    assert report.ok, report.violations
