"""The tier policy, rule by rule: thresholds, windows, grace, one level down, refunds, overrides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.ledger.domain.program import Program
from services.ledger.domain.tier_policy import (
    Fact,
    TierDecision,
    TierState,
    advance,
    apply,
    progress,
    recompute,
)

M = "m-1"


def program(**qualification: Any) -> Program:
    return Program.model_validate(
        {
            "id": "shop",
            "name": "Shop",
            "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
            "tiers": [
                {"id": "bronze", "name": "Bronze", "threshold": 0},
                {"id": "silver", "name": "Silver", "threshold": 1000, "earn_multiplier": "1.25"},
                {"id": "gold", "name": "Gold", "threshold": 5000, "earn_multiplier": "1.5"},
            ],
            "tier_qualification": qualification,
        }
    )


def at(y: int, m: int, d: int, h: int = 12) -> datetime:
    return datetime(y, m, d, h, tzinfo=UTC)


class Member:
    """Feeds facts with increasing positions and keeps every decision."""

    def __init__(self, prog: Program) -> None:
        self.program = prog
        self.state = TierState(M)
        self.decisions: list[TierDecision] = []
        self.position = 0

    def _apply(self, fact: Fact) -> list[TierDecision]:
        self.state, made = apply(self.program, self.state, fact)
        self.decisions += made
        return made

    def earn(self, when: datetime, points: int, spend: int = 0) -> list[TierDecision]:
        self.position += 1
        return self._apply(Fact(self.position, M, when, "earn", points=points, spend_minor=spend))

    def refund(
        self, when: datetime, points: int, order: str = "o1", refunded: int = 0
    ) -> list[TierDecision]:
        self.position += 1
        return self._apply(
            Fact(self.position, M, when, "reverse", points, spend_minor=refunded, order_id=order)
        )

    def override(
        self, when: datetime, tier: str, until: datetime | None, *, locked: bool
    ) -> list[TierDecision]:
        self.position += 1
        return self._apply(
            Fact(self.position, M, when, "override", tier=tier, until=until, locked=locked)
        )

    def tick(self, now: datetime) -> list[TierDecision]:
        self.state, made = advance(self.program, self.state, now)
        self.decisions += made
        return made

    @property
    def tier(self) -> str | None:
        return self.state.tier


def moves(decisions: list[TierDecision]) -> list[tuple[str | None, str, str]]:
    return [(d.from_tier, d.to_tier, d.reason) for d in decisions]


# ------------------------------------------------------------------------ upgrades


def test_first_entry_places_a_member_in_the_entry_tier() -> None:
    member = Member(program())
    assert moves(member.earn(at(2026, 3, 1), 10)) == [(None, "bronze", "upgrade")]


def test_upgrade_exactly_at_the_threshold_and_not_one_point_below() -> None:
    member = Member(program())
    member.earn(at(2026, 3, 1), 999)
    assert member.tier == "bronze"
    made = member.earn(at(2026, 3, 2), 1)
    assert moves(made) == [("bronze", "silver", "upgrade")]
    decision = made[0]
    assert decision.qualifying_value == 1000
    assert decision.threshold == 1000
    assert decision.caused_by_position == 2
    assert decision.effective_from == at(2026, 3, 2)
    assert decision.event_id == f"tier:{M}:silver:p2"


def test_a_big_earn_jumps_straight_to_the_highest_tier_reached() -> None:
    member = Member(program())
    # The entry tier first (the first earn earns at it), then straight to gold.
    assert moves(member.earn(at(2026, 3, 1), 6000)) == [
        (None, "bronze", "upgrade"),
        ("bronze", "gold", "upgrade"),
    ]


def test_spending_or_expiry_never_lowers_the_tier() -> None:
    """Only earn and refund entries are qualifying activity: redemptions are not facts."""
    member = Member(program())
    member.earn(at(2026, 3, 1), 1200)
    member.position += 1
    member._apply(Fact(member.position, M, at(2026, 3, 2)))  # a redemption, an expiry
    assert member.tier == "silver"
    assert member.tick(at(2026, 12, 31)) == []


def test_spend_basis_counts_minor_units_not_points() -> None:
    member = Member(program(basis="spend"))
    member.earn(at(2026, 3, 1), points=5, spend=999)
    assert member.tier == "bronze"
    assert moves(member.earn(at(2026, 3, 1, 13), points=5, spend=1)) == [
        ("bronze", "silver", "upgrade")
    ]


# --------------------------------------------------------------------------- windows


def test_rolling_window_edge_an_earn_exactly_n_months_old_no_longer_counts() -> None:
    member = Member(program(window="rolling_months", months=3))
    member.earn(at(2026, 1, 10), 600)
    member.earn(at(2026, 4, 10), 400)  # exactly 3 months later: the first earn is out
    assert member.tier == "bronze"
    member2 = Member(program(window="rolling_months", months=3))
    member2.earn(at(2026, 1, 10), 600)
    member2.earn(at(2026, 4, 10, 11), 400)  # an hour before: both count
    assert member2.tier == "silver"


def test_calendar_year_rollover_starts_from_zero() -> None:
    member = Member(program(window="calendar_year"))
    member.earn(at(2026, 12, 31, 23), 600)
    member.earn(at(2027, 1, 1, 0), 600)
    assert member.tier == "bronze"
    assert window_of(member, at(2027, 1, 1, 1)) == 600


def test_calendar_year_follows_the_program_time_zone() -> None:
    prog = program(window="calendar_year").model_copy(update={"timezone": "Pacific/Auckland"})
    member = Member(prog)
    member.earn(datetime(2026, 12, 31, 12, tzinfo=UTC), 600)  # 01:00 on 1 January there
    member.earn(datetime(2027, 1, 2, tzinfo=UTC), 600)
    assert member.tier == "silver"


def window_of(member: Member, when: datetime) -> int:
    return progress(member.program, member.state, when).qualifying_value


# ----------------------------------------------------------------- downgrades, grace


def test_calendar_tier_is_kept_through_the_next_year_when_the_year_qualified() -> None:
    member = Member(program(window="calendar_year", grace_days=0))
    member.earn(at(2026, 5, 1), 1500)
    assert member.state.held_until == at(2027, 1, 1, 0)
    assert member.tick(at(2027, 1, 1, 0)) == []  # 2026 met the threshold: kept
    assert member.state.held_until == at(2028, 1, 1, 0)
    made = member.tick(at(2028, 1, 1, 0))  # nothing earned in 2027
    assert moves(made) == [("silver", "bronze", "downgrade")]
    assert made[0].effective_from == at(2028, 1, 1, 0)
    assert made[0].caused_by_position is None
    assert made[0].event_id == f"tier:{M}:bronze:t20280101T000000Z"


def test_downgrade_waits_for_the_grace_period() -> None:
    member = Member(program(window="rolling_months", months=6, grace_days=30))
    member.earn(at(2026, 1, 1), 1000)
    assert member.state.period_end == at(2026, 7, 1)
    assert member.state.held_until == at(2026, 7, 31)
    assert member.tick(at(2026, 7, 30, 23)) == []
    assert member.tier == "silver"
    made = member.tick(at(2026, 7, 31))
    assert moves(made) == [("silver", "bronze", "downgrade")]
    assert member.tick(at(2026, 7, 31)) == []  # the same instant again changes nothing


def test_earning_during_the_period_again_moves_the_held_until_date_on() -> None:
    member = Member(program(window="rolling_months", months=6, grace_days=0))
    member.earn(at(2026, 1, 1), 1000)
    member.earn(at(2026, 5, 1), 1000)  # the window holds 2000 >= 1000 again
    assert member.state.held_until == at(2026, 11, 1)
    assert member.tick(at(2026, 7, 2)) == []


def test_only_qualifying_activity_holds_a_tier_longer() -> None:
    """Releases, expiries and redemptions come later in the year (often recorded late, with
    an earlier effective time); they must not move the held-until date on."""
    member = Member(program(window="rolling_months", months=6, grace_days=0))
    member.earn(at(2026, 1, 1), 1000)
    assert member.state.held_until == at(2026, 7, 1)
    for when in (at(2026, 1, 3), at(2026, 3, 1), at(2026, 6, 30)):
        member.position += 1
        member._apply(Fact(member.position, M, when))  # released, expired, redeemed
    assert member.state.held_until == at(2026, 7, 1)
    assert moves(member.tick(at(2026, 7, 2))) == [("silver", "bronze", "downgrade")]
    member.position += 1
    member._apply(Fact(member.position, M, at(2026, 1, 5)))  # recorded late, dated early
    assert member.tier == "bronze"


def test_one_level_at_a_time() -> None:
    member = Member(program(window="calendar_year", downgrade="one_level"))
    member.earn(at(2026, 5, 1), 6000)
    assert member.tier == "gold"
    member.tick(at(2027, 1, 1, 0))  # 2026 qualified: kept
    assert moves(member.tick(at(2028, 1, 1, 0))) == [("gold", "silver", "downgrade")]
    assert moves(member.tick(at(2029, 1, 1, 0))) == [("silver", "bronze", "downgrade")]


def test_to_qualified_drops_straight_to_what_the_period_earned() -> None:
    member = Member(program(window="calendar_year"))
    member.earn(at(2026, 5, 1), 6000)
    member.tick(at(2027, 1, 1, 0))
    assert moves(member.tick(at(2028, 1, 1, 0))) == [("gold", "bronze", "downgrade")]


def test_a_long_silence_applies_every_review_in_order_when_the_next_entry_comes() -> None:
    member = Member(program(window="calendar_year", downgrade="one_level"))
    member.earn(at(2026, 5, 1), 6000)
    made = member.earn(at(2030, 6, 1), 10)  # no timer ran meanwhile
    assert moves(made) == [("gold", "silver", "downgrade"), ("silver", "bronze", "downgrade")]


# ------------------------------------------------------------------------- refunds


def test_refund_pulling_below_the_threshold_downgrades_at_the_period_end_not_at_once() -> None:
    member = Member(program(window="calendar_year"))
    member.earn(at(2026, 5, 1), 1200)
    assert member.refund(at(2026, 6, 1), 300) == []
    assert member.tier == "silver"  # a refund never takes a tier away mid-period
    assert window_of(member, at(2026, 6, 2)) == 900
    made = member.tick(at(2027, 1, 1, 0))
    assert moves(made) == [("silver", "bronze", "downgrade")]
    assert made[0].qualifying_value == 900


def test_refund_before_the_threshold_keeps_the_member_from_upgrading() -> None:
    member = Member(program())
    member.earn(at(2026, 5, 1), 900)
    member.refund(at(2026, 5, 2), 200)
    assert member.earn(at(2026, 5, 3), 200) == []
    assert member.tier == "bronze"


def test_spend_refunds_take_back_only_their_own_amount() -> None:
    member = Member(program(basis="spend", window="calendar_year"))
    member.earn(at(2026, 5, 1), 10, spend=1200)
    member.refund(at(2026, 5, 2), 1, order="o1", refunded=100)
    member.refund(at(2026, 5, 3), 1, order="o1", refunded=250)  # cumulative: 150 more
    assert window_of(member, at(2026, 5, 4)) == 950


# ------------------------------------------------------------------------ overrides


def test_locked_override_blocks_automatic_changes_until_it_ends() -> None:
    member = Member(program(window="calendar_year"))
    member.earn(at(2026, 2, 1), 100)
    member.override(at(2026, 3, 1), "gold", at(2026, 9, 1), locked=True)
    assert member.tier == "gold"
    assert member.earn(at(2026, 4, 1), 1500) == []  # would be silver: no automatic change
    assert member.tick(at(2026, 8, 31)) == []
    made = member.tick(at(2026, 9, 1))
    assert moves(made) == [("gold", "silver", "override_ended")]
    assert made[0].qualifying_value == 1600


def test_locked_override_without_an_end_date_is_never_replaced() -> None:
    member = Member(program())
    member.earn(at(2026, 2, 1), 100)
    member.override(at(2026, 3, 1), "silver", None, locked=True)
    member.earn(at(2026, 4, 1), 9000)
    assert member.tier == "silver"
    assert member.tick(at(2035, 1, 1)) == []


def test_unlocked_override_is_replaced_by_an_upgrade() -> None:
    member = Member(program())
    member.earn(at(2026, 2, 1), 100)
    member.override(at(2026, 3, 1), "silver", at(2026, 12, 1), locked=False)
    assert moves(member.earn(at(2026, 4, 1), 5000)) == [("silver", "gold", "upgrade")]


def test_unlocked_override_is_reviewed_at_its_end_date() -> None:
    member = Member(program())
    member.earn(at(2026, 2, 1), 100)
    member.override(at(2026, 3, 1), "gold", at(2026, 6, 1), locked=False)
    assert member.tick(at(2026, 5, 31)) == []
    assert moves(member.tick(at(2026, 6, 1))) == [("gold", "bronze", "downgrade")]


def test_unlocked_override_ending_mid_year_is_reviewed_on_that_years_activity() -> None:
    member = Member(program(window="calendar_year"))
    member.earn(at(2025, 12, 1), 4000)  # last year: does not count for 2026
    member.override(at(2026, 3, 1), "gold", at(2026, 6, 1), locked=False)
    member.earn(at(2026, 4, 1), 1200)
    made = member.tick(at(2026, 6, 1))
    assert moves(made) == [("gold", "silver", "downgrade")]
    assert made[0].qualifying_value == 1200


# ------------------------------------------------------------- idempotence, rebuild


def test_a_redelivered_entry_changes_nothing() -> None:
    prog = program()
    state, first = apply(prog, TierState(M), Fact(1, M, at(2026, 1, 1), "earn", points=2000))
    again, repeat = apply(prog, state, Fact(1, M, at(2026, 1, 1), "earn", points=2000))
    assert first
    assert not repeat
    assert again == state


def test_a_program_without_tiers_decides_nothing() -> None:
    prog = program().model_copy(update={"tiers": ()})
    state, made = apply(prog, TierState(M), Fact(1, M, at(2026, 1, 1), "earn", points=9))
    assert made == []
    assert state.tier is None


def test_recompute_from_the_history_gives_the_same_decisions() -> None:
    member = Member(program(window="calendar_year"))
    facts = [
        Fact(1, M, at(2026, 1, 5), "earn", points=700),
        Fact(2, M, at(2026, 2, 5), "earn", points=700),
        Fact(3, M, at(2026, 3, 5), "reverse", points=100, order_id="o"),
        Fact(4, M, at(2028, 2, 5), "earn", points=10),
    ]
    for fact in facts:
        member._apply(fact)
    state, decisions = recompute(member.program, M, reversed(facts))
    assert decisions == member.decisions
    assert state == member.state
    assert moves(decisions) == [
        (None, "bronze", "upgrade"),
        ("bronze", "silver", "upgrade"),
        ("silver", "bronze", "downgrade"),
    ]


def test_progress_shows_the_next_tier_and_the_dates() -> None:
    member = Member(program(window="calendar_year", grace_days=31))
    member.earn(at(2026, 5, 1), 1200)
    shown = progress(member.program, member.state, at(2026, 6, 1))
    assert (shown.tier, shown.next_tier, shown.next_threshold) == ("silver", "gold", 5000)
    assert shown.qualifying_value == 1200
    assert shown.period_end == at(2027, 1, 1, 0)
    assert shown.held_until == at(2027, 1, 1, 0) + timedelta(days=31)


def test_window_settings_in_the_program_file() -> None:
    assert program().tier_qualification.rolling_months == 12
    assert program(window="rolling_12_months", months=3).tier_qualification.rolling_months == 12
    assert program(window="rolling_months", months=3).tier_qualification.rolling_months == 3
    assert program(window="calendar_year").tier_qualification.rolling_months is None
    with pytest.raises(ValidationError, match="downgrade"):
        program(downgrade="two_levels")
    with pytest.raises(ValidationError, match="months"):
        program(window="rolling_months", months=0)
