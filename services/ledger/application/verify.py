"""Checks every ledger invariant against the store, by folding each account's history afresh."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from services.ledger.application.compact import stored_topics
from services.ledger.application.ledger import LedgerApplication
from services.ledger.application.program_metrics import compute, from_summary
from services.ledger.application.replay_check import replay_check
from services.ledger.application.views import LedgerView
from services.ledger.domain import postings as acc
from services.ledger.domain.account import Balances, MemberAccount
from services.ledger.domain.lots import AVAILABLE, PENDING, Lot
from services.ledger.domain.program import ReturnPolicy
from services.ledger.domain.receipts import APPLIED, InboundReceipt


@dataclass
class VerifyReport:
    members: int = 0
    entries: int = 0
    receipts: int = 0
    replayed_events: int = 0  # inbound events made again by the replay check
    replayed_operations: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _ids(app: LedgerApplication, cls: type) -> list[UUID]:
    found: list[UUID] = []
    start = 1
    while True:
        page = app.process_recorder.select_notifications(
            start=start, limit=1000, topics=stored_topics(cls)
        )
        if not page:
            return found
        found.extend(UUID(str(n.originator_id)) for n in page)
        start = page[-1].id + 1


def verify(
    app: LedgerApplication, view: LedgerView | None = None, *, replay: bool = True
) -> VerifyReport:
    """Fold every account afresh and check the invariants; with `replay`, also make every
    entry again from the receipts and operations (replay_check) and compare."""
    report = VerifyReport()
    folded: dict[str, tuple[Balances, dict[str, Lot], str | None]] = {}
    credited: Counter[tuple[str, str, str]] = Counter()
    # The stored account each fold read to compare with, kept only as what the later checks
    # need (undone enrolments, open holds, balance and lots): one read of each, not three.
    holds: dict[str, dict[str, tuple[str, int, int]]] = {}
    no_members: set[str] = set()
    stored_accounts: dict[str, tuple[Balances, dict[str, Lot]]] = {}
    for aggregate_id in _ids(app, MemberAccount.Enrolled):
        member, balances, lots, tier, live = _fold(app, aggregate_id, report, credited)
        folded[member] = (balances, lots, tier)
        if live is not None:
            stored_accounts[member] = (live.balance, live.lots)
        if view is not None and live is not None:
            if not live.is_member:
                no_members.add(member)  # enrolment undone: no row in the projection
            holds[member] = {
                h.hold_id: (h.status, h.points, h.captured) for h in live.holds.values()
            }
    report.members = len(folded)
    for (event_id, member, kind), count in credited.items():
        if count > 1:
            report.violations.append(
                f"{member}: event {event_id} produced {count} {kind} entries (applied twice)"
            )
    for receipt_uuid in _ids(app, InboundReceipt.Recorded):
        receipt: object = app.repository.get(receipt_uuid)
        assert isinstance(receipt, InboundReceipt)
        report.receipts += 1
        if (
            receipt.outcome == APPLIED
            and not receipt.entries
            and receipt.event_type not in {"member.enrolled"}
        ):
            report.violations.append(f"receipt {receipt.event_id}: applied but names no entry")
    if view is not None:
        _compare_view(view, folded, report, holds, no_members)
        _compare_summary(view, app.clock.now(), report)
    if replay:
        again = replay_check(app, stored_accounts)
        report.replayed_events, report.replayed_operations = again.events, again.operations
        report.violations += [f"replay: {v}" for v in again.violations]
    return report


def _fold(
    app: LedgerApplication,
    aggregate_id: UUID,
    report: VerifyReport,
    credited: Counter[tuple[str, str, str]],
) -> tuple[str, Balances, dict[str, Lot], str | None, MemberAccount | None]:
    events = list(app.events.get(aggregate_id))
    first = events[0]
    assert isinstance(first, MemberAccount.Enrolled)
    member = first.member_id
    balances = dict.fromkeys(acc.ACCOUNTS, 0)
    lots: dict[str, Lot] = {}
    tier: str | None = None
    policy_unlimited = app.program.returns.policy is ReturnPolicy.UNLIMITED
    for event in events[1:]:
        report.entries += 1
        assert isinstance(event, MemberAccount.Entry)
        where = f"{member}#{event.originator_version} {type(event).__name__}"
        total = sum(p.amount for p in event.postings)
        if total != 0:
            report.violations.append(f"{where}: postings sum to {total}")
        before_available = balances[acc.AVAILABLE]
        for posting in event.postings:
            if posting.account not in balances:
                report.violations.append(f"{where}: unknown account {posting.account}")
                continue
            balances[posting.account] += posting.amount
        # Re-derive the lots from the moves alone and compare with what the entry recorded.
        expected = {lot.lot_id: lot for lot in event.lots_after}
        fresh = {lot_id for lot_id in expected if lot_id not in lots}
        for lot_id, lot in expected.items():
            if lot_id not in lots:
                lots[lot_id] = replace(lot, remaining=lot.amount)
            elif lots[lot_id].status != lot.status:
                lots[lot_id] = lots[lot_id].released()
        if (
            isinstance(event, MemberAccount.PointsToppedUp)
            and event.lot_id in lots
            and event.lot_id not in fresh  # a purchase capped to nothing gets its first lot
        ):
            grown = lots[event.lot_id]  # a late tier's difference grows the order's own lot
            taken = sum(points for _, points in event.taken_back)  # its refunds' share
            lots[event.lot_id] = replace(
                grown,
                amount=grown.amount + event.points + taken,
                remaining=grown.remaining + event.points,
            )
        for move in event.moves:
            old = lots.get(move.lot_id)
            if old is None:
                report.violations.append(f"{where}: moves unknown lot {move.lot_id}")
                continue
            remaining = old.remaining + move.amount
            if remaining < 0 or remaining > old.amount:
                report.violations.append(
                    f"{where}: lot {move.lot_id} would hold {remaining} of {old.amount}"
                )
            lots[move.lot_id] = replace(old, remaining=remaining)
        for lot_id, lot in expected.items():
            # What a lot settled of a balance below zero is bookkeeping that moves do not
            # carry (`Lot.settled`): taken as recorded, within what the lot no longer holds.
            if not 0 <= lot.settled <= lot.amount - lot.remaining:
                report.violations.append(f"{where}: lot {lot_id} settled {lot.settled}")
            if lot_id in lots:
                lots[lot_id] = replace(lots[lot_id], settled=lot.settled)
            if lots[lot_id] != lot:
                report.violations.append(f"{where}: lot {lot_id} differs from its moves")
        in_available = sum(lot.remaining for lot in lots.values() if lot.status == AVAILABLE)
        in_pending = sum(lot.remaining for lot in lots.values() if lot.status == PENDING)
        available = balances[acc.AVAILABLE]
        if in_available != max(available, 0) or in_pending != balances[acc.PENDING]:
            report.violations.append(
                f"{where}: balances {available}/{balances[acc.PENDING]} but lots hold "
                f"{in_available}/{in_pending}"
            )
        after = Balances(available, balances[acc.PENDING], balances[acc.HELD])
        if after != event.balance_after:
            report.violations.append(f"{where}: balance_after {event.balance_after} != {after}")
        if available < 0 and available < before_available:
            # Only an adjustment that allows it, a clawback under the unlimited policy (also
            # one taken again in event-time order after a late event: `respent`), or a
            # referral bonus taken back after it was spent (owed: later earnings settle it).
            allowed = (
                isinstance(event, MemberAccount.PointsAdjusted | MemberAccount.ReferralReversed)
                or (isinstance(event, MemberAccount.PointsReversed) and policy_unlimited)
                or (getattr(event, "respent", None) is not None and policy_unlimited)
            )
            if not allowed:
                report.violations.append(f"{where}: took the balance below zero ({available})")
        if isinstance(event, MemberAccount.TierAssigned):
            tier = event.tier
        respent = getattr(event, "respent", None)
        for record in respent.redemptions if respent is not None else ():
            if record.status == "withdrawn":  # it waits again: it may be applied once more
                credited[(record.event_id, member, "PointsRedeemed")] -= 1
        if event.provenance.event_id and event.provenance.origin.channel != "scheduler":
            kind = type(event).__name__
            # One event may place a member in the entry tier and then upgrade (twice, when
            # it arrived late), retract several upgrades, and top up several orders: each
            # of those once.
            if isinstance(event, MemberAccount.TierAssigned):
                kind += f" ({event.cause} to {event.tier} at {event.effective_at.isoformat()})"
                if event.retracts:  # one refund may retract several upgrades of one instant
                    kind += f" of #{event.retracts}"
            elif isinstance(event, MemberAccount.PointsToppedUp):
                # One event may reprice an order up, then down: a late earn reaches a tier
                # and a referral it displaces takes the upgrade back (once per tier).
                # A late purchase under the daily cap re-caps an order at the same tier.
                kind += (
                    f" (order {event.order.order_id} at {event.order.tier}, "
                    f"{event.provenance.rule_id})"
                )
            elif isinstance(event, MemberAccount.LotsReallocated):
                kind += f" (lot {event.lot_id})"
            elif isinstance(event, MemberAccount.ReferralReversed):
                # One referral may displace two: of its referee, and the referee's of its
                # referrer (circular); a member may lose a bonus of each, once each.
                kind += f" ({event.role} of {event.undone})"
            credited[(event.provenance.event_id, member, kind)] += 1
    if sum(balances.values()) != 0:
        report.violations.append(f"{member}: accounts do not sum to zero")
    live = app.find_account(member)
    if (
        live is None
        or live.balance
        != Balances(balances[acc.AVAILABLE], balances[acc.PENDING], balances[acc.HELD])
        or live.lots != lots
    ):
        report.violations.append(f"{member}: the stored account differs from a fresh fold")
    if live is not None and balances[acc.HELD] != live.held_total:
        report.violations.append(
            f"{member}: held {balances[acc.HELD]} but open holds hold {live.held_total}"
        )
    return (
        member,
        Balances(balances[acc.AVAILABLE], balances[acc.PENDING], balances[acc.HELD]),
        lots,
        tier,
        live,
    )


SUMMARY_PERIODS = (30, 366)


def _compare_summary(view: LedgerView, now: datetime, report: VerifyReport) -> None:
    """The program summary the metrics are read from against the full computation over the
    balance and statement projections."""
    balances, entries = view.all_balances(), view.all_entries()
    for days in SUMMARY_PERIODS:
        if from_summary(view.summary(now, days)) != compute(balances, entries, now, days):
            report.violations.append(
                f"the program summary differs from the projections' figures ({days}-day periods)"
            )
            return


def _compare_view(
    view: LedgerView,
    folded: dict[str, tuple[Balances, dict[str, Lot], str | None]],
    report: VerifyReport,
    holds: dict[str, dict[str, tuple[str, int, int]]] | None = None,
    no_members: set[str] | frozenset[str] = frozenset(),
) -> None:
    rows = {row.member_id: row for row in view.all_balances()}
    view_lots: dict[str, dict[str, Lot]] = {}
    for member, lot in view.all_lots():
        view_lots.setdefault(member, {})[lot.lot_id] = lot
    for member, (balances, lots, tier) in folded.items():
        row = rows.pop(member, None)
        if member in no_members:
            if row is not None:
                report.violations.append(f"{member}: enrolment undone but in the projection")
            continue
        if row is None:
            report.violations.append(f"{member}: missing from the balance projection")
            continue
        shown = Balances(row.available, row.pending, row.held)
        if shown != balances or row.tier != tier:
            report.violations.append(
                f"{member}: projection shows {shown} tier {row.tier}, ledger {balances} tier {tier}"
            )
        # The lots table holds no `settled` (bookkeeping the read side does not show).
        bare = {lot_id: replace(lot, settled=0) for lot_id, lot in lots.items()}
        if view_lots.get(member, {}) != bare:
            report.violations.append(f"{member}: projected lots differ from the ledger")
        if holds is not None:
            shown_holds = {h.hold_id: (h.status, h.points, h.captured) for h in view.holds(member)}
            if shown_holds != holds.get(member, {}):
                report.violations.append(f"{member}: projected holds differ from the ledger")
    for member in rows:
        report.violations.append(f"{member}: in the projection but not in the ledger")
