"""The ledger application: applies batches of inbound events and operator commands.

One batch is one transaction: every entry, receipt and rejection it produces, and the
position of the batch in its source (when given), are written together or not at all.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    JSONTranscoder,
    Notification,
    ProcessRecorder,
    Recording,
    Tracking,
)
from eventsourcing.utils import get_topic

from schemas import (
    ActivityCompleted,
    InboundEvent,
    InvalidInput,
    MemberEnrolled,
    PurchaseCompleted,
    PurchaseRefunded,
    RedemptionCancelled,
    RedemptionRequested,
    ReferralQualified,
    TierChanged,
    canonical_json,
    parse_inbound,
    payload_digest,
)
from services.ledger.application.batch_reads import select_events_after, select_events_of
from services.ledger.application.compact import CompactMapper, CompactTranscoder, stored_topics
from services.ledger.application.tables import created_concurrently
from services.ledger.application.transcodings import register_value_types
from services.ledger.domain.account import (
    MemberAccount,
    RedemptionRecord,
    SnapshotTooOld,
    account_id,
)
from services.ledger.domain.clock import Clock
from services.ledger.domain.errors import Declined
from services.ledger.domain.parking import ParkedEvent, ParkedEvents, parkable, parked_id
from services.ledger.domain.program import Program
from services.ledger.domain.program_record import ProgramRecord, program_record_id
from services.ledger.domain.provenance import Origin, Provenance
from services.ledger.domain.receipts import (
    APPLIED,
    DECLINED,
    PARKED,
    InboundReceipt,
    Rejection,
    receipt_id,
    rejection_id,
)
from services.ledger.domain.rules import Line

TIERS_CHANNEL = "tiers"  # the embedded tier policy's origin channel
T = TypeVar("T")

APPLIED_STATUS = "applied"
DUPLICATE_STATUS = "duplicate"
REJECTED_STATUS = "rejected"
PARKED_STATUS = "parked"  # waiting for what it depends on; see domain/parking.py


@dataclass(frozen=True, slots=True)
class Inbound:
    """Raw bytes of one inbound event and where they came from."""

    raw: bytes
    origin: Origin
    key: bytes | None = None  # the Kafka record's key, kept with a rejection


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one inbound event: applied, duplicate (of an earlier one) or rejected."""

    status: str
    event_id: str | None = None
    member_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    entries: tuple[str, ...] = ()
    original: str | None = None  # for a duplicate: the outcome of the first delivery


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """One re-drive attempt: `applied`, `declined` (again) or `skipped`, and why."""

    rejection_id: UUID
    event_id: str | None
    outcome: str
    detail: str


@dataclass
class _Batch:
    accounts: dict[str, MemberAccount | None] = field(default_factory=dict)
    receipts: dict[str, InboundReceipt] = field(default_factory=dict)
    others: list[Aggregate] = field(default_factory=list)
    rejection_ids: set[UUID] = field(default_factory=set)
    created: dict[str, None] = field(default_factory=dict)  # members enrolled, in order
    known: dict[str, InboundReceipt] = field(default_factory=dict)  # receipts already stored
    parked: dict[str, ParkedEvents | None] = field(default_factory=dict)  # by member
    # While a referral is applied: each account it loads, with its pending events then.
    loaded: dict[str, int] | None = None


