"""Receipts and rejections: what became of every inbound event, recorded with the ledger.

A receipt claims an `event_id` for good: a re-sent event gets the original outcome back and
changes nothing. A rejection keeps input the ledger could not apply, with its reason and the
original bytes, so ops can list it, publish it to the dead-letter topic and re-drive it.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from services.ledger.domain.provenance import Origin

_NAMESPACE = uuid5(NAMESPACE_URL, "https://loyalty-ledger.invalid/inbound")

APPLIED = "applied"
DECLINED = "declined"
PARKED = "parked"  # waiting on the member for what it depends on (see parking.py)


def receipt_id(event_id: str) -> UUID:
    return uuid5(_NAMESPACE, f"event:{event_id}")


def rejection_id(origin: Origin, raw_digest: str) -> UUID:
    return uuid5(_NAMESPACE, f"rejection:{origin.key()}:{raw_digest}")


class InboundReceipt(Aggregate):
    """The outcome of one inbound event, keyed by its `event_id`."""

    class Recorded(Aggregate.Created):
        event_id: str
        digest: str
        event_type: str
        member_id: str
        outcome: str
        reason: str | None
        detail: str | None
        entries: tuple[str, ...]
        origin: Origin
        received_at: datetime
        payload: str | None = None  # canonical JSON of the event, for what-if and audit

    def __init__(
        self,
        event_id: str,
        digest: str,
        event_type: str,
        member_id: str,
        outcome: str,
        reason: str | None,
        detail: str | None,
        entries: tuple[str, ...],
        origin: Origin,
        received_at: datetime,
        payload: str | None = None,
    ) -> None:
        self.event_id = event_id
        self.digest = digest
        self.event_type = event_type
        self.member_id = member_id
        self.outcome = outcome
        self.reason = reason
        self.detail = detail
        self.entries = tuple(entries)
        self.origin = origin
        self.received_at = received_at
        self.payload = payload

    class Reapplied(Aggregate.Event):
        """A declined event applied on a later try (a re-drive of its dead letter)."""

        entries: tuple[str, ...]
        actor: str
        at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InboundReceipt)
            aggregate.outcome = APPLIED
            aggregate.reason = None
            aggregate.detail = None
            aggregate.entries = tuple(self.entries)

    def reapplied(self, entries: tuple[str, ...], actor: str, at: datetime) -> None:
        if self.outcome != DECLINED:
            raise ValueError(f"only a declined event can be applied again, not {self.outcome}")
        self.trigger_event(self.Reapplied, entries=entries, actor=actor, at=at)

    class Withdrawn(Aggregate.Event):
        """An applied redemption that an earlier-dated event, read late, left unfunded in
        event time: it waits (parked) for points again, until its deadline."""

        reason: str
        detail: str
        at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InboundReceipt)
            aggregate.outcome = PARKED
            aggregate.reason = self.reason
            aggregate.detail = self.detail
            aggregate.entries = ()

    def withdraw(self, reason: str, detail: str, at: datetime) -> None:
        if self.outcome != APPLIED:
            raise ValueError(f"only an applied event can be withdrawn, not {self.outcome}")
        self.trigger_event(self.Withdrawn, reason=reason, detail=detail, at=at)

    class Settled(Aggregate.Event):
        """A parked event applied once what it needed arrived, or declined at its deadline."""

        outcome: str
        reason: str | None
        detail: str | None
        entries: tuple[str, ...]
        at: datetime
        # Declined by the scheduler because its deadline passed on the wall clock (not on
        # a retry); False for events recorded before this was kept.
        at_deadline: bool = False

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InboundReceipt)
            aggregate.outcome = self.outcome
            aggregate.reason = self.reason
            aggregate.detail = self.detail
            aggregate.entries = tuple(self.entries)

    def settle(
        self,
        outcome: str,
        *,
        reason: str | None,
        detail: str | None,
        entries: tuple[str, ...],
        at: datetime,
        at_deadline: bool = False,
    ) -> None:
        if self.outcome != PARKED:
            raise ValueError(f"only a parked event can be settled, not {self.outcome}")
        self.trigger_event(
            self.Settled,
            outcome=outcome,
            reason=reason,
            detail=detail,
            entries=entries,
            at=at,
            at_deadline=at_deadline,
        )

    @staticmethod
    def create_id(event_id: str) -> UUID:
        return receipt_id(event_id)


class Rejection(Aggregate):
    """Input that was not applied: the reason, the original bytes (base64) and where it was.

    `key_b64` is the Kafka record's key as received (base64; None: the record had none, or
    the input did not come from Kafka), so its dead letter carries the same key."""

    class Recorded(Aggregate.Created):
        class_version = 2

        origin: Origin
        reason: str
        detail: str
        raw_b64: str
        event_id: str | None
        member_id: str | None
        rejected_at: datetime
        key_b64: str | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 did not keep the key. Its dead letters were published keyed by the
            member id (none when unknown), which is also the key the contract asks producers
            to send: a rejection from Kafka reads as keyed so, and is published again as it
            was then."""
            member_id = state.get("member_id")
            origin = state.get("origin")
            from_kafka = isinstance(origin, Origin) and origin.channel == "kafka"
            state["key_b64"] = (
                base64.b64encode(member_id.encode()).decode() if from_kafka and member_id else None
            )

    class Redriven(Aggregate.Event):
        outcome: str
        actor: str
        at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Rejection)
            aggregate.redriven.append((self.at, self.outcome, self.actor))

    def __init__(
        self,
        origin: Origin,
        reason: str,
        detail: str,
        raw_b64: str,
        event_id: str | None,
        member_id: str | None,
        rejected_at: datetime,
        key_b64: str | None = None,
    ) -> None:
        self.origin = origin
        self.reason = reason
        self.detail = detail
        self.raw_b64 = raw_b64
        self.event_id = event_id
        self.member_id = member_id
        self.rejected_at = rejected_at
        self.key_b64 = key_b64
        self.redriven: list[tuple[datetime, str, str]] = []

    def redriven_by(self, actor: str, outcome: str, at: datetime) -> None:
        """Record one re-drive attempt: `applied`, or why it was declined again."""
        self.trigger_event(self.Redriven, outcome=outcome, actor=actor, at=at)

    @staticmethod
    def create_id(origin: Origin, raw_b64: str) -> UUID:
        """The same bytes at the same position are one rejection, however often re-read."""
        return rejection_id(origin, hashlib.sha256(base64.b64decode(raw_b64)).hexdigest())
