"""Keeps the read models up to date from the ledger's notification log, exactly once.

Each batch of notifications is applied to the view together with the position of its last
notification, in one transaction, so a crash never applies an entry twice or skips one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Mapper, ProcessRecorder, Tracking

from schemas.outbound import LedgerEntry
from services.ledger.application.compact import stored_topics
from services.ledger.application.entries import entry_fields, entry_json, lifetime_change
from services.ledger.application.views import (
    BalanceRow,
    EntryRow,
    HoldRow,
    LedgerView,
    ViewChanges,
)
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.holds import HoldRecord

log = logging.getLogger(__name__)


def account_topics() -> list[str]:
    """Topics of every MemberAccount event class (the notifications the view follows), the
    short ones its rows are written under now and the long ones of rows written before."""
    classes: list[type[Any]] = [MemberAccount.Enrolled, *MemberAccount.Entry.__subclasses__()]
    return stored_topics(*classes)


class LedgerProjection:
    def __init__(
        self,
        recorder: ProcessRecorder,
        mapper: Mapper[UUID],
        view: LedgerView,
        observers: Sequence[Callable[[LedgerEntry], None]] = (),
        recent: Callable[[], Mapping[tuple[UUID | str, int], object]] | None = None,
    ) -> None:
        self.recorder = recorder
        self.mapper = mapper
        #: The events this process stored last, by (aggregate id, version): those are taken
        #: as they are instead of decoded from the rows read back (`LedgerApplication.
        #: recent`); any other row is decoded.
        self.recent = recent
        self.view = view
        self.topics = account_topics()
        self.observers = observers  # told each entry this projection wrote, in order

    @property
    def position(self) -> int:
        return self.view.max_tracking_id(self.view.tracking_key) or 0

    def run(self, batch_size: int = 2_000) -> int:
        """Apply every new notification; returns how many entries were projected.

        A batch of 2,000 entries is one transaction: one ingest batch of 500 inbound events
        (about 800 entries) or more is projected in one commit, not two or three (on
        SQLite a commit is a sync to disk, 4 to 8 ms here)."""
        done = 0
        while True:
            start = self.position + 1
            notifications = self.recorder.select_notifications(
                start=start, limit=batch_size, topics=self.topics
            )
            if not notifications:
                return done
            changes = ViewChanges(balances={}, lots={}, entries=[])
            recent = self.recent() if self.recent is not None else {}
            decode = self.mapper.to_domain_event
            events = [
                (n.id, recent.get((n.originator_id, n.originator_version)) or decode(n))
                for n in notifications
            ]
            members = sorted({e.member_id for _, e in events})  # type: ignore[attr-defined]
            current = self.view.balances(members)
            before = dict(current)
            fields = [self._apply(event, position, current, changes) for position, event in events]
            # The observers' messages (none are built without observers).
            messages = [LedgerEntry.model_validate(f) for f in fields] if self.observers else []
            for member, row in changes.balances.items():  # the program summary's changes
                changes.summary.balance(before.get(member), row)
            for member in changes.removed:  # no member any more: its row went
                changes.summary.balance(before.get(member), None)
            for entry in changes.entries:
                changes.summary.entry(entry)
            try:
                self.view.apply_changes(
                    changes, Tracking(self.view.tracking_key, notifications[-1].id)
                )
            except IntegrityError:
                continue  # another process projected these first: carry on from there
            for observe in self.observers:
                for message in messages:
                    observe(message)
            done += len(events)

    @staticmethod
    def _apply(
        event: object, position: int, current: dict[str, BalanceRow], changes: ViewChanges
    ) -> dict[str, Any]:
        """Add one entry to the batch's changes; returns its fields (`entry_fields`).

        The entry's body is `entry_json` of its fields: what the message would dump to,
        without building the message (only the observers, if any, are given one)."""
        fields = entry_fields(event, position)
        member: str = fields["member_id"]
        seq: int = fields["seq"]
        entry_type: str = fields["entry_type"]
        row = current.get(member)
        lifetime = (row.lifetime_earned if row else 0) + lifetime_change(
            entry_type, fields["details"]
        )
        tier = row.tier if row else None
        if isinstance(event, MemberAccount.TierAssigned):
            tier = event.tier
            review = event.override_until if event.locked else event.held_until
            changes.tier_reviews[member] = review if event.period_end or event.locked else None
        elif isinstance(event, MemberAccount.PointsEarned) and event.tier_held_until:
            changes.tier_reviews[member] = event.tier_held_until  # held longer
        changes.entries.append(
            EntryRow(
                position=position,
                member_id=member,
                seq=seq,
                entry_type=entry_type,
                effective_at=fields["effective_at"],
                body=entry_json(fields),
            )
        )
        changes.removed.discard(member)  # any entry after an undone enrolment enrols
        if isinstance(event, MemberAccount.EnrolmentUndone):
            # No member: its balance row goes (its entries and emptied lots stay).
            changes.removed.add(member)
            current.pop(member, None)
            changes.balances.pop(member, None)
            changes.tier_reviews.pop(member, None)
            return fields
        updated: datetime = fields["recorded_at"]
        balance = fields["balance_after"]
        current[member] = changes.balances[member] = BalanceRow(
            member_id=member,
            available=balance["available"],
            pending=balance["pending"],
            held=balance["held"],
            lifetime_earned=lifetime,
            tier=tier,
            entries=seq,
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
        return fields


class ProjectionRunner:
    """The one projection runner of a process: a thread that follows the notification log
    (woken after each write in this process, else every `poll_seconds` for what other
    processes wrote), and the way a writer waits until the views hold its own writes.

    Projection runs never overlap within a process (one lock). `catch_up` gives
    read-your-writes: once it returns, every notification recorded before it was called is
    in the views. With the thread running, the writer wakes it and waits for it to pass
    that point (concurrent writers share one run); without it (a one-shot CLI command, a
    test), or if the thread fails to get there in time, the caller runs the projection
    itself under the same lock."""

    def __init__(
        self,
        projection: Callable[[], LedgerProjection],
        recorder: ProcessRecorder,
        *,
        poll_seconds: float = 0.5,
        wait_seconds: float = 10.0,
    ) -> None:
        self._projection = projection
        self.recorder = recorder
        self.poll_seconds = poll_seconds
        self.wait_seconds = wait_seconds
        self._run_lock = threading.Lock()
        self._passed = threading.Condition()
        self._through = 0  # every notification up to this id is in the views
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    @property
    def through(self) -> int:
        return self._through

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="projection", daemon=True)
        self._wake.set()  # catch up at once
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def switch(self, change: Callable[[], None]) -> None:
        """Change the views (a rebuild switched table sets) between two runs; nothing is
        then known to be projected into the new ones."""
        with self._run_lock:
            change()
            with self._passed:
                self._through = 0

    def step(self) -> int:
        """Project everything recorded so far; returns how many entries were projected."""
        with self._run_lock:
            target = self.recorder.max_notification_id() or 0
            done = self._projection().run()
            with self._passed:
                self._through = max(self._through, target)
                self._failed = False
                self._passed.notify_all()
            return done

    def catch_up(self, target: int | None = None, *, read: bool = False) -> None:
        """Return once every notification up to `target` (default: every one recorded
        before this call) is in the views.

        A `read` (a GET) never projects while the thread runs: it waits for the thread, at
        most `wait_seconds`, then answers from the views as they are."""
        if target is None:
            target = self.recorder.max_notification_id() or 0
        if self._through >= target:
            return
        if self.running:
            self._wake.set()
            with self._passed:
                passed = self._passed.wait_for(
                    lambda: self._through >= target or self._failed, self.wait_seconds
                )
            if read or (passed and self._through >= target):
                return
        self.step()  # no runner, or it failed or is stuck: project here (errors surface)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:
                log.exception("projection run failed; trying again")
                with self._passed:
                    self._failed = True
                    self._passed.notify_all()
                self._stop.wait(self.poll_seconds)
