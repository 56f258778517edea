"""Verify by replay: every member's entries made again from what the ledger received.

The whole store is replayed, in the order it was recorded, into an in-memory ledger running
the same code: every inbound event from its receipt (the canonical payload), under the
program version its entries name and with the clock at the instant it was received; every
operation (adjustments, ops tier overrides, holds, re-drives, parked deadlines) as it was
made; and the scheduler's work at the point of each member's sequence where it was done.
Each member's entries must come out the same, one by one (type, effective time, postings,
lot moves, points and balance after), and so must the final balances and lots. Anything
else means the stored ledger is not a function of its inputs, which is a violation.

The scheduler's entries are tied to no inbound event: one found in the log at member
version `v` is replayed as "bring the account to its time" once the replayed account has
reached version `v - 1`. That is exactly where the scheduler did it; when the entry was in
fact made while trying an event that was then declined, the event would have done the same
advance first, so the result is the same.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.ledger.application.compact import stored_topics
from services.ledger.application.ledger import Inbound, LedgerApplication, Outcome
from services.ledger.application.what_if import (
    OPERATIONS,
    OVERRIDE,
    TIER_CHANGED,
    replay_operation,
)
from services.ledger.domain.account import SCHEDULER, MemberAccount, account_id
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.errors import Declined
from services.ledger.domain.program import Program
from services.ledger.domain.receipts import DECLINED, InboundReceipt


@dataclass
class ReplayReport:
    events: int = 0
    operations: int = 0
    entries: int = 0
    violations: list[str] = field(default_factory=list)


def _log(app: LedgerApplication, classes: tuple[type, ...]) -> Iterator[Any]:
    topics = stored_topics(*classes)
    start = 1
    while True:
        page = app.process_recorder.select_notifications(start=start, limit=1000, topics=topics)
        if not page:
            return
        for notification in page:
            yield app.mapper.to_domain_event(notification)
        start = page[-1].id + 1


def _entry_classes() -> tuple[type, ...]:
    found: list[type] = [MemberAccount.Enrolled]
    stack: list[type] = [MemberAccount.Entry]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return tuple(found)


_RECEIPTS = (InboundReceipt.Recorded, InboundReceipt.Reapplied, InboundReceipt.Settled)


def content(event: Any) -> tuple[Any, ...]:
    """What must come out the same: one entry by its type, time, postings, moves, points
    and balance after (not its note, nor the wall-clock instant it was written)."""
    return (
        type(event).__name__,
        event.effective_at,
        tuple(getattr(event, "postings", ())),
        tuple(getattr(event, "moves", ())),
        getattr(event, "points", None),
        getattr(event, "balance_after", None),
    )


def _describe(entry: tuple[Any, ...] | None) -> str:
    if entry is None:
        return "nothing"
    kind, at, postings, moves, points, _ = entry
    legs = " ".join(f"{p.account}{p.amount:+d}" for p in postings)
    lots = " ".join(f"{m.lot_id}{m.amount:+d}" for m in moves)
    shown = f" {points} points" if points is not None else ""
    return f"{kind} at {at.isoformat()}{shown} [{legs}] [{lots}]"


def replay_check(
    app: LedgerApplication, stored_accounts: Mapping[str, tuple[Any, Any]] | None = None
) -> ReplayReport:
    """Replay the store into a fresh in-memory ledger and compare, member by member.

    `stored_accounts`: each member's stored (balance, lots) as the caller already read them
    (verify does, for its own fold), so that they are not read again; a member not in it is
    read from the store."""
    report = ReplayReport()
    stored: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    # Entry ids (member#version) made by inbound events, re-drives and parked retries,
    # the program version each one names, and scheduler entries tied to no event.
    listed: set[str] = set()
    versions: dict[str, str] = {}
    for event in _log(app, _RECEIPTS):
        listed.update(getattr(event, "entries", ()))
    ticks: dict[str, dict[int, datetime]] = defaultdict(dict)
    for event in _log(app, _entry_classes()):
        member = event.member_id
        stored[member].append(content(event))
        entry_id = f"{member}#{event.originator_version}"
        origin = event.provenance.origin
        if origin.channel == SCHEDULER.channel:
            if entry_id not in listed and event.provenance.event_id is None:
                ticks[member][event.originator_version] = event.effective_at
        elif event.provenance.program_version:
            versions[entry_id] = event.provenance.program_version
    report.entries = sum(len(entries) for entries in stored.values())

    programs: dict[str, Program] = {app.program.version: app.program}
    clock = FixedClock(app.clock.now())
    sim = LedgerApplication(app.program, clock, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        _replay(app, sim, clock, ticks, versions, programs, report)
        _compare(app, sim, stored, report, stored_accounts or {})
    finally:
        sim.close()
    return report


def _program(app: LedgerApplication, programs: dict[str, Program], version: str) -> Program:
    if version not in programs:
        document = app.program_document(version)
        if document is None:
            raise LookupError(f"program version {version} is not in the store")
        programs[version] = Program.model_validate_json(document)
    return programs[version]


def _replay(
    app: LedgerApplication,
    sim: LedgerApplication,
    clock: FixedClock,
    ticks: dict[str, dict[int, datetime]],
    versions: dict[str, str],
    programs: dict[str, Program],
    report: ReplayReport,
) -> None:
    def catch_up_ticks(members: Iterable[str] | None = None) -> None:
        """The scheduler's work each replayed account has reached, at its place: of the
        `members` an event touched (every member with work left when None)."""
        for member in list(ticks) if members is None else members:
            due = ticks.get(member)
            if not due:
                continue
            account = sim.find_account(member)
            while account is not None and (account.version + 1) in due:
                at = due.pop(account.version + 1)
                clock.set(at)
                sim.advance_members([member], at)
                account = sim.find_account(member)

    last_version = app.program.version
    # Members whose accounts may have moved since their scheduler work was last looked for:
    # after an inbound event, the members it touched (a cost per event that does not grow
    # with the store); after anything else, every member with work left.
    touched: list[str] | None = None
    for event in _log(app, (*_RECEIPTS, *OPERATIONS)):
        catch_up_ticks(touched)
        touched = None
        if isinstance(event, InboundReceipt.Recorded):
            if event.event_type == TIER_CHANGED or event.payload is None:
                touched = []
                continue  # 0.1's tiers input (declined since), or recorded without payload
            named = [versions[e] for e in event.entries if e in versions]
            last_version = named[0] if named else last_version
            sim.program = _program(app, programs, last_version)
            clock.set(event.received_at)
            [outcome] = sim.apply_batch([Inbound(event.payload.encode(), event.origin)])
            touched = _touched(event, outcome)
            report.events += 1
        elif isinstance(event, InboundReceipt.Reapplied):
            clock.set(event.at)
            sim.redrive(actor=event.actor, event_ids=[_receipt_event_id(app, event)])
            report.operations += 1
        elif isinstance(event, InboundReceipt.Settled):
            # Declined at its deadline by the scheduler: the same then. One applied, or
            # declined on a retry, comes again from the event whose arrival retried it.
            if event.outcome == DECLINED and event.at_deadline:
                clock.set(event.at)
                sim.expire_parked(event.at)
        else:
            _operate(sim, clock, event, report)
    catch_up_ticks()


def _touched(event: InboundReceipt.Recorded, outcome: Outcome) -> list[str]:
    """The members whose accounts an inbound event may have changed: its own, a referral's
    referee, and every member it made entries for (a displaced referral's too)."""
    members = dict.fromkeys(m for m in (event.member_id, outcome.member_id) if m)
    if event.payload is not None and '"referee_member_id"' in event.payload:
        referee = json.loads(event.payload).get("data", {}).get("referee_member_id")
        if isinstance(referee, str):
            members[referee] = None
    for entry in outcome.entries:
        members[entry.split("#", 1)[0]] = None
    return list(members)


def _receipt_event_id(app: LedgerApplication, event: InboundReceipt.Reapplied) -> str:
    receipt: Any = app.repository.get(event.originator_id, version=1)
    assert isinstance(receipt, InboundReceipt)
    return receipt.event_id


def _operate(sim: LedgerApplication, clock: FixedClock, event: Any, report: ReplayReport) -> None:
    """An operator's command, made again as it was made (the clock at its time); earlier
    what-if compensations too, since they are entries of the store like any other."""
    if event.provenance.event_id is not None or event.provenance.origin.channel == "scheduler":
        return  # made by an inbound event or by the scheduler: replayed with those
    if isinstance(event, MemberAccount.TierAssigned) and event.cause != OVERRIDE:
        return  # decided by the ledger itself
    clock.set(event.effective_at)
    try:
        replay_operation(sim, event)
    except Declined as exc:
        report.violations.append(
            f"{event.member_id}#{event.originator_version} {type(event).__name__}: declined "
            f"on replay ({exc.reason}: {exc.detail})"
        )
        return
    report.operations += 1


def _compare(
    app: LedgerApplication,
    sim: LedgerApplication,
    stored: dict[str, list[tuple[Any, ...]]],
    report: ReplayReport,
    stored_accounts: Mapping[str, tuple[Any, Any]],
) -> None:
    for member, entries in sorted(stored.items()):
        events: list[Any] = list(sim.events.get(account_id(member)))
        replayed = [content(e) for e in events]
        for i in range(max(len(entries), len(replayed))):
            want = entries[i] if i < len(entries) else None
            got = replayed[i] if i < len(replayed) else None
            if want != got:
                report.violations.append(
                    f"{member}#{i + 1}: stored {_describe(want)}, replay made {_describe(got)}"
                )
                break  # the first difference; what follows usually differs because of it
        if member in stored_accounts:
            have: tuple[Any, Any] | None = stored_accounts[member]
        else:
            live = app.find_account(member)
            have = None if live is None else (live.balance, live.lots)
        # The replayed account folded from the events just read (one read, not two).
        again: Any = None
        for event in events:
            again = event.mutate(again)
        if have is not None and again is not None and have != (again.balance, again.lots):
            report.violations.append(
                f"{member}: stored balance {have[0]}, replayed {again.balance}"
            )
