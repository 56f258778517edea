"""Program figures from the statement projection: liability, issued/redeemed/expired, activity.

Ratios are integer basis points (1/100 of a percent), rounded down: no floats.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.ledger.application.views import BalanceRow, EntryRow
from services.ledger.domain import postings as acc

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


def compute(
    balances: Iterable[BalanceRow], entries: Iterable[EntryRow], now: datetime, period_days: int
) -> Figures:
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
        moved = Counter[str]()
        for posting in entry.body["postings"]:
            moved[posting["account"]] += posting["amount"]
        issued, redeemed, expired = -moved[acc.ISSUED], moved[acc.REDEEMED], moved[acc.EXPIRED]
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
