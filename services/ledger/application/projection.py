"""Keeps the read models up to date from the ledger's notification log, exactly once.

Each batch of notifications is applied to the view together with the position of its last
notification, in one transaction, so a crash never applies an entry twice or skips one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Mapper, ProcessRecorder, Tracking

from services.ledger.application.entries import entry_message, lifetime_change
from services.ledger.application.views import (
    BalanceRow,
    EntryRow,
    HoldRow,
    LedgerView,
    ViewChanges,
)
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.holds import HoldRecord


def account_topics() -> list[str]:
    """Topics of every MemberAccount event class (the notifications the view follows)."""
    classes: list[type[Any]] = [MemberAccount.Enrolled, *MemberAccount.Entry.__subclasses__()]
    return [f"{c.__module__}:{c.__qualname__}" for c in classes]


class LedgerProjection:
    def __init__(self, recorder: ProcessRecorder, mapper: Mapper[UUID], view: LedgerView) -> None:
        self.recorder = recorder
        self.mapper = mapper
        self.view = view
        self.topics = account_topics()

    @property
    def position(self) -> int:
        return self.view.max_tracking_id(self.view.tracking_key) or 0

    def run(self, batch_size: int = 500) -> int:
        """Apply every new notification; returns how many entries were projected."""
        done = 0
        while True:
            start = self.position + 1
            notifications = self.recorder.select_notifications(
                start=start, limit=batch_size, topics=self.topics
            )
            if not notifications:
                return done
            changes = ViewChanges(balances={}, lots={}, entries=[])
            events = [(n.id, self.mapper.to_domain_event(n)) for n in notifications]
            members = sorted({e.member_id for _, e in events})  # type: ignore[attr-defined]
            current = self.view.balances(members)
            for position, event in events:
                self._apply(event, position, current, changes)
            try:
                self.view.apply_changes(
                    changes, Tracking(self.view.tracking_key, notifications[-1].id)
                )
            except IntegrityError:
                continue  # another process projected these first: carry on from there
            done += len(events)

    @staticmethod
    def _apply(
        event: object, position: int, current: dict[str, BalanceRow], changes: ViewChanges
    ) -> None:
        message = entry_message(event, position)
        member = message.member_id
        row = current.get(member)
        lifetime = (row.lifetime_earned if row else 0) + lifetime_change(
            message.entry_type, message.details
        )
        tier = row.tier if row else None
        if isinstance(event, MemberAccount.TierAssigned):
            tier = event.tier
            review = event.override_until if event.locked else event.held_until
            changes.tier_reviews[member] = review if event.period_end or event.locked else None
        elif isinstance(event, MemberAccount.PointsEarned) and event.tier_held_until:
            changes.tier_reviews[member] = event.tier_held_until  # held longer
        changes.removed.discard(member)  # any entry after an undone enrolment enrols
        if isinstance(event, MemberAccount.EnrolmentUndone):
            # No member: its balance row goes (its entries and emptied lots stay).
            changes.removed.add(member)
            current.pop(member, None)
            changes.balances.pop(member, None)
            changes.tier_reviews.pop(member, None)
            changes.entries.append(
                EntryRow(
                    position=position,
                    member_id=member,
                    seq=message.seq,
                    entry_type=message.entry_type,
                    effective_at=message.effective_at,
                    body=message.model_dump(mode="json"),
                )
            )
            return
        updated: datetime = message.recorded_at
        current[member] = changes.balances[member] = BalanceRow(
            member_id=member,
            available=message.balance_after.available,
            pending=message.balance_after.pending,
            held=message.balance_after.held,
            lifetime_earned=lifetime,
            tier=tier,
            entries=message.seq,
            position=position,
            updated_at=updated,
        )
        if isinstance(event, MemberAccount.Entry):
            for lot in event.lots_after:
                changes.lots[(member, lot.lot_id)] = lot
        hold = getattr(event, "hold", None)
        if isinstance(hold, HoldRecord):
            changes.holds[hold.hold_id] = HoldRow(
                hold_id=hold.hold_id,
                member_id=member,
                reference=hold.reference,
                points=hold.points,
                status=hold.status,
                captured=hold.captured,
                placed_at=hold.placed_at,
                expires_at=hold.expires_at,
                resolved_at=hold.resolved_at,
            )
        changes.entries.append(
            EntryRow(
                position=position,
                member_id=member,
                seq=message.seq,
                entry_type=message.entry_type,
                effective_at=message.effective_at,
                body=message.model_dump(mode="json"),
            )
        )
