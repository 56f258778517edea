"""Earn rules, rounding, expiry and the small arithmetic helpers, with exact numbers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.ledger.adapters.program_file import load_program
from services.ledger.domain.errors import Declined
from services.ledger.domain.program import ActivityLimit, Program
from services.ledger.domain.rules import (
    EarnQuote,
    Line,
    activity_period,
    add_months,
    cap_quote,
    expiry_for,
    local_date,
    pro_rata,
    quote_purchase,
    release_for,
    share_out,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "services" / "ledger" / "examples"

# 2026-06-10 is a Wednesday, outside every promotion of the example programs.
PLAIN_DAY = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def coffee() -> Program:
    return load_program(EXAMPLES / "coffee.yaml")


@pytest.fixture(scope="module")
def retailer() -> Program:
    return load_program(EXAMPLES / "retailer.yaml")


def make_program(**overrides: Any) -> Program:
    data: dict[str, Any] = {
        "id": "test",
        "name": "Test",
        "timezone": "UTC",
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
    }
    data.update(overrides)
    return Program.model_validate(data)


def quote(
    program: Program,
    total_minor: int,
    *,
    lines: Sequence[Line] = (),
    at: datetime = PLAIN_DAY,
    currency: str = "USD",
    source: str | None = None,
    tier: str | None = None,
) -> EarnQuote:
    return quote_purchase(
        program,
        currency=currency,
        total_minor=total_minor,
        lines=lines,
        occurred_at=at,
        source=source,
        tier_id=tier,
    )


def points(
    program: Program,
    total_minor: int,
    *,
    lines: Sequence[Line] = (),
    at: datetime = PLAIN_DAY,
    currency: str = "USD",
    source: str | None = None,
    tier: str | None = None,
) -> int:
    return quote(
        program,
        total_minor,
        lines=lines,
        at=at,
        currency=currency,
        source=source,
        tier=tier,
    ).points


def gbp(pounds: int) -> int:
    return pounds * 100


# ------------------------------------------------------------------ rounding


@pytest.mark.parametrize(
    ("total_minor", "expected"),
    [(1255, 12), (1299, 12), (1200, 12), (99, 0), (0, 0)],
)
def test_floor_rounding_drops_the_fraction_of_the_order(total_minor: int, expected: int) -> None:
    assert points(make_program(earn={"rounding": "floor"}), total_minor) == expected


@pytest.mark.parametrize(
    ("total_minor", "expected"),
    [(1255, 13), (1250, 13), (1249, 12), (1200, 12), (49, 0), (50, 1)],
)
def test_half_up_rounding_rounds_halves_up(total_minor: int, expected: int) -> None:
    assert points(make_program(earn={"rounding": "half_up"}), total_minor) == expected


def test_the_coffee_program_gives_12_points_for_12_55(coffee: Program) -> None:
    # 2026-11-16 is a Monday in New York: no double points.
    assert points(coffee, 1255, at=datetime(2026, 11, 16, 15, 0, tzinfo=UTC)) == 12


def test_rounding_happens_once_per_order_not_per_line() -> None:
    lines = [Line(sku, None, 1, 99) for sku in ("a", "b", "c")]
    result = quote(make_program(), 297, lines=lines)
    # 0.99 + 0.99 + 0.99 = 2.97 -> 2 (per-line floor would give 0).
    assert result.points == 2
    assert sum(lp.points for lp in result.lines) == 2


def test_points_per_unit_can_be_fractional() -> None:
    program = make_program(currencies={"USD": {"minor_units": 2, "points_per_unit": "1.5"}})
    assert points(program, 1001) == 15  # 10.01 * 1.5 = 15.015


# --------------------------------------------------------------- minor units


def test_jpy_has_no_minor_units() -> None:
    program = make_program(currencies={"JPY": {"minor_units": 0, "points_per_unit": "0.01"}})
    # 12,345 yen * 0.01 = 123.45 -> 123.
    assert points(program, 12345, currency="JPY") == 123


def test_three_minor_units() -> None:
    program = make_program(currencies={"KWD": {"minor_units": 3, "points_per_unit": "10"}})
    # 1.234 KWD * 10 = 12.34 -> 12.
    assert points(program, 1234, currency="KWD") == 12


def test_each_currency_uses_its_own_rate(retailer: Program) -> None:
    assert points(retailer, gbp(10), currency="GBP") == 20
    assert points(retailer, 1000, currency="EUR") == 15


def test_unsupported_currency_is_declined(retailer: Program) -> None:
    with pytest.raises(Declined) as excinfo:
        quote(retailer, 1000, currency="USD")
    assert excinfo.value.reason == "unsupported_currency"
    assert "EUR, GBP" in excinfo.value.detail


# --------------------------------------------------------------- multipliers

MULTIPLIERS = make_program(
    earn={
        "multipliers": [
            {"id": "coffee-x2", "multiplier": "2", "categories": ["coffee"]},
            {"id": "beans-x5", "multiplier": "5", "skus": ["BEAN-1"]},
            {"id": "coffee-x3", "multiplier": "3", "categories": ["coffee", "tea"]},
        ]
    }
)


def test_category_multiplier(retailer: Program) -> None:
    line = Line("TENT-1", "tents", 1, gbp(100))
    # 100 GBP * 2 points * x3 outdoor.
    assert points(retailer, gbp(100), lines=[line], currency="GBP") == 600


def test_sku_multiplier() -> None:
    line = Line("BEAN-1", None, 1, 1000)
    assert points(MULTIPLIERS, 1000, lines=[line]) == 50


def test_highest_matching_multiplier_applies_not_the_product() -> None:
    sku_and_category = Line("BEAN-1", "coffee", 1, 1000)  # x2, x3, x5 -> x5
    two_categories = Line("LATTE", "coffee", 1, 1000)  # x2, x3 -> x3
    assert points(MULTIPLIERS, 1000, lines=[sku_and_category]) == 50
    assert points(MULTIPLIERS, 1000, lines=[two_categories]) == 30


def test_multipliers_apply_per_line() -> None:
    lines = [
        Line("BEAN-1", "coffee", 1, 1000),  # 50
        Line("CHAI", "tea", 2, 500),  # 10 * 3 = 30
        Line("MUG", "merch", 1, 1000),  # 10
        Line("GIFT", None, 1, 1000),  # 10
    ]
    result = quote(MULTIPLIERS, 4000, lines=lines)
    assert result.points == 100
    assert [lp.points for lp in result.lines] == [50, 30, 10, 10]
    assert "beans-x5" in result.rule_ids
    assert "coffee-x3" in result.rule_ids


def test_no_lines_earns_on_the_order_total() -> None:
    result = quote(MULTIPLIERS, 1234)
    assert result.points == 12
    assert [(lp.sku, lp.quantity, lp.value_minor, lp.points) for lp in result.lines] == [
        ("*", 1, 1234, 12)
    ]


def test_a_multiplier_below_one_applies_when_it_is_the_only_match(retailer: Program) -> None:
    line = Line("SALE-1", "clearance", 1, gbp(10))
    # 10 GBP * 2 points * x0.5 clearance.
    assert points(retailer, gbp(10), lines=[line], currency="GBP") == 10


def test_the_highest_matching_multiplier_applies_even_when_one_is_below_one() -> None:
    program = make_program(
        earn={
            "multipliers": [
                {"id": "half", "multiplier": "0.5", "categories": ["clearance"]},
                {"id": "quarter", "multiplier": "0.25", "skus": ["OLD-1"]},
                {"id": "double", "multiplier": "2", "skus": ["BEST-1"]},
            ]
        }
    )
    assert points(program, 1000, lines=[Line("OLD-1", "clearance", 1, 1000)]) == 5
    assert points(program, 1000, lines=[Line("OLD-1", None, 1, 1000)]) == 2
    assert points(program, 1000, lines=[Line("BEST-1", "clearance", 1, 1000)]) == 20
    assert points(program, 1000, lines=[Line("OTHER", "food", 1, 1000)]) == 10


# ---------------------------------------------------------------- promotions


def test_weekday_promotion_uses_the_program_time_zone(coffee: Program) -> None:
    # 02:00Z on Wednesday 18 November is 21:00 on Tuesday 17 November in New York.
    assert points(coffee, 1255, at=datetime(2026, 11, 18, 2, 0, tzinfo=UTC)) == 25
    # 05:00Z is midnight: Wednesday in New York.
    assert points(coffee, 1255, at=datetime(2026, 11, 18, 5, 0, tzinfo=UTC)) == 12
    # 04:59Z on Tuesday is still Monday in New York, 05:00Z is Tuesday.
    assert points(coffee, 1255, at=datetime(2026, 11, 17, 4, 59, tzinfo=UTC)) == 12
    assert points(coffee, 1255, at=datetime(2026, 11, 17, 5, 0, tzinfo=UTC)) == 25


def test_weekday_promotion_names_its_rule(coffee: Program) -> None:
    result = quote(coffee, 1255, at=datetime(2026, 11, 17, 15, 0, tzinfo=UTC))
    assert result.rule_ids == ("base:USD", "double-tuesday")
    monday = quote(coffee, 1255, at=datetime(2026, 11, 16, 15, 0, tzinfo=UTC))
    assert monday.rule_ids == ("base:USD",)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), 20),
        (datetime(2026, 12, 1, 0, 0, tzinfo=UTC), 40),
        (datetime(2026, 12, 12, 12, 0, tzinfo=UTC), 40),
        (datetime(2026, 12, 24, 23, 59, 59, tzinfo=UTC), 40),
        (datetime(2026, 12, 25, 0, 0, tzinfo=UTC), 20),
    ],
)
def test_date_range_promotion_is_inclusive(retailer: Program, at: datetime, expected: int) -> None:
    assert points(retailer, gbp(10), at=at, currency="GBP") == expected


def test_date_range_promotion_uses_the_program_time_zone() -> None:
    program = make_program(
        timezone="Asia/Tokyo",
        earn={
            "promotions": [
                {
                    "id": "june",
                    "multiplier": "2",
                    "starts_on": "2026-06-01",
                    "ends_on": "2026-06-30",
                }
            ]
        },
    )
    # 15:00Z on 31 May is midnight on 1 June in Tokyo; 15:00Z on 30 June is 1 July there.
    assert points(program, 1000, at=datetime(2026, 5, 31, 14, 59, tzinfo=UTC)) == 10
    assert points(program, 1000, at=datetime(2026, 5, 31, 15, 0, tzinfo=UTC)) == 20
    assert points(program, 1000, at=datetime(2026, 6, 30, 14, 59, tzinfo=UTC)) == 20
    assert points(program, 1000, at=datetime(2026, 6, 30, 15, 0, tzinfo=UTC)) == 10


def test_open_ended_date_ranges() -> None:
    program = make_program(
        earn={
            "promotions": [
                {"id": "from-july", "multiplier": "2", "starts_on": "2026-07-01"},
                {"id": "until-feb", "multiplier": "3", "ends_on": "2026-02-28"},
            ]
        }
    )
    assert points(program, 1000, at=datetime(2026, 2, 28, 23, 0, tzinfo=UTC)) == 30
    assert points(program, 1000, at=datetime(2026, 3, 1, 0, 0, tzinfo=UTC)) == 10
    assert points(program, 1000, at=datetime(2026, 6, 30, 23, 0, tzinfo=UTC)) == 10
    assert points(program, 1000, at=datetime(2030, 1, 1, 0, 0, tzinfo=UTC)) == 20


def test_category_promotion_applies_only_to_matching_lines() -> None:
    program = make_program(
        earn={"promotions": [{"id": "bakery-x3", "multiplier": "3", "categories": ["bakery"]}]}
    )
    lines = [
        Line("CROISSANT", "bakery", 2, 250),  # 5.00 * 3 = 15
        Line("LATTE", "coffee", 1, 500),  # 5
        Line("GIFT", None, 1, 500),  # 5
    ]
    result = quote(program, 1500, lines=lines)
    assert [lp.points for lp in result.lines] == [15, 5, 5]
    assert result.points == 25


def test_promotion_needs_weekday_and_date_range_together() -> None:
    program = make_program(
        earn={
            "promotions": [
                {
                    "id": "december-fridays",
                    "multiplier": "2",
                    "starts_on": "2026-12-01",
                    "ends_on": "2026-12-31",
                    "weekdays": ["friday"],
                }
            ]
        }
    )
    assert points(program, 1000, at=datetime(2026, 12, 4, 12, tzinfo=UTC)) == 20  # Friday
    assert points(program, 1000, at=datetime(2026, 12, 3, 12, tzinfo=UTC)) == 10  # Thursday
    assert points(program, 1000, at=datetime(2026, 11, 27, 12, tzinfo=UTC)) == 10  # Friday


def test_promotions_do_not_stack_the_highest_wins() -> None:
    program = make_program(
        earn={
            "promotions": [
                {"id": "weekend-x2", "multiplier": "2", "weekdays": ["saturday", "sunday"]},
                {"id": "sale-x3", "multiplier": "3", "starts_on": "2026-06-01"},
                {"id": "sale-x1-5", "multiplier": "1.5", "ends_on": "2026-12-31"},
            ]
        }
    )
    saturday = datetime(2026, 6, 13, 12, 0, tzinfo=UTC)
    assert points(program, 1000, at=saturday) == 30  # not 2 * 3 * 1.5 = 90
    before_sale = datetime(2026, 5, 30, 12, 0, tzinfo=UTC)  # a Saturday
    assert points(program, 1000, at=before_sale) == 20


def test_a_promotion_below_one_applies() -> None:
    program = make_program(
        earn={"promotions": [{"id": "slow-sunday", "multiplier": "0.5", "weekdays": ["sunday"]}]}
    )
    assert points(program, 1000, at=datetime(2026, 6, 14, 12, tzinfo=UTC)) == 5  # Sunday
    assert points(program, 1000, at=datetime(2026, 6, 15, 12, tzinfo=UTC)) == 10  # Monday


def test_a_promotion_multiplies_the_category_multiplier(retailer: Program) -> None:
    line = Line("TENT-1", "tents", 1, gbp(100))
    at = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
    # 100 GBP * 2 points * x3 outdoor * x2 winter sale.
    result = quote(retailer, gbp(100), lines=[line], currency="GBP", at=at)
    assert result.points == 1200
    assert result.rule_ids == ("base:GBP", "outdoor-x3", "winter-sale-double")


# ------------------------------------------------------------------ partners


def test_partner_rate_by_envelope_source(retailer: Program) -> None:
    partner = quote(retailer, gbp(100), currency="GBP", source="skyway-air")
    assert partner.points == 100
    assert partner.rule_ids == ("partner:skyway-air",)
    assert points(retailer, gbp(100), currency="GBP", source="someone-else") == 200
    assert points(retailer, gbp(100), currency="GBP", source=None) == 200


def test_partner_rate_keeps_multipliers(retailer: Program) -> None:
    line = Line("BOOT-1", "boots", 1, gbp(100))
    assert points(retailer, gbp(100), lines=[line], currency="GBP", source="skyway-air") == 300


# --------------------------------------------------------------------- tiers


@pytest.mark.parametrize(
    ("tier", "expected"),
    [(None, 200), ("explorer", 200), ("trailblazer", 250), ("summit", 300), ("unknown", 200)],
)
def test_tier_earn_multiplier(retailer: Program, tier: str | None, expected: int) -> None:
    assert points(retailer, gbp(100), currency="GBP", tier=tier) == expected


def test_tier_multiplier_is_named_only_when_it_changes_points(retailer: Program) -> None:
    assert "tier:trailblazer" in quote(retailer, 100, currency="GBP", tier="trailblazer").rule_ids
    assert not any(
        r.startswith("tier:")
        for r in quote(retailer, 100, currency="GBP", tier="explorer").rule_ids
    )


def test_tier_multiplies_category_multiplier(retailer: Program) -> None:
    line = Line("TENT-1", "tents", 1, gbp(100))
    # 100 * 2 * 3 * 1.25.
    assert points(retailer, gbp(100), lines=[line], currency="GBP", tier="trailblazer") == 750


# ---------------------------------------------------------------------- caps


def test_per_order_cap(retailer: Program) -> None:
    assert points(retailer, gbp(2500), currency="GBP") == 5000
    capped = quote(retailer, gbp(2501), currency="GBP")
    assert capped.points == 5000
    assert "cap:per_order" in capped.rule_ids


def test_per_order_cap_applies_after_the_tier_multiplier(retailer: Program) -> None:
    # 2100 GBP * 2 = 4200; with summit x1.5 = 6300 -> 5000.
    assert points(retailer, gbp(2100), currency="GBP") == 4200
    assert points(retailer, gbp(2100), currency="GBP", tier="summit") == 5000


def test_capped_points_are_shared_out_to_the_lines(retailer: Program) -> None:
    lines = [
        Line("TENT-1", "tents", 1, gbp(1000)),  # 6000
        Line("JACKET", "clothing", 1, gbp(1000)),  # 2000
    ]
    result = quote(retailer, gbp(2000), lines=lines, currency="GBP")
    assert result.points == 5000
    assert [lp.points for lp in result.lines] == [3750, 1250]


def test_cap_quote_reduces_and_reshares() -> None:
    lines = [Line("a", None, 1, 1000), Line("b", None, 1, 2000), Line("c", None, 1, 3000)]
    original = quote(make_program(), 6000, lines=lines)
    assert [lp.points for lp in original.lines] == [10, 20, 30]
    capped = cap_quote(original, 7, "capped at 7")
    assert capped.points == 7
    # Exact shares 7/6, 14/6, 21/6 = 1.17, 2.33, 3.5 -> floors 1, 2, 3 + 1 to the largest (3.5).
    assert [lp.points for lp in capped.lines] == [1, 2, 4]
    assert capped.rule_ids[-1] == "cap:per_member_per_day"
    assert cap_quote(original, 60, "no-op") is original
    assert cap_quote(original, 0, "nothing left").points == 0


# ----------------------------------------------------------------- share_out


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (10, ["1", "1", "1"], (4, 3, 3)),
        (5, ["1.1", "2.6", "1.3"], (1, 3, 1)),
        (7, ["3", "0", "4"], (3, 0, 4)),
        (1, ["1", "1"], (1, 0)),
        (100, ["1"], (100,)),
        (0, ["1", "2"], (0, 0)),
        (5, ["0", "0"], (0, 0)),
        (13, ["12.55", "0.45"], (13, 0)),
        (2, ["0.99", "0.99", "0.99"], (1, 1, 0)),
    ],
)
def test_share_out_by_largest_remainder(
    total: int, weights: list[str], expected: tuple[int, ...]
) -> None:
    assert share_out(total, [Decimal(w) for w in weights]) == expected


@pytest.mark.parametrize("total", [0, 1, 7, 99, 100, 101, 12345])
def test_share_out_always_sums_to_the_total(total: int) -> None:
    weights = [Decimal("0.3333"), Decimal("1.7"), Decimal("2"), Decimal("0.01"), Decimal("5")]
    shares = share_out(total, weights)
    assert sum(shares) == total
    assert all(s >= 0 for s in shares)


def test_quote_line_points_sum_to_the_order_points() -> None:
    lines = [Line("a", None, 3, 333), Line("b", None, 1, 1), Line("c", None, 7, 129)]
    result = quote(make_program(earn={"rounding": "half_up"}), 1903, lines=lines)
    # 9.99 + 0.01 + 9.03 = 19.03 -> 19.
    assert result.points == 19
    assert sum(lp.points for lp in result.lines) == 19
    assert [lp.points for lp in result.lines] == [10, 0, 9]


# -------------------------------------------------------------------- expiry


def test_no_expiry_months_means_never() -> None:
    assert expiry_for(make_program(), PLAIN_DAY) is None


@pytest.mark.parametrize(
    ("earned", "months", "expected"),
    [
        (datetime(2027, 1, 31, 10, 0), 1, datetime(2027, 2, 28, 10, 0)),
        (datetime(2028, 1, 31, 10, 0), 1, datetime(2028, 2, 29, 10, 0)),
        (datetime(2026, 3, 31, 10, 0), 1, datetime(2026, 4, 30, 10, 0)),
        (datetime(2026, 1, 31, 10, 0), 13, datetime(2027, 2, 28, 10, 0)),
        (datetime(2026, 12, 15, 8, 30), 1, datetime(2027, 1, 15, 8, 30)),
        (datetime(2026, 5, 20, 0, 0), 12, datetime(2027, 5, 20, 0, 0)),
    ],
)
def test_expiry_months_after_earn_clamps_to_month_end(
    earned: datetime, months: int, expected: datetime
) -> None:
    program = make_program(expiry={"months_after_earn": months})
    assert expiry_for(program, earned.replace(tzinfo=UTC)) == expected.replace(tzinfo=UTC)


def test_expiry_counts_months_in_the_program_time_zone() -> None:
    program = make_program(timezone="America/New_York", expiry={"months_after_earn": 1})
    # 03:00Z on 1 March is 22:00 on 28 February in New York (EST); one month later is
    # 22:00 on 28 March (EDT), which is 02:00Z on 29 March.
    expires = expiry_for(program, datetime(2026, 3, 1, 3, 0, tzinfo=UTC))
    assert expires == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
    assert expires is not None
    assert expires.utcoffset() == timedelta(0)


def test_expiry_keeps_the_local_wall_time_across_daylight_saving() -> None:
    program = make_program(timezone="America/New_York", expiry={"months_after_earn": 6})
    # 07:00 EST on 15 January -> 07:00 EDT on 15 July.
    earned = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    assert expiry_for(program, earned) == datetime(2026, 7, 15, 11, 0, tzinfo=UTC)


def test_expiry_rounded_to_end_of_month(coffee: Program) -> None:
    # Tuesday 17 November local -> May 2027 -> gone from midnight 1 June 2027 (EDT).
    earned = datetime(2026, 11, 18, 2, 0, tzinfo=UTC)
    assert expiry_for(coffee, earned) == datetime(2027, 6, 1, 4, 0, tzinfo=UTC)


def test_expiry_end_of_month_uses_the_local_date(coffee: Program) -> None:
    # 03:00Z on 1 December is still 30 November in New York: expires with May, not June.
    earned = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    assert expiry_for(coffee, earned) == datetime(2027, 6, 1, 4, 0, tzinfo=UTC)
    # December (EST) earns expire at the end of June: 1 July 00:00 EDT.
    assert expiry_for(coffee, datetime(2026, 12, 1, 5, 0, tzinfo=UTC)) == datetime(
        2027, 7, 1, 4, 0, tzinfo=UTC
    )


def test_expiry_end_of_month_from_a_31st() -> None:
    program = make_program(expiry={"months_after_earn": 1, "round_to": "end_of_month"})
    assert expiry_for(program, datetime(2027, 1, 31, 10, tzinfo=UTC)) == datetime(
        2027, 3, 1, tzinfo=UTC
    )
    assert expiry_for(program, datetime(2026, 11, 30, 10, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )


def test_expiry_rounded_to_end_of_year(retailer: Program) -> None:
    # London, 24 months: anything earned in 2026 is gone from 1 January 2029 (GMT).
    assert expiry_for(retailer, datetime(2026, 6, 15, 12, 0, tzinfo=UTC)) == datetime(
        2029, 1, 1, tzinfo=UTC
    )
    assert expiry_for(retailer, datetime(2026, 12, 31, 23, 30, tzinfo=UTC)) == datetime(
        2029, 1, 1, tzinfo=UTC
    )
    assert expiry_for(retailer, datetime(2026, 1, 1, 0, 0, tzinfo=UTC)) == datetime(
        2029, 1, 1, tzinfo=UTC
    )


def test_expiry_end_of_year_uses_the_local_date() -> None:
    program = make_program(
        timezone="America/New_York", expiry={"months_after_earn": 12, "round_to": "end_of_year"}
    )
    # 03:00Z on 1 January 2027 is New Year's Eve 2026 in New York.
    assert expiry_for(program, datetime(2027, 1, 1, 3, 0, tzinfo=UTC)) == datetime(
        2028, 1, 1, 5, 0, tzinfo=UTC
    )
    assert expiry_for(program, datetime(2027, 1, 1, 5, 0, tzinfo=UTC)) == datetime(
        2029, 1, 1, 5, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2027, 1, 31), 1, date(2027, 2, 28)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),
        (date(2026, 11, 30), 3, date(2027, 2, 28)),
        (date(2026, 12, 1), 1, date(2027, 1, 1)),
        (date(2026, 1, 15), 24, date(2028, 1, 15)),
        (date(2026, 8, 31), 6, date(2027, 2, 28)),
    ],
)
def test_add_months(start: date, months: int, expected: date) -> None:
    assert add_months(start, months) == expected


# ------------------------------------------------------------------- release


def test_release_after_the_pending_days(coffee: Program) -> None:
    earned = datetime(2026, 11, 18, 2, 0, tzinfo=UTC)
    assert release_for(coffee, earned) == datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def test_no_pending_days_means_available_at_once() -> None:
    assert release_for(make_program(), PLAIN_DAY) is None


def test_retailer_return_window_is_30_days(retailer: Program) -> None:
    assert release_for(retailer, PLAIN_DAY) == PLAIN_DAY + timedelta(days=30)


# ------------------------------------------------------------------ pro rata


@pytest.mark.parametrize(
    ("pts", "part", "whole", "expected"),
    [
        (100, 50, 200, 25),
        (10, 1, 3, 3),
        (10, 2, 3, 6),
        (10, 3, 3, 10),
        (10, 5, 3, 10),  # a part larger than the whole counts as the whole
        (10, 0, 3, 0),
        (10, 1, 0, 0),
        (12, 333, 1000, 3),
    ],
)
def test_pro_rata_rounds_down(pts: int, part: int, whole: int, expected: int) -> None:
    assert pro_rata(pts, part, whole) == expected


def test_cumulative_pro_rata_adds_up_exactly() -> None:
    cumulative = [pro_rata(10, part, 1000) for part in (333, 666, 1000)]
    increments = [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]
    assert increments == [3, 3, 4]
    assert sum(increments) == 10


# ------------------------------------------------------- local days and periods


def test_local_date(coffee: Program) -> None:
    assert local_date(coffee, datetime(2026, 11, 18, 2, 0, tzinfo=UTC)) == date(2026, 11, 17)
    assert local_date(make_program(), datetime(2026, 11, 18, 2, 0, tzinfo=UTC)) == date(
        2026, 11, 18
    )


def test_activity_periods_in_the_program_time_zone(coffee: Program) -> None:
    new_years_eve = datetime(2027, 1, 1, 3, 0, tzinfo=UTC)  # 22:00 on 31 Dec in New York
    assert activity_period(coffee, ActivityLimit.ONCE, new_years_eve) == "ever"
    assert activity_period(coffee, ActivityLimit.PER_YEAR, new_years_eve) == "2026"
    assert activity_period(coffee, ActivityLimit.PER_DAY, new_years_eve) == "2026-12-31"
    assert activity_period(coffee, ActivityLimit.UNLIMITED, new_years_eve) is None
