"""One history, one ledger: the ledger is a function of the inbound events and their event
times, never of how they were batched, of the wall clock at ingest, or of the order in
which records of different Kafka topics (and partitions) were read.

A random history over a few members and several months, with every inbound type, is fed to
a fresh SQLite ledger in several ways:

(a) in one batch; (b) one event per batch; (c) in random batch sizes; (d) one event per
batch with the wall clock at a random instant at or after the event (never going back);
(e) as Kafka records, the history split by topic and partition (keyed by member, so one
member's events on one topic keep their order) and merged in a random interleaving.

Then every member is advanced to the last event's time and read, and again at one instant
well after it, when releases, expiries and tier reviews have settled. Each way is compared
with (b), one event per batch read as it happened (so a failure names the one thing that
differs): the same balances, lots (by content, not lot id) and tiers at both instants, and
in (a), (c) and (d) the same entries (in (e), a member whom only a referral that an earlier
one read later displaced had enrolled is no member, as in (b)). The ledger's
own `verify` finds nothing wrong in any of them, and every member holds a tier of the
program (decided by the ledger itself).

Events are built from drawn plain data by `build_history`, so Hypothesis shrinks a failure
to a short history.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from tests.support.histories import (
    EntryContent,
    Event,
    MemberState,
    activity,
    apply_at,
    apply_from_kafka,
    cancellation,
    enrolment,
    entry_contents,
    entry_differences,
    feed_file,
    file_item,
    history_text,
    ledger_state,
    open_ledger,
    purchase,
    redemption,
    referral,
    refund,
    state_differences,
)

START = datetime(2026, 8, 3, 9, 0, tzinfo=UTC)
SETTLE = timedelta(days=400)  # after the last event: reviews and expiries are all due

# LOYALTY_DETERMINISM_EXAMPLES raises the search for a deeper run (e.g. 300 before a release).
SETTINGS = settings(
    max_examples=int(os.environ.get("LOYALTY_DETERMINISM_EXAMPLES", "40")),
    deadline=None,
    report_multiple_bugs=False,  # shrink one failure, not each kind found
    # No explain phase: it re-runs a failing history many times over to say which lines
    # only failing runs reach, and costs more than the shrinking itself.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------ program


@dataclass(frozen=True, slots=True)
class Rules:
    """The drawn parts of the program."""

    pending_days: int
    expiry_months: int
    expiry_round: Literal["none", "end_of_month"]
    timezone: str
    tiers: bool
    basis: Literal["points", "spend"]
    window: Literal["calendar_year", "rolling_months"]
    months: int
    grace_days: int
    downgrade: Literal["to_qualified", "one_level"]
    entry_multiplier: str
    daily_cap: int | None = None
    double_weekday: str | None = None
    returns: Literal["within_balance", "unlimited"] = "within_balance"


def build_program(rules: Rules) -> Program:
    scale = 100 if rules.basis == "spend" else 1  # spend thresholds are in cents
    document: dict[str, Any] = {
        "id": "determinism",
        "name": "Determinism",
        "timezone": rules.timezone,
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
        "earn": {
            "rounding": "floor",
            "pending_days": rules.pending_days,
            "caps": {"per_member_per_day": rules.daily_cap},
            "promotions": [{"id": "double", "multiplier": "2", "weekdays": [rules.double_weekday]}]
            if rules.double_weekday
            else [],
        },
        "activities": {
            "signup": {"points": 10, "limit": "once"},
            "review": {"points": 5, "limit": "per_day"},
            "birthday": {"points": 25, "limit": "per_year"},
        },
        "referral": {"referrer_points": 20, "referee_points": 10},
        "expiry": {"months_after_earn": rules.expiry_months, "round_to": rules.expiry_round},
        "rewards": {
            "small": {"name": "Small", "points": 50},
            "big": {"name": "Big", "points": 250},
        },
        "returns": {"policy": rules.returns},
    }
    if rules.tiers:
        document["tiers"] = [
            {
                "id": "base",
                "name": "Base",
                "threshold": 0,
                "earn_multiplier": rules.entry_multiplier,
            },
            {"id": "silver", "name": "Silver", "threshold": 300 * scale, "earn_multiplier": "1.25"},
            {"id": "gold", "name": "Gold", "threshold": 900 * scale, "earn_multiplier": "1.5"},
        ]
        document["tier_qualification"] = {
            "basis": rules.basis,
            "window": rules.window,
            "months": rules.months,
            "grace_days": rules.grace_days,
            "downgrade": rules.downgrade,
        }
    return Program.model_validate(document)


def rules_strategy(
    *, tiers: bool, windows: Sequence[str] = ("calendar_year", "rolling_months")
) -> st.SearchStrategy[Rules]:
    return st.builds(
        Rules,
        pending_days=st.sampled_from([0, 2, 5]),
        expiry_months=st.integers(2, 6),
        expiry_round=st.sampled_from(["none", "end_of_month"]),
        timezone=st.sampled_from(["UTC", "America/New_York"]),
        tiers=st.just(tiers),
        basis=st.sampled_from(["points", "spend"]),
        window=st.sampled_from(list(windows)),
        months=st.integers(3, 6),
        grace_days=st.sampled_from([0, 30]),
        downgrade=st.sampled_from(["to_qualified", "one_level"]),
        entry_multiplier=st.sampled_from(["1", "2"]),
        daily_cap=st.sampled_from([None, None, 30, 120]),
        double_weekday=st.sampled_from([None, "monday", "tuesday"]),
        # 1 in 4 under the unlimited policy: a refund may leave the balance below zero.
        returns=st.sampled_from(["within_balance"] * 3 + ["unlimited"]),
    )


# ------------------------------------------------------------------------------ history

KINDS = (
    "purchase",
    "purchase",
    "purchase",
    "purchase",
    "refund_full",
    "refund_amount",
    "refund_lines",
    "referral",
    "redeem_points",
    "redeem_points",
    "redeem_reward",
    "cancel",
    "review",
    "birthday",
    "signup",
    "enrol",
)


@dataclass(frozen=True, slots=True)
class Step:
    """One drawn event, before it is tied to the orders and redemptions drawn before it."""

    kind: str
    member: int
    other: int
    amount: int
    pick: int
    gap_minutes: int


def steps_of(kinds: Sequence[str], max_gap: int = 14 * 24 * 60) -> st.SearchStrategy[Step]:
    return st.builds(
        Step,
        kind=st.sampled_from(kinds),
        member=st.integers(0, 4),
        other=st.integers(0, 4),
        amount=st.integers(1, 300),
        pick=st.integers(0, 9),
        gap_minutes=st.integers(1, max_gap),
    )


STEPS = steps_of(KINDS)
# Spends weigh more in the short, dense histories of the spends property.
SPEND_HEAVY = (*KINDS, "redeem_points", "redeem_points", "cancel")


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    total_minor: int
    has_lines: bool


def build_history(members: int, steps: Sequence[Step]) -> list[Event]:
    """Events at strictly increasing instants, one per step (a refund or cancellation with
    nothing to refer to yet becomes a purchase or a redemption)."""
    history: list[Event] = []
    orders: dict[str, list[Order]] = {}
    refunded: dict[str, int] = {}
    redemptions: dict[str, list[str]] = {}
    at = START
    for i, s in enumerate(steps):
        at += timedelta(minutes=s.gap_minutes)
        member = f"m-{s.member % members}"
        eid = f"e{i:03d}"
        kind = s.kind
        mine = orders.setdefault(member, [])
        if kind.startswith("refund") and not mine:
            kind = "purchase"
        if kind == "cancel" and not redemptions.get(member):
            kind = "redeem_points"
        if kind == "purchase":
            total = s.amount * 100 + (s.pick * 37) % 100
            lines: list[tuple[str, int, int]] = []
            if s.pick % 2:
                qty = s.pick % 3 + 1
                unit = total // 2 // qty
                lines = [("a", qty, unit), ("b", 1, total - qty * unit)]
            order = Order(f"o{i}", total, bool(lines))
            mine.append(order)
            history.append(
                purchase(eid, member, at, order_id=order.order_id, total_minor=total, lines=lines)
            )
        elif kind.startswith("refund"):
            order = mine[s.pick % len(mine)]
            done = refunded.get(order.order_id, 0)
            if kind == "refund_lines" and order.has_lines:
                history.append(
                    refund(
                        eid,
                        member,
                        at,
                        order_id=order.order_id,
                        refund_id=f"r{i}",
                        lines=[("a", 1)],
                    )
                )
                continue
            if kind == "refund_full" and done < order.total_minor:
                amount = order.total_minor - done
            else:  # a part; may exceed what is left, which is declined
                amount = max(1, order.total_minor * (s.pick + 1) // 10)
            refunded[order.order_id] = done + amount
            history.append(
                refund(
                    eid, member, at, order_id=order.order_id, refund_id=f"r{i}", amount_minor=amount
                )
            )
        elif kind == "redeem_points":
            redemptions.setdefault(member, []).append(f"x{i}")
            history.append(redemption(eid, member, at, redemption_id=f"x{i}", points=10 + s.amount))
        elif kind == "redeem_reward":
            redemptions.setdefault(member, []).append(f"x{i}")
            reward = "big" if s.pick % 3 == 0 else "small"
            history.append(redemption(eid, member, at, redemption_id=f"x{i}", reward_id=reward))
        elif kind == "cancel":
            chosen = redemptions[member]
            history.append(
                cancellation(eid, member, at, redemption_id=chosen[s.pick % len(chosen)])
            )
        elif kind == "review":
            reference = f"rv{s.pick}" if s.pick % 2 else None
            history.append(activity(eid, member, at, name="review", reference=reference))
        elif kind in {"birthday", "signup"}:
            history.append(activity(eid, member, at, name=kind))
        elif kind == "enrol":
            history.append(enrolment(eid, member, at))
        else:
            assert kind == "referral"
            other = s.other % members
            if other == s.member % members:
                other = (other + 1) % members
            history.append(referral(eid, member, at, referee=f"m-{other}"))
    return history


@dataclass(frozen=True, slots=True, repr=False)
class Case:
    rules: Rules
    members: int
    history: list[Event]

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return (
            f"Case({self.rules!r}, members={self.members}, history=\n{history_text(self.history)})"
        )

    @property
    def member_ids(self) -> list[str]:
        return [f"m-{i}" for i in range(self.members)]

    @property
    def end(self) -> datetime:
        return self.history[-1].occurred_at + SETTLE


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    tiers: bool = True,
    kinds: Sequence[str] = KINDS,
    windows: Sequence[str] = ("calendar_year", "rolling_months"),
    max_gap: int = 14 * 24 * 60,
    size: tuple[int, int] = (20, 60),
    members: tuple[int, int] = (3, 5),
) -> Case:
    rules = draw(rules_strategy(tiers=tiers, windows=windows), label="rules")
    count = draw(st.integers(*members), label="members")
    steps = draw(
        st.lists(steps_of(kinds, max_gap), min_size=size[0], max_size=size[1]), label="steps"
    )
    return Case(rules, count, build_history(count, steps))


# ------------------------------------------------------------------------------ running


Feed = Callable[[Ledger, FixedClock], object]


@dataclass(frozen=True, slots=True)
class Result:
    at_last: dict[str, MemberState | None]  # every member advanced to the last event
    settled: dict[str, MemberState | None]  # and then to `Case.end`
    entries: dict[str, list[EntryContent]]


def run(case: Case, feed: Feed, *, holding_only: bool = False) -> Result:
    """Feed the history to a fresh ledger, then advance every member to the last event's
    time and read the ledger (recent lots still hold points then), then to `Case.end` (by
    when everything has expired: what remains to compare is how it got there)."""
    directory = Path(tempfile.mkdtemp(prefix="determinism-"))
    clock = FixedClock(START)
    ledger = open_ledger(directory, build_program(case.rules), clock)
    try:
        feed(ledger, clock)
        last = case.history[-1].occurred_at
        ledger.app.advance_members(case.member_ids, last)
        at_last = ledger_state(ledger, case.member_ids, holding_points_only=holding_only)
        clock.set(case.end)
        ledger.app.advance_members(case.member_ids, case.end)
        settled = ledger_state(ledger, case.member_ids, holding_points_only=holding_only)
        ledger.projection.run()
        report = verify(ledger.app, ledger.view)
        assert report.ok, report.violations
        entries = {member: entry_contents(ledger, member) for member in case.member_ids}
        return Result(at_last, settled, entries)
    finally:
        ledger.close()
        shutil.rmtree(directory, ignore_errors=True)


def assert_same_state(want: Result, got: Result, variant: str) -> None:
    assert got.at_last == want.at_last, (
        f"{variant}, at the last event:\n{state_differences(want.at_last, got.at_last)}"
    )
    assert got.settled == want.settled, (
        f"{variant}, settled:\n{state_differences(want.settled, got.settled)}"
    )


def assert_same_entries(want: Result, got: Result, variant: str) -> None:
    assert got.entries == want.entries, (
        f"{variant}:\n{entry_differences(want.entries, got.entries)}"
    )


def in_batches(history: Sequence[Event], sizes: Sequence[int]) -> list[list[Event]]:
    batches: list[list[Event]] = []
    start, i = 0, 0
    while start < len(history):
        size = sizes[i % len(sizes)] if sizes else 1
        batches.append(list(history[start : start + size]))
        start += size
        i += 1
    return batches


def one_batch(case: Case) -> Feed:
    return lambda ledger, clock: feed_file(ledger, clock, [case.history])


def batched(case: Case, sizes: Sequence[int]) -> Feed:
    return lambda ledger, clock: feed_file(ledger, clock, in_batches(case.history, sizes))


def late_clock(case: Case, lateness: Sequence[int]) -> Feed:
    """One event per batch, the i-th read `lateness[i]` minutes (0 past the list) after it
    happened, never before the previous read: the wall clock at ingest is anything at or
    after the event."""

    def feed(ledger: Ledger, clock: FixedClock) -> None:
        wall = START
        for i, event in enumerate(case.history):
            late = lateness[i] if i < len(lateness) else 0
            wall = max(wall, event.occurred_at + timedelta(minutes=late))
            apply_at(ledger, clock, wall, [file_item(event, i + 1)])

    return feed


def interleaved(case: Case, partitions: int, choices: Sequence[int]) -> Feed:
    """The history as Kafka records: one queue per topic and partition (members are keyed
    to partitions), each queue in history order, merged by `choices`; one record per batch,
    the wall clock at the latest event read so far. Past the end of `choices`, the first
    queue with records left is read."""
    queues: dict[tuple[str, int], list[Event]] = {}
    for event in case.history:
        partition = int(event.member_id.removeprefix("m-")) % partitions
        queues.setdefault((event.topic, partition), []).append(event)
    order: list[tuple[Event, int, int]] = []  # event, partition, offset
    offsets = dict.fromkeys(queues, 0)
    for i in range(len(case.history)):
        choice = choices[i] if i < len(choices) else 0
        open_queues = [key for key in sorted(queues) if queues[key]]
        key = open_queues[choice % len(open_queues)]
        order.append((queues[key].pop(0), key[1], offsets[key]))
        offsets[key] += 1
    assert not any(queues.values())

    def feed(ledger: Ledger, clock: FixedClock) -> None:
        wall = START
        for event, partition, offset in order:
            wall = max(wall, event.occurred_at)
            apply_from_kafka(ledger, clock, wall, event, partition, offset)

    return feed


# -------------------------------------------------------------------------------- tests


def check_batching(case: Case, sizes: list[int]) -> None:
    """(a) one batch and (c) batches of `sizes` give the ledger of (b), one event per
    batch, entry for entry."""
    note(repr(case))  # the failing history, printed by Hypothesis
    note(f"batch sizes {sizes}")
    b = run(case, batched(case, [1]))
    a = run(case, one_batch(case))
    c = run(case, batched(case, sizes))
    assert_same_state(b, a, "(a)")
    assert_same_state(b, c, "(c)")
    assert_same_entries(b, a, "(a)")
    assert_same_entries(b, c, "(c)")


BATCH_SIZES = st.lists(st.integers(1, 8), min_size=1, max_size=8)  # used in turn


@SETTINGS
@given(case=cases(), sizes=BATCH_SIZES)
def test_batching_does_not_change_the_ledger(case: Case, sizes: list[int]) -> None:
    """(a) one batch, (b) one event per batch, (c) random batch sizes: the same ledger,
    entry for entry."""
    check_batching(case, sizes)


@SETTINGS
@given(case=cases())
def test_tiers_are_decided_by_the_ledger(case: Case) -> None:
    """Every member holds a tier of the program (at least the entry tier, from the first
    entry on) without any tier.changed input: the ledger decides tiers inline."""
    note(repr(case))  # the failing history, printed by Hypothesis
    b = run(case, batched(case, [1]))
    tiers = {tier.id for tier in build_program(case.rules).tiers}
    for state in (b.at_last, b.settled):
        for member, held in state.items():
            assert held is None or held.tier in tiers, f"{member} holds tier {held.tier}"


@SETTINGS
@given(case=cases(), lateness=st.lists(st.integers(0, 200 * 24 * 60), max_size=60))
def test_the_wall_clock_at_ingest_does_not_change_the_ledger(
    case: Case, lateness: list[int]
) -> None:
    """(d) one event per batch read at any instant at or after it happened gives the
    ledger of (b), one event per batch read as it happened, entry for entry (and so of (a)
    and (c), which the batching test compares with (b))."""
    note(repr(case))  # the failing history, printed by Hypothesis
    note(f"lateness (minutes) {lateness}")
    b = run(case, batched(case, [1]))
    d = run(case, late_clock(case, lateness))
    assert_same_state(b, d, "(d)")
    assert_same_entries(b, d, "(d)")


def check_arrival_order(case: Case, partitions: int, choices: list[int]) -> None:
    note(repr(case))  # the failing history, printed by Hypothesis
    note(f"partitions per topic {partitions}, interleaving {choices}")
    b = run(case, batched(case, [1]), holding_only=True)
    e = run(case, interleaved(case, partitions, choices), holding_only=True)
    assert_same_state(b, e, "(e)")


PARTITIONS = st.integers(1, 2)
INTERLEAVINGS = st.lists(st.integers(0, 7), max_size=60)


@SETTINGS
@given(case=cases(max_gap=21 * 24 * 60), partitions=PARTITIONS, choices=INTERLEAVINGS)
def test_the_arrival_order_across_topics_does_not_change_the_ledger(
    case: Case, partitions: int, choices: list[int]
) -> None:
    """(e) Kafka records of different topics and partitions read in any interleaving, one
    per batch, give the balances, the lots that hold points, and the tiers of (b), the same
    records one per batch in history order. The entries may differ: a late purchase tops
    up or reallocates, a late refund takes back what its order earned, a late referral
    takes back the bonuses of one it displaces, a period-end tier review recorded before an
    earlier-dated earn or refund arrived is decided again (cause `reviewed`), a late
    redemption, refund or cancellation has the spends dated after it take again. Every
    inbound kind; histories span up to 60 events 21 days apart at most, so calendar-year
    and rolling-window reviews fall inside them."""
    check_arrival_order(case, partitions, choices)


@SETTINGS
@given(
    case=cases(
        kinds=SPEND_HEAVY,
        windows=["calendar_year"],
        max_gap=4 * 24 * 60,
        size=(4, 14),
        members=(2, 3),
    ),
    partitions=PARTITIONS,
    choices=INTERLEAVINGS,
)
def test_the_arrival_order_of_spends_does_not_change_the_ledger(
    case: Case, partitions: int, choices: list[int]
) -> None:
    """(e) with redemptions and cancellations dense on short histories of two or three
    members (a few days apart, so spends wait for and race each other):
    a late redemption, refund or cancellation has the spends dated after it take again; a
    redemption that in event time was never funded is withdrawn and waits again."""
    check_arrival_order(case, partitions, choices)


@SETTINGS
@given(case=cases(tiers=False), sizes=BATCH_SIZES)
def test_without_tiers_batching_does_not_matter_when_the_clock_follows_the_events(
    case: Case, sizes: list[int]
) -> None:
    """The control: no tiers, the wall clock at each batch's last event. (a), (b) and (c)
    must agree already before event-time application, or batching is a bug of its own."""
    check_batching(case, sizes)


# ------------------------------------------- histories shaped like the two-store test's


def waiting_history(rng: Any, members: int, per_member: int) -> list[Event]:
    """A history shaped like tests/integration/test_two_stores.py's, over 12 days from
    START: purchases, reviews, enrolments, referrals (one referrer per referee, members
    referring each other too), refunds (a third of the members), redemptions that often
    ask more than the member has then (they wait for later earns or a cancellation), and
    cancellations of them."""
    ids = [f"m-{i}" for i in range(members)]
    found: list[Event] = []
    referred: set[str] = set()
    n = 0
    for i, member in enumerate(ids):
        minutes = 0
        orders: list[tuple[str, int]] = []
        earned: list[tuple[int, int]] = []  # (minute, points at least)
        spent = 0
        redeemed: list[str] = []
        if i % 4 == 0:
            n += 1
            found.append(enrolment(f"e{n:03d}", member, START))
        for _ in range(per_member):
            minutes += rng.randrange(15, 216)
            at = START + timedelta(minutes=minutes)
            n += 1
            eid = f"e{n:03d}"
            roll = rng.random()
            if roll < 0.55 or not orders:
                total = rng.randrange(100, 2500)
                orders.append((f"o{n}", total))
                earned.append((minutes, total // 100))
                found.append(purchase(eid, member, at, order_id=f"o{n}", total_minor=total))
            elif roll < 0.7:
                found.append(activity(eid, member, at, name="review", reference=f"rv{n}"))
            elif roll < 0.78:
                referee = ids[rng.randrange(members)]
                if referee != member and referee not in referred:
                    referred.add(referee)
                    found.append(referral(eid, member, at, referee=referee))
            elif roll < 0.84 and redeemed and rng.random() < 0.5:
                taken = redeemed.pop(rng.randrange(len(redeemed)))
                found.append(cancellation(eid, member, at, redemption_id=taken))
            elif i % 3 == 0 and roll < 0.84:
                order, total = orders[rng.randrange(len(orders))]
                found.append(
                    refund(
                        eid,
                        member,
                        at,
                        order_id=order,
                        refund_id=f"r{n}",
                        amount_minor=max(1, total // 3),
                    )
                )
            else:
                funded = sum(p for m, p in earned if minutes - m >= 2 * 24 * 60) - spent
                points = min(40, max(1, funded // 2 + rng.randrange(-5, 15)))
                spent += points
                redeemed.append(f"x{n}")
                found.append(redemption(eid, member, at, redemption_id=f"x{n}", points=points))
    return sorted(found, key=lambda e: (e.occurred_at, e.event_id))


@st.composite
def waiting_cases(draw: st.DrawFn) -> tuple[Case, int, list[int]]:
    """A two-store-shaped history, partitions per topic, and an interleaving that reads
    each queue in bursts (as a Kafka fetch returns a run of one partition's records)."""
    rng = draw(st.randoms(use_true_random=False), label="rng")
    members = draw(st.integers(3, 6), label="members")
    per_member = draw(st.integers(8, 20), label="per member")
    rules = Rules(
        pending_days=draw(st.sampled_from([0, 2]), label="pending days"),
        expiry_months=6,
        expiry_round="end_of_month",
        timezone="UTC",
        tiers=True,
        basis="points",
        window="calendar_year",
        months=12,
        grace_days=30,
        downgrade="one_level",
        entry_multiplier="1",
        returns=draw(st.sampled_from(["within_balance", "unlimited"]), label="returns"),
    )
    bursts = draw(st.lists(st.tuples(st.integers(0, 11), st.integers(1, 40)), max_size=12))
    choices = [queue for queue, run in bursts for _ in range(run)]
    partitions = draw(st.integers(1, 3), label="partitions")
    return Case(rules, members, waiting_history(rng, members, per_member)), partitions, choices


@settings(SETTINGS, max_examples=max(5, SETTINGS.max_examples // 4))
@given(drawn=waiting_cases())
def test_the_arrival_order_of_waiting_redemptions_does_not_change_the_ledger(
    drawn: tuple[Case, int, list[int]],
) -> None:
    """(e) on histories shaped like the two-store test's (redemptions waiting for points,
    funded by later earns or cancellations, cancelled while waiting; refunds; referrals
    between members), read in bursts per topic and partition, under both return
    policies."""
    case, partitions, choices = drawn
    check_arrival_order(case, partitions, choices)
