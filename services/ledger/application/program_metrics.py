"""Program figures from the statement projection: liability, issued/redeemed/expired, activity.

Ratios are integer basis points (1/100 of a percent), rounded down: no floats.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from services.ledger.domain import postings as acc

if TYPE_CHECKING:
    from services.ledger.application.views import BalanceRow, EntryRow

ACTIVE_TYPES = frozenset({"points_earned", "points_redeemed", "hold_captured"})


@dataclass
class Figures:
    members: int = 0
    outstanding: int = 0
    issued: int = 0
    redeemed: int = 0
    expired: int = 0
    per_tier: dict[str, int] = field(default_factory=dict)
    active: int = 0
    retention_bp: int = 0
    per_day: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def redemption_rate_bp(self) -> int:
        return bp(self.redeemed, self.issued)

    @property
    def breakage_bp(self) -> int:
        return bp(self.expired, self.issued)


def bp(part: int, whole: int) -> int:
    return part * 10_000 // whole if whole > 0 else 0


def entry_figures(body: Mapping[str, Any]) -> tuple[int, int, int]:
    """(issued, redeemed, expired) by one entry, from its postings."""
    moved = Counter[str]()
    for posting in body["postings"]:
        moved[posting["account"]] += posting["amount"]
    return -moved[acc.ISSUED], moved[acc.REDEEMED], moved[acc.EXPIRED]


def day_of(at: datetime) -> str:
    """The (UTC) day an entry's figures are counted on."""
    return at.astimezone(UTC).date().isoformat()


@dataclass
class SummaryChanges:
    """What one projection batch adds to the program summary the metrics are read from:
    figures per day, members and points outstanding per tier, and each member's first and
    last activity per day (for the active and retention counts)."""

    days: dict[str, list[int]] = field(default_factory=dict)  # day -> [issued, redeemed, expired]
    tiers: dict[str, list[int]] = field(default_factory=dict)  # tier -> [members, outstanding]
    activity: dict[tuple[str, str], tuple[datetime, datetime]] = field(default_factory=dict)

    def entry(self, row: EntryRow) -> None:
        issued, redeemed, expired = entry_figures(row.body)
        if issued or redeemed or expired:
            day = self.days.setdefault(day_of(row.effective_at), [0, 0, 0])
            day[0] += issued
            day[1] += redeemed
            day[2] += expired
        if row.entry_type in ACTIVE_TYPES:
            key = (row.member_id, day_of(row.effective_at))
            at = row.effective_at
            first, last = self.activity.get(key, (at, at))
            self.activity[key] = (min(first, at), max(last, at))

    def balance(self, before: BalanceRow | None, after: BalanceRow | None) -> None:
        """A member's balance row changed (`after` None: it went, an enrolment undone)."""
        if before is not None:
            tier = self.tiers.setdefault(before.tier or "none", [0, 0])
            tier[0] -= 1
            tier[1] -= before.available + before.pending + before.held
        if after is None:
            return
        tier = self.tiers.setdefault(after.tier or "none", [0, 0])
        tier[0] += 1
        tier[1] += after.available + after.pending + after.held


@dataclass(frozen=True)
class Summary:
    """The program summary as stored: what `from_summary` makes the figures of."""

    days: dict[str, tuple[int, int, int]]
    tiers: dict[str, tuple[int, int]]  # tier -> (members, outstanding)
    active: int  # members active in the period ending now
    retained: int  # of those active in the period before, how many are active in this one
    active_before: int  # members active in the period before


def from_summary(summary: Summary) -> Figures:
    """The figures `compute` gives, from the summary the projection keeps."""
    figures = Figures()
    for tier, (members, outstanding) in summary.tiers.items():
        figures.members += members
        figures.outstanding += outstanding
        if members:
            figures.per_tier[tier] = members
    figures.per_tier = dict(sorted(figures.per_tier.items()))
    days = dict(sorted(summary.days.items()))
    for issued, redeemed, expired in days.values():
        figures.issued += issued
        figures.redeemed += redeemed
        figures.expired += expired
    figures.per_day = days
    figures.active = summary.active
    figures.retention_bp = bp(summary.retained, summary.active_before)
    return figures


def compute(
    balances: Iterable[BalanceRow], entries: Iterable[EntryRow], now: datetime, period_days: int
) -> Figures:
    """The figures from every balance and entry (the oracle of the summary's figures)."""
    figures = Figures()
    tiers: Counter[str] = Counter()
    members: set[str] = set()
    for row in balances:
        members.add(row.member_id)
        figures.members += 1
        figures.outstanding += row.available + row.pending + row.held
        tiers[row.tier or "none"] += 1
    figures.per_tier = dict(sorted(tiers.items()))
    period = timedelta(days=period_days)
    this: set[str] = set()
    last: set[str] = set()
    days: dict[str, list[int]] = {}
    for entry in entries:
        issued, redeemed, expired = entry_figures(entry.body)
        figures.issued += issued
        figures.redeemed += redeemed
        figures.expired += expired
        if issued or redeemed or expired:
            day = days.setdefault(entry.effective_at.date().isoformat(), [0, 0, 0])
            day[0] += issued
            day[1] += redeemed
            day[2] += expired
        if entry.entry_type in ACTIVE_TYPES:
            if now - period < entry.effective_at <= now:
                this.add(entry.member_id)
            elif now - 2 * period < entry.effective_at <= now - period:
                last.add(entry.member_id)
    # Members only: one whose enrolment was undone (its referral displaced) is none.
    this &= members
    last &= members
    figures.active = len(this)
    figures.retention_bp = bp(len(last & this), len(last))
    figures.per_day = {d: (v[0], v[1], v[2]) for d, v in sorted(days.items())}
    return figures
