"""What-if: recompute members' histories under another program version and show the difference.

The whole ledger is replayed, in its original order, into an in-memory ledger that applies
the other program: every inbound event from its receipt (the canonical payload is kept on
the receipt), at the instant it was received, and every operation (adjustments, manual tier
assignments, holds) as it was made. Compensating adjustments from earlier what-if runs are
left out of the replay, so the difference after applying one is zero: running again posts
nothing new.

Tiers are decided again under the other program: the replay runs the same account code as
the ledger, which decides tiers inline (entry tier, upgrades right after the earn that
reaches a threshold, period-end reviews when the account is next brought forward). So the
ledger's own tier decisions are left out of the replay, and so are the `tier.changed` inputs
0.1 took from the tiers service; only ops overrides (cause ``override``) are replayed as they
were made, with their end and lock.

For one member only that member's history is read, never the whole ledger: the account's
entries, the receipts of the inbound events they came from, and the events parked on the
member, merged in the order they were recorded (each read by its key, so the cost is the
member's, whatever the size of the store). A referral's other member takes part only through
the events shared with this member. An event the ledger declined outright for the member
(no entry, never parked) is not part of that history: the all-members run replays it.

`progress`, when given, is called as the run goes: (stage, done, total), stage `replay`
(events read so far of those to read) then `compare` (members compared).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.utils import get_topic

from services.ledger.application import commands
from services.ledger.application.batch_reads import select_positioned
from services.ledger.application.compact import long_topic, stored_topics
from services.ledger.application.ledger import Inbound, LedgerApplication
from services.ledger.application.service import Ledger
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.errors import Declined
from services.ledger.domain.parking import ParkedEvents, parked_id
from services.ledger.domain.program import Program
from services.ledger.domain.receipts import InboundReceipt, receipt_id

WHAT_IF = "what-if:"
#: Entries an operator's command made (replayed by `replay_operation`).
OPERATIONS: tuple[type, ...] = (
    MemberAccount.PointsAdjusted,
    MemberAccount.TierAssigned,
    MemberAccount.HoldPlaced,
    MemberAccount.HoldCaptured,
    MemberAccount.HoldVoided,
)
_REPLAYED = (InboundReceipt.Recorded, *OPERATIONS)
_RECORDED = get_topic(InboundReceipt.Recorded)


Progress = Callable[[str, int, int], None]  # (stage, done, total)
TIER_CHANGED = "tier.changed"
OVERRIDE = "override"  # the cause of an ops override's tier_assigned entry


@dataclass(frozen=True, slots=True)
class MemberDiff:
    member_id: str
    actual: int  # available + pending + held now
    would_have: int  # the same under the other program
    actual_lifetime: int
    would_have_lifetime: int

    @property
    def difference(self) -> int:
        return self.would_have - self.actual


@dataclass
class WhatIfReport:
    run_id: str
    program_version: str
    current_version: str
    position: int
    as_of: datetime
    replayed_events: int = 0
    replayed_operations: int = 0
    tiers_recomputed: bool = False  # the other program has tiers: decided again under it
    tier_changes: int = 0  # tier changes the replay recorded (up to `as_of`)
    skipped: list[str] = field(default_factory=list)
    members: list[MemberDiff] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)
    already_posted: bool = False
    read_events: int = 0  # stored events the replay read from the store


def _nothing(stage: str, done: int, total: int) -> None:
    del stage, done, total


def _history(
    app: LedgerApplication, position: int, report: WhatIfReport, progress: Progress
) -> Iterator[Any]:
    """Every replayed event of the whole ledger, in the order it was recorded."""
    topics = stored_topics(*_REPLAYED)
    start = 1
    while start <= position:
        page = app.process_recorder.select_notifications(
            start=start, limit=500, topics=topics, stop=position
        )
        if not page:
            return
        report.read_events += len(page)
        for notification in page:
            yield app.mapper.to_domain_event(notification)
        start = page[-1].id + 1
        progress("replay", min(start - 1, position), position)


def _member_history(
    app: LedgerApplication, member: str, position: int, report: WhatIfReport, progress: Progress
) -> Iterator[Any]:
    """One member's replayed events, in the order they were recorded: the account's entries,
    and the receipts of the inbound events its entries came from or parked on it. Two reads
    by key: the account and its parked events, then those receipts."""
    own = select_positioned(app.recorder, [MemberAccount.create_id(member), parked_id(member)])
    report.read_events += len(own)
    events = [(n, app.mapper.to_domain_event(s)) for n, s in own if n <= position]
    received: dict[str, None] = {}
    for _, event in events:
        if isinstance(event, MemberAccount.Enrolled | MemberAccount.Entry):
            if event.provenance.event_id is not None:
                received[event.provenance.event_id] = None
        elif isinstance(event, ParkedEvents.Parked):
            received[event.item.event_id] = None
    receipts = select_positioned(app.recorder, [receipt_id(e) for e in received])
    report.read_events += len(receipts)
    for n, stored in receipts:
        if n <= position and long_topic(stored.topic) == _RECORDED:
            events.append((n, app.mapper.to_domain_event(stored)))
    replayed = sorted(
        ((n, e) for n, e in events if isinstance(e, _REPLAYED)), key=lambda pair: pair[0]
    )
    for done, (_, event) in enumerate(replayed, start=1):
        yield event
        progress("replay", done, len(replayed))


def run_id(program: Program, member: str | None, position: int) -> str:
    # Tiers are always decided again: the same ids as 0.1's runs that did so.
    text = f"{program.version}|{member or '*'}|{position}|tiers=decided"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def what_if(
    ledger: Ledger,
    program: Program,
    *,
    member: str | None = None,
    apply: bool = False,
    actor: str = "what-if",
    progress: Progress = _nothing,
) -> WhatIfReport:
    app = ledger.app
    ledger.catch_up()
    now = app.clock.now()
    position = app.recorder.max_notification_id() or 0
    report = WhatIfReport(
        run_id=run_id(program, member, position),
        program_version=program.version,
        current_version=app.program.version,
        position=position,
        as_of=now,
    )
    history = (
        _history(app, position, report, progress)
        if member is None
        else _member_history(app, member, position, report, progress)
    )
    sim = _replay(program, history, report)
    now = report.as_of  # never before the history it recomputes
    members = [member] if member is not None else [r.member_id for r in ledger.view.all_balances()]
    for done, member_id in enumerate(members):
        progress("compare", done, len(members))
        actual = ledger.balance(member_id, now)
        if actual is None:
            continue
        account = sim.find_account(member_id)
        would = lifetime = 0
        if account is not None:
            account.advance(program, now)
            b = account.balance
            would, lifetime = b.available + b.pending + b.held, account.lifetime_earned
        report.members.append(
            MemberDiff(
                member_id,
                actual.available + actual.pending + actual.held,
                would,
                actual.lifetime_earned,
                lifetime,
            )
        )
    progress("compare", len(members), len(members))
    sim.close()
    if apply:
        _post(ledger, report, actor)
    return report


def _replay(program: Program, history: Iterable[Any], report: WhatIfReport) -> LedgerApplication:
    clock = FixedClock(report.as_of)
    sim = LedgerApplication(program, clock, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    report.tiers_recomputed = bool(program.tiers)
    for event in history:
        if isinstance(event, InboundReceipt.Recorded):
            if event.event_type == TIER_CHANGED:
                continue  # 0.1's tiers service: the replay decides tiers itself
            if event.payload is None:
                report.skipped.append(f"event {event.event_id}: recorded without its payload")
                continue
            _at(clock, report, event.received_at)
            sim.apply_batch([Inbound(event.payload.encode(), event.origin)])
            report.replayed_events += 1
            continue
        assert isinstance(event, MemberAccount.Entry)
        if event.provenance.event_id is not None:
            continue  # made by an inbound event: the receipt replays it
        if (event.provenance.origin.request_id or "").startswith(WHAT_IF):
            continue  # an earlier what-if's compensation
        if isinstance(event, MemberAccount.TierAssigned) and event.cause != OVERRIDE:
            continue  # decided by the ledger: the replay decides again
        _at(clock, report, event.effective_at)
        try:
            replay_operation(sim, event)
        except Declined as exc:
            report.skipped.append(
                f"{event.member_id}#{event.originator_version} {type(event).__name__}: "
                f"declined under the other program ({exc.reason})"
            )
            continue
        report.replayed_operations += 1
    # The time-driven work due by now (period-end reviews among it), then the tier changes.
    sim.advance_members(sorted(_members(sim)), report.as_of)
    report.tier_changes = _tier_changes(sim)
    return sim


def _members(sim: LedgerApplication) -> set[str]:
    return {e.member_id for e in _entries(sim) if isinstance(e, MemberAccount.Enrolled)}


def _tier_changes(sim: LedgerApplication) -> int:
    return sum(
        isinstance(e, MemberAccount.TierAssigned) and e.tier != e.previous for e in _entries(sim)
    )


def _entries(sim: LedgerApplication) -> Iterator[Any]:
    start = 1
    while True:
        page = sim.process_recorder.select_notifications(start=start, limit=1000)
        if not page:
            return
        for notification in page:
            yield sim.mapper.to_domain_event(notification)
        start = page[-1].id + 1


def _at(clock: FixedClock, report: WhatIfReport, at: datetime) -> None:
    clock.set(at)
    report.as_of = max(report.as_of, at)


def replay_operation(sim: LedgerApplication, event: MemberAccount.Entry) -> None:
    """Make an operator's command again on `sim`, as it was made (one of OPERATIONS; the
    caller sets the clock). Raises Declined when `sim` refuses it."""
    member = event.member_id
    actor = event.provenance.origin.actor or "ops"
    if isinstance(event, MemberAccount.PointsAdjusted):
        commands.adjust(
            sim,
            member,
            event.points,
            reason=event.reason,
            actor=event.actor,
            allow_negative=True,  # replayed as it was made
        )
    elif isinstance(event, MemberAccount.TierAssigned):
        sim.assign_tier(
            member,
            event.tier,
            reason=event.reason,
            actor=actor,
            until=event.override_until,
            locked=event.locked,
        )
    elif isinstance(event, MemberAccount.HoldPlaced):
        commands.place_hold(
            sim,
            member,
            reference=event.reference,
            points=event.points,
            ttl=event.hold.expires_at - event.hold.placed_at,
            actor=actor,
        )
    elif isinstance(event, MemberAccount.HoldCaptured):
        commands.capture_hold(sim, event.hold_id, points=event.points, actor=actor)
    elif isinstance(event, MemberAccount.HoldVoided):
        commands.void_hold(sim, event.hold_id, reason=event.reason, actor=actor)


def _post(ledger: Ledger, report: WhatIfReport, actor: str) -> None:
    request_id = WHAT_IF + report.run_id
    for diff in report.members:
        if diff.difference == 0:
            continue
        account = ledger.app.find_account(diff.member_id)
        if account is not None and any(
            isinstance(e, MemberAccount.PointsAdjusted)
            and e.provenance.origin.request_id == request_id
            for e in ledger.app.events.get(account.id)
        ):
            report.already_posted = True
            continue
        done = commands.adjust(
            ledger.app,
            diff.member_id,
            diff.difference,
            reason=f"what-if {report.run_id}: recomputed under program {report.program_version}",
            actor=actor,
            allow_negative=True,
            request_id=request_id,
            channel="ops",
        )
        # The adjustment is the command's last entry; any before it is scheduled work that
        # was due anyway (a pending release, say), not part of what was posted.
        report.posted.extend(done.entries[-1:])
    ledger.catch_up()
