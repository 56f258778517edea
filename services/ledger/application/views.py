"""Read models the ledger keeps (balances, lots, statements) and the port that stores them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from eventsourcing.persistence import Tracking

from services.ledger.application.program_metrics import Summary, SummaryChanges
from services.ledger.domain.lots import Lot


@dataclass(frozen=True, slots=True)
class BalanceRow:
    member_id: str
    available: int
    pending: int
    held: int
    lifetime_earned: int
    tier: str | None
    entries: int
    position: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EntryRow:
    position: int
    member_id: str
    seq: int
    entry_type: str
    effective_at: datetime
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HoldRow:
    hold_id: str
    member_id: str
    reference: str
    points: int
    status: str
    captured: int
    placed_at: datetime
    expires_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class BalanceSources:
    """What a member's balance as of an instant is worked out from, read in one snapshot.

    `since` holds the member's entries from the last one the balance counts onward, in the
    order they were recorded: the entries before the first one effective after the instant
    are counted, that one and everything recorded after it are not. It is empty when no
    entry is effective after the instant (the balance is today's, with what is due by
    then). `tier_set` is the newest-recorded tier change effective by the instant."""

    balance: BalanceRow
    lots: list[Lot]
    since: list[EntryRow]
    tier_set: EntryRow | None


@dataclass
class ViewChanges:
    """Everything one projection batch writes, applied with its tracking position."""

    balances: dict[str, BalanceRow]
    lots: dict[tuple[str, str], Lot]
    entries: list[EntryRow]
    holds: dict[str, HoldRow] = field(default_factory=dict)
    tier_reviews: dict[str, datetime | None] = field(default_factory=dict)  # None: none due
    removed: set[str] = field(default_factory=set)  # members no more (enrolment undone)
    summary: SummaryChanges = field(default_factory=SummaryChanges)  # program metrics


class LedgerView(Protocol):
    """Balances, lots and statement rows, written exactly once per ledger position."""

    tracking_key: str

    def create_table(self) -> None: ...

    def max_tracking_id(self, application_name: str) -> int | None: ...

    def apply_changes(self, changes: ViewChanges, tracking: Tracking) -> None: ...

    def balance(self, member_id: str) -> BalanceRow | None: ...

    def balances(self, member_ids: list[str]) -> dict[str, BalanceRow]: ...

    def find_members(self, prefix: str, limit: int) -> list[BalanceRow]: ...

    def summary(self, now: datetime, period_days: int) -> Summary: ...

    def outstanding(self) -> int: ...

    def all_balances(self) -> list[BalanceRow]: ...

    def lots(self, member_id: str) -> list[Lot]: ...

    def open_lots(self, member_id: str) -> list[Lot]: ...

    def lots_of(
        self, member_ids: list[str], *, open_only: bool = False
    ) -> dict[str, list[Lot]]: ...

    def balance_sources(self, member_id: str, at: datetime) -> BalanceSources | None: ...

    def published_entries(self, first: int, last: int) -> list[tuple[int, str, str, str]]: ...

    def all_lots(self) -> list[tuple[str, Lot]]: ...

    def entries(
        self, member_id: str, *, before_seq: int | None = None, limit: int = 50
    ) -> list[EntryRow]: ...

    def holds(self, member_id: str) -> list[HoldRow]: ...

    def all_entries(self) -> list[EntryRow]: ...

    def members_due(self, now: datetime, limit: int = 10_000) -> list[str]: ...

    def reset(self) -> None: ...