class LedgerApplication(Application[UUID]):
    """Member accounts, receipts and rejections in one event store."""

    name = "ledger"
    # The library's settings for the mapper and transcoder: compact rows (compact.py; rows
    # of the library's form, written before, load as they did), written with orjson.
    # TRANSCODER_TOPIC and MAPPER_TOPIC in the environment override them.
    env: ClassVar[dict[str, str]] = {
        "TRANSCODER_TOPIC": get_topic(CompactTranscoder),
        "MAPPER_TOPIC": get_topic(CompactMapper),
    }
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {MemberAccount: 100}

    def __init__(self, program: Program, clock: Clock, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.program = program
        self.clock = clock
        # Accounts as this process last saw them stored, so a batch does not replay them from
        # the store. Another process may write them meanwhile, so every unit of work (a batch,
        # a command, a scheduler chunk, a re-drive) first brings the copies it will use up to
        # the store in one query (`_begin`): nothing, a refusal included, is decided from a
        # stale copy. A write between that query and the save conflicts on the account's
        # version: the unit fails as a whole and its accounts are dropped from the cache.
        self._accounts: OrderedDict[str, MemberAccount] = OrderedDict()
        self._checked: set[str] = set()  # cached accounts brought up to date in this unit
        self._cache_size = int(self.env.get("LEDGER_ACCOUNT_CACHE", "50000") or 0)
        self._writing = threading.RLock()
        # The events of this process's last save (`recent`).
        self._recent: dict[tuple[UUID | str, int], object] = {}
        self._record_program(program)

    def construct_recorder(self) -> ProcessRecorder:
        return created_concurrently(self.factory.process_recorder)

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        recordings = super()._record(processing_event)  # stored and committed
        self._recent = {
            (event.originator_id, event.originator_version): event
            for event in processing_event.events
        }
        return recordings

    def recent(self) -> Mapping[tuple[UUID | str, int], object]:
        """The events of this process's last save, by (aggregate id, version), as they were
        stored: the projection takes them from here instead of decoding the rows it reads
        back (a third of its work). A stored row's id and version name exactly one event."""
        return self._recent

    def construct_snapshot_store(self) -> EventStore[UUID]:
        return created_concurrently(super().construct_snapshot_store)

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        register_value_types(transcoder)

    @property
    def process_recorder(self) -> ProcessRecorder:
        assert isinstance(self.recorder, ProcessRecorder)
        return self.recorder

    # ----------------------------------------------------------------- ingest

    def apply_batch(
        self, items: Sequence[Inbound], tracking: Tracking | None = None
    ) -> list[Outcome]:
        """Validate, de-duplicate and apply `items` in order, then save in one transaction."""
        with self._writing:
            batch = _Batch()
            try:
                now = self.clock.now()
                parsed = [self._parse(item) for item in items]
                events = [event for event in parsed if not isinstance(event, InvalidInput)]
                batch.known = self._receipts({event.event_id for event in events})
                self._prefetch(batch, events)
                outcomes = [
                    self._apply_one(item, event, batch, now)
                    for item, event in zip(items, parsed, strict=True)
                ]
                self._save_batch(batch, tracking)
            except BaseException:
                self._forget(batch.accounts)
                raise
            self._remember(batch.accounts)
            return outcomes

    @staticmethod
    def _parse(item: Inbound) -> InboundEvent | InvalidInput:
        try:
            return parse_inbound(item.raw, topic=item.origin.topic)
        except InvalidInput as exc:
            return exc

    def _apply_one(
        self, item: Inbound, event: InboundEvent | InvalidInput, batch: _Batch, now: datetime
    ) -> Outcome:
        if isinstance(event, InvalidInput):
            return self._reject(batch, item, event.reason, event.detail, None, None, now)
        canonical = canonical_json(event)
        digest = hashlib.sha256(canonical).hexdigest()  # = payload_digest(event)
        payload = canonical.decode()
        earlier = batch.receipts.get(event.event_id) or batch.known.get(event.event_id)
        if earlier is not None:
            if earlier.digest != digest:
                return self._reject(
                    batch,
                    item,
                    "conflict",
                    f"event_id {event.event_id} was already used for a different payload",
                    event.event_id,
                    event.member_id,
                    now,
                )
            return Outcome(
                DUPLICATE_STATUS,
                event.event_id,
                event.member_id,
                earlier.reason,
                earlier.detail,
                earlier.entries,
                original=earlier.outcome,
            )
        tolerance = self.program.arrival.future_tolerance_seconds
        if event.occurred_at > now + timedelta(seconds=tolerance):
            # Never applied early, and no receipt: the same event sent in time applies.
            return self._reject(
                batch,
                item,
                "occurred_in_future",
                f"occurred_at {event.occurred_at.isoformat()} is more than {tolerance} s "
                f"after the ledger's clock ({now.isoformat()})",
                event.event_id,
                event.member_id,
                now,
            )
        provenance = Provenance(item.origin, event_id=event.event_id, event_type=event.type)
        try:
            entries = self._run_event(event, batch, provenance, now)
        except Declined as exc:
            park = self.program.arrival.park_hours > 0 and parkable(event.type, exc.reason)
            if park:
                self._park(batch, item, event, exc, payload, now)
                outcome = Outcome(
                    PARKED_STATUS, event.event_id, event.member_id, exc.reason, exc.detail
                )
            else:
                outcome = self._reject(
                    batch, item, exc.reason, exc.detail, event.event_id, event.member_id, now
                )
            batch.receipts[event.event_id] = InboundReceipt(
                event_id=event.event_id,
                digest=digest,
                event_type=event.type,
                member_id=event.member_id,
                outcome=PARKED if park else DECLINED,
                reason=exc.reason,
                detail=exc.detail,
                entries=(),
                origin=item.origin,
                received_at=now,
                payload=payload,
            )
            return outcome
        # Its receipt first: an event retried below may withdraw this very redemption (it
        # waits again, as in event time).
        receipt = batch.receipts[event.event_id] = InboundReceipt(
            event_id=event.event_id,
            digest=digest,
            event_type=event.type,
            member_id=event.member_id,
            outcome=APPLIED,
            reason=None,
            detail=None,
            entries=entries,
            origin=item.origin,
            received_at=now,
            payload=payload,
        )
        self._repark_withdrawn(batch, entries, now)
        for member in dict.fromkeys(e.split("#", 1)[0] for e in entries):  # in entry order
            self._retry_parked(batch, member, now)
        if receipt.outcome == PARKED:
            return Outcome(
                PARKED_STATUS,
                event.event_id,
                event.member_id,
                receipt.reason,
                receipt.detail,
                entries=entries,
            )
        return Outcome(APPLIED_STATUS, event.event_id, event.member_id, entries=entries)

    def _run_event(
        self, event: InboundEvent, batch: _Batch, provenance: Provenance, now: datetime
    ) -> tuple[str, ...]:
        """Apply one valid event to the batch's accounts; returns its entries (member#seq).

        Commands check before they change anything, so the only entries a declined event
        can leave are time-driven ones (release, expiry) that were due anyway: they are
        kept, which keeps the in-memory account and its pending events equal. An account
        made for a declined event is not kept."""
        involved = [event.member_id]
        if isinstance(event, ReferralQualified):
            involved.append(event.data.referee_member_id)
            referee = batch.accounts.get(event.data.referee_member_id)
            if referee is not None and referee.referred_by is not None:
                involved.append(referee.referred_by)  # may lose to an earlier referral
        before = {m: len(a.pending_events) for m in involved if (a := batch.accounts.get(m))}
        # A displaced referral's members may be loaded only now (its bonuses taken back):
        # every account a referral reaches is loaded through `_load`, which notes it.
        loaded = batch.loaded = {} if isinstance(event, ReferralQualified) else None
        created_before = len(batch.created)
        try:
            self._dispatch(event, batch, provenance, now)
        except Declined:
            # Enrolled by this event (an event only adds to `created`): not kept.
            if len(batch.created) > created_before:
                for member in list(batch.created)[created_before:]:
                    batch.accounts[member] = None
                    del batch.created[member]
            raise
        finally:
            batch.loaded = None
        if loaded:
            grown = {
                m
                for m, count in loaded.items()
                if (a := batch.accounts.get(m)) is not None
                and len(a.pending_events) > before.get(m, count)
            }
            if extra := grown.difference(involved):
                involved += [m for m in batch.accounts if m in extra]  # in the batch's order
        return tuple(
            f"{member}#{e.originator_version}"
            for member in dict.fromkeys(involved)
            if (account := batch.accounts.get(member)) is not None
            for e in account.pending_events[before.get(member, 0) :]
        )

    def _dispatch(
        self, event: InboundEvent, batch: _Batch, prov: Provenance, now: datetime
    ) -> None:
        program = self.program
        # Event time: each event is applied as of its own instant, never the wall clock
        # (`now` is when it was received); the scheduler brings accounts up to the clock.
        at = event.occurred_at
        del now
        if isinstance(event, PurchaseCompleted):
            d = event.data
            account = self._account(batch, event.member_id, prov, at, create=True)
            account.earn_purchase(
                program,
                order_id=d.order_id,
                currency=str(d.currency),
                total_minor=d.total_minor,
                lines=[
                    Line(ln.sku, ln.category, ln.quantity, ln.unit_price_minor) for ln in d.lines
                ],
                occurred_at=at,
                source=event.source,
                provenance=prov,
                now=at,
            )
        elif isinstance(event, PurchaseRefunded):
            r = event.data
            account = self._account(batch, event.member_id, prov, at, create=False)
            account.reverse_purchase(
                program,
                order_id=r.order_id,
                refund_id=r.refund_id,
                amount_minor=r.amount_minor,
                lines={ln.sku: ln.quantity for ln in r.lines} if r.lines else None,
                occurred_at=at,
                provenance=prov,
                now=at,
            )
        elif isinstance(event, ReferralQualified):
            self._refer(batch, event, prov)
        elif isinstance(event, RedemptionRequested):
            q = event.data
            account = self._account(batch, event.member_id, prov, at, create=False)
            account.redeem(
                program,
                redemption_id=q.redemption_id,
                reward_id=q.reward_id,
                points=q.points,
                occurred_at=at,
                provenance=prov,
                now=at,
            )
        elif isinstance(event, RedemptionCancelled):
            account = self._account(batch, event.member_id, prov, at, create=False)
            account.cancel_redemption(
                program,
                redemption_id=event.data.redemption_id,
                reason=event.data.reason,
                occurred_at=at,
                provenance=prov,
                now=at,
            )
        elif isinstance(event, ActivityCompleted):
            account = self._account(batch, event.member_id, prov, at, create=True)
            account.earn_activity(
                program,
                activity=event.data.activity,
                reference=event.data.reference,
                occurred_at=at,
                provenance=prov,
                now=at,
            )
        elif isinstance(event, MemberEnrolled):
            self._enrol(batch, event, prov)
        elif isinstance(event, TierChanged):
            raise Declined(
                "decided_by_ledger",
                "tiers are decided by the ledger itself; tier.changed is published, not applied",
            )
        else:  # pragma: no cover - the union is closed
            raise Declined("unknown_type", f"no handler for {event.type}")

    def _refer(self, batch: _Batch, event: ReferralQualified, prov: Provenance) -> None:
        """Pay both members, as of the referral's own time. A recorded referral that it
        precedes and rules out (of the same referee, or the referee's referral of this
        referrer) is displaced first, whatever the order the topics were read in: both of
        its bonuses are taken back by compensating entries, as if it had been declined."""
        program = self.program
        at = event.occurred_at
        referrer = self._account(batch, event.member_id, prov, at, create=True)
        referee_id = event.data.referee_member_id
        referee = self._account(batch, referee_id, prov, at, create=True)
        displaced = [
            (
                self._account(batch, loser_id, prov, at, create=False),
                self._account(batch, loser_referee_id, prov, at, create=False),
            )
            for loser_id, loser_referee_id in referee.displaced_referrals(
                referrer, at, event.event_id
            )
        ]
        # (occurred_at, event id) of each displaced referral, before the new one is paid
        claims = [loser_referee.referral_claim for _, loser_referee in displaced]
        referrer.earn_referral(
            program,
            role="referrer",
            other_member=referee_id,
            occurred_at=at,
            provenance=prov,
            now=at,
        )
        referee.earn_referral(
            program,
            role="referee",
            other_member=event.member_id,
            occurred_at=at,
            provenance=prov,
            now=at,
        )
        # Then the displaced bonuses are taken back: the earlier bonuses, earned late, have
        # taken the place of the displaced ones in what was spent since (`lots_reallocated`).
        for (loser, loser_referee), claim in zip(displaced, claims, strict=True):
            assert claim is not None
            undone = (claim[0], claim[1])  # a list in snapshots
            for account, role, other in (
                (loser, "referrer", loser_referee.member_id),
                (loser_referee, "referee", loser.member_id),
            ):
                account.reverse_referral(
                    program,
                    role=role,
                    other=other,
                    undone=undone,
                    winner=event.member_id,
                    circular=loser.member_id == referee_id,
                    occurred_at=at,
                    provenance=prov,
                )
            # Its referrer, if it enrolled them and they have nothing else, is no member
            # (in time order it was declined and enrolled nobody).
            loser.undo_enrolment(program, undone=undone[1], occurred_at=at, provenance=prov)

    def _enrol(self, batch: _Batch, event: MemberEnrolled, prov: Provenance) -> None:
        """Enrol; after an auto-enrolment (the member's first event arrived first) this
        completes the enrolment, so the signup bonus is given exactly once either way."""
        existing = self._load(batch, event.member_id)
        at = event.occurred_at
        if existing is None:
            account = MemberAccount.enrol(event.member_id, at, prov, auto=False)
            batch.accounts[event.member_id] = account
            batch.created[event.member_id] = None
        elif existing.auto_enrolled:
            account = existing
            account.complete_enrolment(self.program, at=at, provenance=prov)
        else:
            raise Declined("already_enrolled", f"{event.member_id} is already a member")
        signup = self.program.activities.get("signup")
        if signup is not None and not account.activity_counts.get("signup|ever"):
            account.earn_activity(
                self.program,
                activity="signup",
                reference=None,
                occurred_at=at,
                provenance=prov,
                now=at,
            )

    def _account(
        self, batch: _Batch, member_id: str, prov: Provenance, at: datetime, *, create: bool
    ) -> MemberAccount:
        account = self._load(batch, member_id)
        if account is not None and (create or account.is_member):
            return account  # one whose enrolment was undone is enrolled by its next entry
        if not create:
            raise Declined("unknown_member", f"{member_id} is not a member")
        if not self.program.auto_enrol:
            raise Declined("not_enrolled", f"{member_id} is not enrolled")
        account = MemberAccount.enrol(member_id, at, prov, auto=True)
        batch.accounts[member_id] = account
        batch.created[member_id] = None
        return account

    def _load(self, batch: _Batch, member_id: str) -> MemberAccount | None:
        if member_id not in batch.accounts:
            if batch.loaded is not None:
                batch.loaded.setdefault(member_id, 0)
            batch.accounts[member_id] = self._account_for_write(member_id)
        account = batch.accounts[member_id]
        if batch.loaded is not None and member_id not in batch.loaded:
            batch.loaded[member_id] = len(account.pending_events) if account is not None else 0
        return account

    def _receipts(self, event_ids: set[str]) -> dict[str, InboundReceipt]:
        """The stored receipts of these event ids, read in one query."""
        by_id = {receipt_id(event_id): event_id for event_id in event_ids}
        found: dict[str, InboundReceipt] = {}
        for aggregate_id, stored in select_events_of(self.recorder, by_id).items():
            receipt = self._project(stored)
            assert isinstance(receipt, InboundReceipt)
            found[by_id[aggregate_id]] = receipt
        return found

    def _prefetch(self, batch: _Batch, events: Sequence[InboundEvent]) -> None:
        """Bring the batch's cached accounts up to the store (one query), then read the ones
        that are not cached and the members' parked events (one more query)."""
        members = {event.member_id for event in events}
        members |= {e.data.referee_member_id for e in events if isinstance(e, ReferralQualified)}
        self._begin(m for m in members if m not in batch.accounts)
        wanted = {
            account_id(m): m for m in members if m not in self._accounts and m not in batch.accounts
        }
        parking = {parked_id(m): m for m in members if m not in batch.parked}
        stored = select_events_of(self.recorder, {**wanted, **parking})
        for aggregate_id, member in parking.items():
            found = stored.get(aggregate_id)
            parked = self._project(found) if found else None
            assert parked is None or isinstance(parked, ParkedEvents)
            batch.parked[member] = parked
        for aggregate_id, member in wanted.items():
            if aggregate_id not in stored:
                batch.accounts[member] = None
                continue
            account = self._project(stored[aggregate_id])
            assert isinstance(account, MemberAccount)
            batch.accounts[member] = account

    def _project(self, stored: Sequence[Any]) -> Aggregate:
        aggregate: Any = None
        for record in stored:
            event: Any = self.mapper.to_domain_event(record)
            aggregate = event.mutate(aggregate)
        assert isinstance(aggregate, Aggregate)
        return aggregate

    # ---------------------------------------------------------- account cache

    def _account_for_write(self, member_id: str) -> MemberAccount | None:
        if member_id in self._accounts and member_id not in self._checked:
            self._refresh([member_id])  # not among the ones `_begin` was given: check it now
        cached = self._accounts.get(member_id)
        if cached is not None:
            self._accounts.move_to_end(member_id)
            return cached
        return self.find_account(member_id)

    def _begin(self, members: Iterable[str]) -> None:
        """Start a unit of work that will use `members`' accounts: bring this process's cached
        copies of them up to the store, in one query whatever their histories' lengths."""
        self._checked = set()
        self._refresh(members)

    def _refresh(self, members: Iterable[str]) -> None:
        """Apply to each cached copy among `members` what was stored after its version
        (another process's writes), read for all of them in one query. A copy at least a
        snapshot interval behind is loaded again instead, from its latest snapshot."""
        fresh = [m for m in dict.fromkeys(members) if m not in self._checked]
        self._checked.update(fresh)
        cached = {account_id(m): m for m in fresh if m in self._accounts}
        if not cached:
            return
        limit = self.snapshotting_intervals[MemberAccount]
        versions = {aid: self._accounts[m].version for aid, m in cached.items()}
        for aggregate_id, stored in select_events_after(self.recorder, versions, limit).items():
            member = cached[aggregate_id]
            account: Any = self._accounts.pop(member)  # back only once brought up to date
            if len(stored) >= limit:  # maybe more: a snapshot and its tail cost less
                account = self.find_account(member)
            else:
                for record in stored:
                    event: Any = self.mapper.to_domain_event(record)
                    account = event.mutate(account)
            if isinstance(account, MemberAccount):
                self._accounts[member] = account

    def _remember(self, accounts: dict[str, MemberAccount | None]) -> None:
        if self._cache_size <= 0:
            return
        for member_id, account in accounts.items():
            if account is not None:
                self._accounts[member_id] = account
                self._accounts.move_to_end(member_id)
        while len(self._accounts) > self._cache_size:
            self._accounts.popitem(last=False)

    def _forget(self, members: Iterable[str]) -> None:
        for member_id in list(members):
            self._accounts.pop(member_id, None)
            self._checked.discard(member_id)

    # ---------------------------------------------------------------- parking

    def _parking(self, batch: _Batch, member_id: str) -> ParkedEvents | None:
        if member_id not in batch.parked:
            found = select_events_of(self.recorder, {parked_id(member_id): member_id})
            stored = found.get(parked_id(member_id))
            parked = self._project(stored) if stored else None
            assert parked is None or isinstance(parked, ParkedEvents)
            batch.parked[member_id] = parked
        return batch.parked[member_id]

    def _park(
        self,
        batch: _Batch,
        item: Inbound,
        event: InboundEvent,
        exc: Declined,
        payload: str,
        now: datetime,
    ) -> None:
        owner = _parked_under(event, exc)
        parking = self._parking(batch, owner)
        if parking is None:
            parking = batch.parked[owner] = ParkedEvents.open(owner)
        parking.park(
            ParkedEvent(
                event_id=event.event_id,
                event_type=event.type,
                payload=payload,
                raw_b64=base64.b64encode(item.raw).decode(),
                origin=item.origin,
                occurred_at=event.occurred_at,
                reason=exc.reason,
                detail=exc.detail,
                deadline=event.occurred_at + timedelta(hours=self.program.arrival.park_hours),
                parked_at=now,
            )
        )

    def _retry_parked(self, batch: _Batch, member_id: str, now: datetime) -> None:
        """The member's account changed: retry what waits on it, oldest first, until
        nothing more applies (an applied redemption may let its cancellation apply). What
        changed it may be dated after a waiting event's deadline while what it waits for,
        dated before, is still to come on another topic: so it is not declined here but
        only by the scheduler at its deadline, and the account only lets it apply on what
        is dated before its deadline (the points earned, the order, the redemption), as it
        would have in event time."""
        parking = batch.parked.get(member_id)
        progress = parking is not None and bool(parking.items)
        # A bound, so that no cycle of withdrawals and retries can hold the batch; what
        # still waits then is retried at the member's next change or declined at its
        # deadline.
        rounds = 2 * len(parking.items) + 4 if parking is not None else 0
        while progress and parking is not None and rounds > 0:
            rounds -= 1
            progress = False
            for waiting in parking.in_order():
                try:
                    event = parse_inbound(waiting.payload.encode(), topic=waiting.origin.topic)
                except InvalidInput as invalid:  # parked before the schema refused it
                    refused = Declined(invalid.reason, invalid.detail)
                    self._settle_parked(batch, parking, waiting, DECLINED, refused, (), now)
                    progress = True
                    continue
                prov = Provenance(waiting.origin, event_id=waiting.event_id, event_type=event.type)
                try:
                    entries = self._run_event(event, batch, prov, now)
                except Declined as exc:
                    if parkable(event.type, exc.reason):
                        continue  # still waiting
                    self._settle_parked(batch, parking, waiting, DECLINED, exc, (), now)
                else:
                    self._settle_parked(batch, parking, waiting, APPLIED, None, entries, now)
                    self._repark_withdrawn(batch, entries, now)
                progress = True

    def _repark_withdrawn(self, batch: _Batch, entries: tuple[str, ...], now: datetime) -> None:
        """Redemptions that these entries withdrew (an earlier-dated event, read late, left
        them unfunded in event time) wait again: their events are parked once more."""
        wanted = set(entries)
        for member_id in dict.fromkeys(e.split("#", 1)[0] for e in entries):
            account = batch.accounts.get(member_id)
            if account is None:
                continue
            for entry in account.pending_events:
                if f"{member_id}#{entry.originator_version}" not in wanted:
                    continue
                respent = getattr(entry, "respent", None)
                if respent is None:
                    continue
                for record in respent.redemptions:
                    if record.status == "withdrawn" and record.event_id is not None:
                        self._repark(batch, member_id, record, now)

    def _repark(
        self, batch: _Batch, member_id: str, record: RedemptionRecord, now: datetime
    ) -> None:
        event_id = record.event_id
        assert event_id is not None
        assert record.dated is not None
        receipt = batch.receipts.get(event_id) or batch.known.get(event_id)
        if receipt is None:
            receipt = self._receipts({event_id})[event_id]
        batch.receipts[event_id] = receipt
        detail = (
            f"{record.points} points requested; an earlier-dated event read later took the "
            "points it had spent"
        )
        receipt.withdraw("insufficient_points", detail, now)
        parking = self._parking(batch, member_id)
        if parking is None:
            parking = batch.parked[member_id] = ParkedEvents.open(member_id)
        payload = receipt.payload or ""
        parking.park(
            ParkedEvent(
                event_id=event_id,
                event_type=receipt.event_type,
                payload=payload,
                raw_b64=base64.b64encode(payload.encode()).decode(),
                origin=receipt.origin,
                occurred_at=record.dated,
                reason="insufficient_points",
                detail=detail,
                deadline=record.dated + timedelta(hours=self.program.arrival.park_hours),
                parked_at=now,
            )
        )

    def _settle_parked(
        self,
        batch: _Batch,
        parking: ParkedEvents,
        waiting: ParkedEvent,
        outcome: str,
        exc: Declined | None,
        entries: tuple[str, ...],
        now: datetime,
        at_deadline: bool = False,
    ) -> None:
        receipt = batch.receipts.get(waiting.event_id) or batch.known.get(waiting.event_id)
        if receipt is None:
            receipt = self._receipts({waiting.event_id})[waiting.event_id]
        batch.receipts[waiting.event_id] = receipt
        receipt.settle(
            outcome,
            reason=exc.reason if exc else None,
            detail=exc.detail if exc else None,
            entries=entries,
            at=now,
            at_deadline=at_deadline,
        )
        parking.unpark(waiting.event_id, outcome, now)
        if exc is not None:
            raw = base64.b64decode(waiting.raw_b64)
            self._reject(
                batch,
                Inbound(raw, waiting.origin),
                exc.reason,
                exc.detail,
                waiting.event_id,
                parking.member_id,
                now,
            )

    def parked(self) -> list[tuple[str, ParkedEvent]]:
        """Every event waiting on a member now (member id, event), oldest first."""
        found: list[tuple[str, ParkedEvent]] = []
        for member_id in self._parked_members():
            parking: Any = self.repository.get(parked_id(member_id))
            found += [(member_id, item) for item in parking.in_order()]
        return sorted(found, key=lambda x: (x[1].occurred_at, x[1].event_id))

    def _parked_members(self) -> list[str]:
        """Every member who has ever had an event parked (read from the notification log)."""
        return [
            self.mapper.to_domain_event(n).member_id  # type: ignore[attr-defined]
            for n in self.notifications_of(ParkedEvents.Opened)
        ]

    def notifications_of(self, event_class: type) -> Iterator[Notification]:
        """The notification log's records of one event class, oldest first, paged."""
        start = 1
        while True:
            page = self.process_recorder.select_notifications(
                start=start, limit=1000, topics=stored_topics(event_class)
            )
            if not page:
                return
            yield from page
            start = page[-1].id + 1

    def expire_parked(self, now: datetime | None = None) -> int:
        """Decline (and dead-letter) parked events whose deadline has passed at `now`: the
        parked events of every member read in one query, the declines saved together."""
        at = now or self.clock.now()
        declined = 0
        members = {parked_id(m): m for m in self._parked_members()}
        with self._writing:
            batch = _Batch()
            for aggregate_id, stored in select_events_of(self.recorder, members).items():
                parking = self._project(stored)
                assert isinstance(parking, ParkedEvents)
                batch.parked[members[aggregate_id]] = parking
                for waiting in parking.in_order():
                    if waiting.deadline <= at:
                        exc = _deadline_passed(waiting)
                        self._settle_parked(
                            batch, parking, waiting, DECLINED, exc, (), at, at_deadline=True
                        )
                        declined += 1
            if declined:
                self._save_batch(batch, None)
        return declined

    def _reject(
        self,
        batch: _Batch,
        item: Inbound,
        reason: str,
        detail: str,
        event_id: str | None,
        member_id: str | None,
        now: datetime,
    ) -> Outcome:
        rid = rejection_id(item.origin, hashlib.sha256(item.raw).hexdigest())
        if rid not in batch.rejection_ids:  # already stored ones are dropped at the save
            batch.rejection_ids.add(rid)
            batch.others.append(
                Rejection(
                    origin=item.origin,
                    reason=reason,
                    detail=detail,
                    raw_b64=base64.b64encode(item.raw).decode(),
                    event_id=event_id,
                    member_id=member_id,
                    rejected_at=now,
                    key_b64=None if item.key is None else base64.b64encode(item.key).decode(),
                )
            )
        return Outcome(REJECTED_STATUS, event_id, member_id, reason, detail)

    def _exists(self, aggregate_id: UUID) -> bool:
        return bool(self.recorder.select_events(aggregate_id, limit=1))

    def _save_batch(self, batch: _Batch, tracking: Tracking | None) -> None:
        aggregates: list[Aggregate] = [a for a in batch.accounts.values() if a is not None]
        aggregates += [p for p in batch.parked.values() if p is not None]
        aggregates += batch.receipts.values()
        # The same bytes at the same position are one rejection, however often they are
        # read (a file ingested twice, a replayed range): keep only the new ones.
        stored = select_events_of(self.recorder, batch.rejection_ids)
        aggregates += [a for a in batch.others if a.id not in stored]
        self.save_with_tracking(aggregates, tracking)

    def save_with_tracking(
        self, aggregates: Iterable[Aggregate], tracking: Tracking | None
    ) -> None:
        processing = ProcessingEvent[UUID](tracking=tracking)
        # What `processing.collect_events` does, without its two runtime Protocol checks
        # per aggregate (tens of microseconds each, on every event of the hot path).
        for aggregate in aggregates:
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate.id] = aggregate
        if not processing.events and tracking is None:
            return
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)

    # ------------------------------------------------------------ operations

    def find_account(self, member_id: str) -> MemberAccount | None:
        try:
            account: Any = self.repository.get(account_id(member_id))
        except AggregateNotFoundError:
            return None
        except SnapshotTooOld:  # written by 0.1: fold the events instead
            stored = select_events_of(self.recorder, {account_id(member_id): member_id})
            account = self._project(stored[account_id(member_id)])
        assert isinstance(account, MemberAccount)
        return account

    def operate(
        self,
        member_id: str,
        command: Callable[[MemberAccount, datetime], Any],
    ) -> tuple[str, ...]:
        """Run an operator command against one account and save it; returns its entries."""
        return self.run_command(member_id, command)[1]

    def run_command(
        self,
        member_id: str,
        command: Callable[[MemberAccount, datetime], T],
        *,
        missing: Declined | None = None,
        attempts: int = 50,
    ) -> tuple[T, tuple[str, ...]]:
        """Load (from this process's cache when it has the account, brought up to the store
        first), run, save; on a version conflict (another process wrote the account between
        the two) start again from the store.

        A declined command keeps the time-driven entries it made first (a due expiry),
        since they were due regardless. Returns the command's result and its entries."""
        for attempt in range(attempts):
            with self._writing:
                self._begin([member_id])
                account = self._account_for_write(member_id)
                if account is None or not account.is_member:  # or its enrolment undone
                    raise missing or Declined("unknown_member", f"{member_id} is not a member")
                try:
                    now = self.clock.now()
                    start = account.version
                    try:
                        result = command(account, now)
                    except Declined:
                        if account.pending_events:
                            self.save(account)
                        raise
                    entries = tuple(
                        f"{member_id}#{v}" for v in range(start + 1, account.version + 1)
                    )
                    if account.pending_events:
                        self.save(account)
                except Declined:
                    self._remember({member_id: account})
                    raise
                except IntegrityError:
                    self._forget([member_id])
                    time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311 - jitter
                    continue
                except BaseException:
                    self._forget([member_id])
                    raise
                self._remember({member_id: account})
                return result, entries
        raise Declined("busy", f"{member_id} is being written by others; try again")

    def adjust(
        self,
        member_id: str,
        points: int,
        *,
        reason: str,
        actor: str,
        allow_negative: bool = False,
        request_id: str | None = None,
        channel: str = "ops",
    ) -> tuple[str, ...]:
        prov = Provenance(Origin(channel=channel, actor=actor, request_id=request_id))
        return self.operate(
            member_id,
            lambda account, now: account.adjust(
                self.program,
                points=points,
                reason=reason,
                actor=actor,
                allow_negative=allow_negative,
                provenance=prov,
                now=now,
            ),
        )

    def assign_tier(
        self,
        member_id: str,
        tier_id: str | None,
        *,
        reason: str,
        actor: str,
        until: datetime | None = None,
        locked: bool = False,
    ) -> tuple[str, ...]:
        """An ops override: ends at `until` (or never); `locked` keeps automatic changes out."""
        prov = Provenance(Origin(channel="ops", actor=actor))
        return self.operate(
            member_id,
            lambda account, now: account.assign_tier(
                self.program,
                tier_id=tier_id,
                reason=reason,
                provenance=prov,
                now=now,
                until=until,
                locked=locked,
            ),
        )

    def advance_members(self, member_ids: Iterable[str], now: datetime | None = None) -> int:
        """Release and expire what is due at `now` for these members; returns entries made."""
        at = now or self.clock.now()
        made = 0
        remaining = iter(member_ids)
        with self._writing:
            while group := list(islice(remaining, 100)):  # one query and one save per group
                try:
                    self._begin(group)
                    chunk: dict[str, MemberAccount | None] = {}
                    for member_id in group:
                        account = self._account_for_write(member_id)
                        if account is None:
                            continue
                        made += account.advance(self.program, at)
                        if account.pending_events:
                            chunk[member_id] = account
                    self._save_accounts(chunk)
                except BaseException:
                    self._forget(group)
                    raise
        return made

    def _save_accounts(self, accounts: dict[str, MemberAccount | None]) -> None:
        self.save_with_tracking([a for a in accounts.values() if a is not None], None)
        self._remember(accounts)

    def rejections(self) -> list[Rejection]:
        """Every recorded rejection, oldest first."""
        found: list[Rejection] = []
        for notification in self.notifications_of(Rejection.Recorded):
            rejection: Any = self.repository.get(UUID(str(notification.originator_id)))
            assert isinstance(rejection, Rejection)
            found.append(rejection)
        return found

    def redrive(
        self,
        *,
        actor: str,
        reasons: Iterable[str] = (),
        event_ids: Iterable[str] = (),
    ) -> list[RedriveResult]:
        """Apply declined events again (e.g. a redemption that overtook the purchase funding
        it). Each attempt is recorded on its rejection; one that succeeds also on the event's
        receipt, so a later re-send is a duplicate of the applied event. Invalid input and
        conflicting payloads are never applied: they must be fixed and sent again."""
        wanted_reasons, wanted_ids = set(reasons), set(event_ids)
        results = []
        for rejection in self.rejections():
            if wanted_reasons and rejection.reason not in wanted_reasons:
                continue
            if wanted_ids and rejection.event_id not in wanted_ids:
                continue
            if any(outcome == APPLIED for _, outcome, _ in rejection.redriven):
                continue  # done before
            results.append(self._redrive_one(rejection, actor))
        return results

    def _redrive_one(self, rejection: Rejection, actor: str) -> RedriveResult:
        event_id = rejection.event_id
        if event_id is None:
            return RedriveResult(rejection.id, None, "skipped", "invalid input: fix and resend")
        raw = base64.b64decode(rejection.raw_b64)
        try:
            event = parse_inbound(raw, topic=rejection.origin.topic)  # it parsed when rejected
        except InvalidInput as invalid:  # under an older schema, which it no longer passes
            return RedriveResult(
                rejection.id, event_id, "skipped", f"no longer valid input: {invalid}"
            )
        with self._writing:
            batch = _Batch()
            try:
                receipt = self._receipts({event_id}).get(event_id)
                if receipt is None or receipt.digest != payload_digest(event):
                    return RedriveResult(
                        rejection.id, event_id, "skipped", "another payload holds this event_id"
                    )
                if receipt.outcome != DECLINED:
                    return RedriveResult(
                        rejection.id, event_id, "skipped", f"the event is {receipt.outcome}"
                    )
                now = self.clock.now()
                origin = replace(rejection.origin, actor=actor)
                provenance = Provenance(origin, event_id=event_id, event_type=event.type)
                self._prefetch(batch, [event])
                try:
                    entries = self._run_event(event, batch, provenance, now)
                except Declined as exc:
                    result = RedriveResult(rejection.id, event_id, "declined", exc.reason)
                else:
                    receipt.reapplied(entries, actor, now)
                    result = RedriveResult(rejection.id, event_id, APPLIED, ", ".join(entries))
                rejection.redriven_by(actor, result.outcome, now)
                accounts = [a for a in batch.accounts.values() if a is not None]
                self.save_with_tracking([*accounts, receipt, rejection], None)
            except BaseException:
                self._forget(batch.accounts)
                raise
            self._remember(batch.accounts)
            return result

    def _record_program(self, program: Program) -> None:
        """Keep every program version the ledger applied, so any entry can be explained."""
        pid = program_record_id(program.version)
        if not self._exists(pid):
            with contextlib.suppress(IntegrityError):  # another process starting just now
                self.save(ProgramRecord(version=program.version, document=program.canonical_json()))

    def program_document(self, version: str) -> str | None:
        try:
            record: Any = self.repository.get(program_record_id(version))
        except AggregateNotFoundError:
            return None
        assert isinstance(record, ProgramRecord)
        return record.document


def _deadline_passed(waiting: ParkedEvent) -> Declined:
    """The decline of a parked event whose deadline passed: its own reason, and how long."""
    return Declined(
        waiting.reason, f"{waiting.detail} (waited until {waiting.deadline.isoformat()})"
    )


def _parked_under(event: InboundEvent, exc: Declined) -> str:
    """The member whose account change may let a parked event apply: its own member, but
    for a referral the member whose recorded referral rules it out (the referee, already
    referred; its referrer, who the referee referred first), since only that account
    changes when an earlier referral read later displaces that referral."""
    if isinstance(event, ReferralQualified) and exc.reason == "referee_already_referred":
        return event.data.referee_member_id
    return event.member_id
