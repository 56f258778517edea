"""Events parked on a member until what they depend on arrives.

Kafka orders a member's events within a topic only: a redemption may be read before the
purchase (another topic) that funds it, a refund before its order, a cancellation before its
redemption, and a referral ruled out by a later-dated one before an even earlier referral
(another partition) that displaces it. Such an event is not declined: it is parked here,
retried whenever the member's account changes, and declined with its reason only once its
deadline (its own time plus the program's `arrival.park_hours`) has passed on the
scheduler's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from services.ledger.domain.provenance import Origin

PARKING_NAMESPACE = uuid5(NAMESPACE_URL, "https://loyalty-ledger.invalid/parked")

# What an event may wait for, by type: the reasons that mean "not there yet".
PARKABLE: dict[str, frozenset[str]] = {
    "redemption.requested": frozenset({"insufficient_points", "unknown_member"}),
    "purchase.refunded": frozenset({"unknown_order", "unknown_member"}),
    "redemption.cancelled": frozenset({"unknown_redemption", "unknown_member"}),
    # The referral that rules it out may yet be displaced by an earlier one still to come.
    "referral.qualified": frozenset({"referee_already_referred", "circular_referral"}),
}


@lru_cache(maxsize=65536)
def parked_id(member_id: str) -> UUID:
    return uuid5(PARKING_NAMESPACE, f"parked:{member_id}")


def parkable(event_type: str, reason: str) -> bool:
    return reason in PARKABLE.get(event_type, frozenset())


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    event_id: str
    event_type: str
    payload: str  # canonical JSON of the event
    raw_b64: str  # the original bytes, for the dead letter if it is declined in the end
    origin: Origin
    occurred_at: datetime
    reason: str
    detail: str
    deadline: datetime
    parked_at: datetime  # wall clock


class ParkedEvents(Aggregate):
    """One member's parked events, by event id."""

    class Opened(Aggregate.Created):
        member_id: str

    class Parked(Aggregate.Event):
        item: ParkedEvent

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, ParkedEvents)
            aggregate.items[self.item.event_id] = self.item

    class Unparked(Aggregate.Event):
        event_id: str
        outcome: str  # applied | declined
        at: datetime

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, ParkedEvents)
            aggregate.items.pop(self.event_id, None)

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id
        self.items: dict[str, ParkedEvent] = {}

    @staticmethod
    def create_id(member_id: str) -> UUID:
        return parked_id(member_id)

    @classmethod
    def open(cls, member_id: str) -> ParkedEvents:
        return cls._create(cls.Opened, member_id=member_id)

    def park(self, item: ParkedEvent) -> None:
        self.trigger_event(self.Parked, item=item)

    def unpark(self, event_id: str, outcome: str, at: datetime) -> None:
        self.trigger_event(self.Unparked, event_id=event_id, outcome=outcome, at=at)

    def in_order(self) -> list[ParkedEvent]:
        """Retried oldest first (event time, then event id), whatever the arrival order."""
        return sorted(self.items.values(), key=lambda i: (i.occurred_at, i.event_id))
