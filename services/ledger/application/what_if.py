"""What-if: recompute members' histories under another program version and show the difference.

The whole ledger is replayed, in its original order, into an in-memory ledger that applies
the other program: every inbound event from its receipt (the canonical payload is kept on
the receipt), at the instant it was received, and every operation (adjustments, manual tier
assignments, holds) as it was made. Compensating adjustments from earlier what-if runs are
left out of the replay, so the difference after applying one is zero: running again posts
nothing new.

Tiers are decided again under the other program when the caller gives a tier decider (the
tiers service's policy, run in-process): the recorded `tier.changed` events were decided
under the current program, so they are left out and the decider records its own as the
replay goes, reviewing period ends once per replayed day. Without a decider the recorded
tier changes are replayed as they happened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from services.ledger.application import commands
from services.ledger.application.ledger import Inbound, LedgerApplication
from services.ledger.application.service import Ledger
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.errors import Declined
from services.ledger.domain.program import Program
from services.ledger.domain.receipts import InboundReceipt

WHAT_IF = "what-if:"
_REPLAYED = (
    InboundReceipt.Recorded,
    MemberAccount.PointsAdjusted,
    MemberAccount.TierAssigned,
    MemberAccount.HoldPlaced,
    MemberAccount.HoldCaptured,
    MemberAccount.HoldVoided,
)


TIER_CHANGED = "tier.changed"

#: Given the replay's ledger, a function that decides tiers from its new entries (and, when
#: given an instant, runs the period-end reviews due then); returns the changes recorded.
TierDecider = Callable[[LedgerApplication], Callable[[datetime | None], int]]


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
    tiers_recomputed: bool = False
    tier_changes: int = 0  # recorded during the replay (decided again, or as recorded)
    skipped: list[str] = field(default_factory=list)
    members: list[MemberDiff] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)
    already_posted: bool = False


def _topic(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _history(app: LedgerApplication, position: int) -> Iterator[Any]:
    topics = [_topic(c) for c in _REPLAYED]
    start = 1
    while start <= position:
        page = app.process_recorder.select_notifications(
            start=start, limit=500, topics=topics, stop=position
        )
        if not page:
            return
        for notification in page:
            yield app.mapper.to_domain_event(notification)
        start = page[-1].id + 1


def run_id(program: Program, member: str | None, position: int, tiers: str = "recorded") -> str:
    text = f"{program.version}|{member or '*'}|{position}"
    if tiers != "recorded":
        text += f"|tiers={tiers}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def what_if(
    ledger: Ledger,
    program: Program,
    *,
    member: str | None = None,
    apply: bool = False,
    actor: str = "what-if",
    tiers: TierDecider | None = None,
) -> WhatIfReport:
    app = ledger.app
    ledger.projection.run()
    now = app.clock.now()
    position = app.recorder.max_notification_id() or 0
    report = WhatIfReport(
        run_id=run_id(program, member, position, "recorded" if tiers is None else "decided"),
        program_version=program.version,
        current_version=app.program.version,
        position=position,
        as_of=now,
    )
    sim = _replay(app, program, position, report, tiers)
    now = report.as_of  # never before the history it recomputes
    members = [member] if member is not None else [r.member_id for r in ledger.view.all_balances()]
    for member_id in members:
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
    sim.close()
    if apply:
        _post(ledger, report, actor)
    return report


def _replay(
    app: LedgerApplication,
    program: Program,
    position: int,
    report: WhatIfReport,
    tiers: TierDecider | None,
) -> LedgerApplication:
    clock = FixedClock(report.as_of)
    sim = LedgerApplication(program, clock, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    decide = tiers(sim) if tiers is not None else None
    report.tiers_recomputed = decide is not None
    reviewed: date | None = None  # the day of the last period-end review

    def at(instant: datetime) -> None:
        nonlocal reviewed
        _at(clock, report, instant)
        if decide is None:
            return
        if reviewed is None or instant.date() > reviewed:
            report.tier_changes += decide(instant)  # reviews due by this instant first
            reviewed = instant.date()

    def decided() -> None:
        if decide is not None:
            report.tier_changes += decide(None)

    for event in _history(app, position):
        if isinstance(event, InboundReceipt.Recorded):
            if event.event_type == TIER_CHANGED:
                if decide is not None:
                    continue  # decided under the current program: the decider decides again
                report.tier_changes += 1
            if event.payload is None:
                report.skipped.append(f"event {event.event_id}: recorded without its payload")
                continue
            at(event.received_at)
            sim.apply_batch([Inbound(event.payload.encode(), event.origin)])
            report.replayed_events += 1
            decided()
            continue
        assert isinstance(event, MemberAccount.Entry)
        if event.provenance.event_id is not None:
            continue  # made by an inbound event: the receipt replays it
        if (event.provenance.origin.request_id or "").startswith(WHAT_IF):
            continue  # an earlier what-if's compensation
        at(event.effective_at)
        try:
            _operation(sim, event)
        except Declined as exc:
            report.skipped.append(
                f"{event.member_id}#{event.originator_version} {type(event).__name__}: "
                f"declined under the other program ({exc.reason})"
            )
            continue
        report.replayed_operations += 1
        decided()
    if decide is not None:
        report.tier_changes += decide(report.as_of)  # the reviews due by now
    return sim


def _at(clock: FixedClock, report: WhatIfReport, at: datetime) -> None:
    clock.set(at)
    report.as_of = max(report.as_of, at)


def _operation(sim: LedgerApplication, event: MemberAccount.Entry) -> None:
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
        sim.assign_tier(member, event.tier, reason=event.reason, actor=actor)
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
        report.posted.extend(done.entries)
    ledger.projection.run()
