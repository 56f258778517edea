"""Earn rules as pure functions of the program: what a purchase, activity or referral earns.

Rounding rule: each line's points are computed exactly (Decimal), summed per order, and the
order's total is rounded once with the program's rounding mode (floor by default: 1 point
per dollar gives 12 points for $12.55). The whole points are then shared out to the lines by
largest remainder, so refunds of single lines take back exactly what those lines earned.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from services.ledger.domain.errors import Declined
from services.ledger.domain.program import (
    ActivityLimit,
    ExpiryRounding,
    Program,
    Rounding,
)


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    category: str | None
    quantity: int
    unit_price_minor: int

    @property
    def value_minor(self) -> int:
        return self.quantity * self.unit_price_minor


@dataclass(frozen=True, slots=True)
class LinePoints:
    sku: str
    quantity: int
    value_minor: int
    points: int


@dataclass(frozen=True, slots=True)
class EarnQuote:
    points: int
    lines: tuple[LinePoints, ...]
    rule_ids: tuple[str, ...]
    explanation: str


def _round(value: Decimal, rounding: Rounding) -> int:
    mode = ROUND_FLOOR if rounding is Rounding.FLOOR else ROUND_HALF_UP
    return int(value.to_integral_value(rounding=mode))


def local_date(program: Program, at: datetime) -> date:
    return at.astimezone(program.zone).date()


def share_out(total: int, weights: Sequence[Decimal]) -> tuple[int, ...]:
    """Split `total` whole points in proportion to `weights` by largest remainder."""
    weight_sum = sum(weights, Decimal(0))
    if total == 0 or weight_sum == 0:
        return tuple(0 for _ in weights)
    exact = [Decimal(total) * w / weight_sum for w in weights]
    floors = [int(e.to_integral_value(rounding=ROUND_FLOOR)) for e in exact]
    left = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return tuple(floors)


def quote_purchase(
    program: Program,
    *,
    currency: str,
    total_minor: int,
    lines: Sequence[Line],
    occurred_at: datetime,
    source: str | None,
    tier_id: str | None,
) -> EarnQuote:
    """Points for one order before the per-member daily cap (which needs the account)."""
    rate_cfg = program.currencies.get(currency)
    if rate_cfg is None:
        raise Declined(
            "unsupported_currency",
            f"the program earns in {', '.join(sorted(program.currencies))}, not {currency}",
        )
    rule_ids: list[str] = []
    notes: list[str] = []
    rate = rate_cfg.points_per_unit
    partner = program.partners.get(source) if source else None
    if partner is not None and source is not None:
        rate = partner.points_per_unit
        rule_ids.append(f"partner:{source}")
        notes.append(f"partner {source} rate {rate}/{currency}")
    else:
        rule_ids.append(f"base:{currency}")
        notes.append(f"{rate} pt/{currency}")
    tier = program.tier(tier_id)
    tier_mult = tier.earn_multiplier if tier is not None else Decimal(1)
    if tier is not None and tier_mult != 1:
        rule_ids.append(f"tier:{tier.id}")
        notes.append(f"tier {tier.id} x{tier_mult}")

    day = local_date(program, occurred_at)
    basis = list(lines) or [Line("*", None, 1, total_minor)]
    scale = Decimal(10) ** rate_cfg.minor_units
    exacts: list[Decimal] = []
    for line in basis:
        mult: Decimal | None = None  # the highest matching multiplier, even if below 1
        for m in program.earn.multipliers:
            if (line.category is not None and line.category in m.categories) or (
                line.sku in m.skus
            ):
                mult = m.multiplier if mult is None else max(mult, m.multiplier)
                if m.id not in rule_ids:
                    rule_ids.append(m.id)
                    notes.append(f"{m.id} x{m.multiplier}")
        promo_mult: Decimal | None = None
        for promo in program.earn.promotions:
            if promo.starts_on and day < promo.starts_on:
                continue
            if promo.ends_on and day > promo.ends_on:
                continue
            if promo.weekdays and day.weekday() not in {w.number for w in promo.weekdays}:
                continue
            if promo.categories and line.category not in promo.categories:
                continue
            promo_mult = (
                promo.multiplier if promo_mult is None else max(promo_mult, promo.multiplier)
            )
            if promo.id not in rule_ids:
                rule_ids.append(promo.id)
                notes.append(f"{promo.id} x{promo.multiplier}")
        exacts.append(
            Decimal(line.value_minor)
            / scale
            * rate
            * (Decimal(1) if mult is None else mult)
            * (Decimal(1) if promo_mult is None else promo_mult)
            * tier_mult
        )

    points = _round(sum(exacts, Decimal(0)), program.earn.rounding)
    cap = program.earn.caps.per_order
    if cap is not None and points > cap:
        notes.append(f"capped at {cap} per order (was {points})")
        rule_ids.append("cap:per_order")
        points = cap
    shares = share_out(points, exacts)
    line_points = tuple(
        LinePoints(line.sku, line.quantity, line.value_minor, share)
        for line, share in zip(basis, shares, strict=True)
    )
    explanation = f"{total_minor} {currency} minor units: " + ", ".join(notes)
    return EarnQuote(points, line_points, tuple(rule_ids), explanation)


def cap_quote(quote: EarnQuote, limit: int, why: str) -> EarnQuote:
    """Reduce a quote to `limit` points, re-sharing them across its lines."""
    if quote.points <= limit:
        return quote
    shares = share_out(limit, [Decimal(lp.points) for lp in quote.lines])
    lines = tuple(
        LinePoints(lp.sku, lp.quantity, lp.value_minor, s)
        for lp, s in zip(quote.lines, shares, strict=True)
    )
    return EarnQuote(
        limit,
        lines,
        (*quote.rule_ids, "cap:per_member_per_day"),
        f"{quote.explanation}, {why} (was {quote.points})",
    )


def add_months(day: date, months: int) -> date:
    month_index = day.month - 1 + months
    year = day.year + month_index // 12
    month = month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def expiry_for(program: Program, earned_at: datetime) -> datetime | None:
    """When a lot earned at `earned_at` expires (the instant from which it is gone)."""
    months = program.expiry.months_after_earn
    if months is None:
        return None
    zone = program.zone
    local = earned_at.astimezone(zone)
    target = add_months(local.date(), months)
    rounding = program.expiry.round_to
    if rounding is ExpiryRounding.END_OF_MONTH:
        first_next = add_months(target.replace(day=1), 1)
        return datetime.combine(first_next, time(), tzinfo=zone).astimezone(earned_at.tzinfo)
    if rounding is ExpiryRounding.END_OF_YEAR:
        return datetime.combine(date(target.year + 1, 1, 1), time(), tzinfo=zone).astimezone(
            earned_at.tzinfo
        )
    return datetime.combine(target, local.timetz()).astimezone(earned_at.tzinfo)


def release_for(program: Program, earned_at: datetime) -> datetime | None:
    days = program.earn.pending_days
    return earned_at + timedelta(days=days) if days else None


def activity_period(program: Program, limit: ActivityLimit, at: datetime) -> str | None:
    """The period an activity's limit counts in (None: no limit)."""
    day = local_date(program, at)
    if limit is ActivityLimit.ONCE:
        return "ever"
    if limit is ActivityLimit.PER_YEAR:
        return str(day.year)
    if limit is ActivityLimit.PER_DAY:
        return day.isoformat()
    return None


def pro_rata(points: int, part: int, whole: int) -> int:
    """Points attributable to `part` of `whole`, rounded down (cumulative use avoids drift)."""
    if whole <= 0:
        return 0
    return points * min(part, whole) // whole
