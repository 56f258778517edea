"""Qualification windows: where a period ends and which activity a window holds.

Calendar years are taken in the program's time zone; rolling windows are N months long.
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from services.ledger.domain.program import TierQualification
from services.ledger.domain.rules import add_months


def _shift_months(at: datetime, months: int, zone: ZoneInfo) -> datetime:
    local = at.astimezone(zone)
    moved = datetime.combine(add_months(local.date(), months), local.timetz())
    return moved.astimezone(at.tzinfo)


def _year_start(year: int, zone: ZoneInfo, like: datetime) -> datetime:
    return datetime.combine(date(year, 1, 1), time(), tzinfo=zone).astimezone(like.tzinfo)


def period_end(q: TierQualification, zone: ZoneInfo, at: datetime) -> datetime:
    """End (exclusive) of the qualification period that a tier reached at `at` is held for.

    Calendar year: the next 1 January; rolling N months: N months after `at`.
    """
    months = q.rolling_months
    if months is None:
        return _year_start(at.astimezone(zone).year + 1, zone, at)
    return _shift_months(at, months, zone)


def next_period_end(q: TierQualification, zone: ZoneInfo, end: datetime) -> datetime:
    """The end of the period that follows the one ending at `end`."""
    months = q.rolling_months
    if months is None:
        return _year_start(end.astimezone(zone).year + 1, zone, end)
    return _shift_months(end, months, zone)


def period_start(q: TierQualification, zone: ZoneInfo, end: datetime) -> datetime:
    """Start (inclusive) of the period that ends at `end` (exclusive).

    Calendar year: the year before `end` when `end` is a 1 January (a period end), else
    the year `end` falls in (an override that ends mid-year is reviewed on that year).
    """
    months = q.rolling_months
    if months is None:
        local = end.astimezone(zone)
        at_year_start = (local.month, local.day, local.time()) == (1, 1, time())
        return _year_start(local.year - 1 if at_year_start else local.year, zone, end)
    return _shift_months(end, -months, zone)


def window_start(q: TierQualification, zone: ZoneInfo, at: datetime) -> datetime:
    """Start of the window that counts at instant `at` (for upgrades).

    Calendar year: 1 January of `at`'s year (inclusive); rolling: N months before `at`
    (exclusive), so an entry exactly N months old no longer counts.
    """
    months = q.rolling_months
    if months is None:
        return _year_start(at.astimezone(zone).year, zone, at)
    return _shift_months(at, -months, zone)
