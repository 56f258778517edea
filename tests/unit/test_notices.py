"""Which notices entries, tier changes and the scan produce; keys, quiet hours, opt-outs."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from services.ledger.domain.program import NoticeKind, Notifications, QuietHours
from services.notifier.notices import (
    EntrySummary,
    allowed,
    entry_notices,
    expiry_notices,
    in_quiet_hours,
    notice_key,
    recheck,
    send_after,
    statement_notices,
    tier_at_risk_notices,
    tier_notices,
)
from tests.support.notices import entry, lot, program, tier_changed

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
EVERY_KIND = set(NoticeKind)


# --------------------------------------------------------------------- entries


def test_a_referral_rewards_both_members_each_with_a_notice_of_their_own() -> None:
    p = program()
    referrer = entry(
        "m-a",
        3,
        "points_earned",
        T0,
        available_delta=20,
        available_after=30,
        details={"kind": "referral", "reference": "referee:m-b"},
        event_id="ref-1",
    )
    referee = entry(
        "m-b",
        2,
        "points_earned",
        T0,
        available_delta=10,
        available_after=10,
        details={"kind": "referral", "reference": "referred-by:m-a"},
        event_id="ref-1",
    )
    (a,) = entry_notices(referrer, p)
    (b,) = entry_notices(referee, p)
    assert (a.kind, a.member_id, a.data["role"], a.data["points"]) == (
        NoticeKind.REFERRAL_REWARDED,
        "m-a",
        "referrer",
        20,
    )
    assert (b.member_id, b.data["role"], b.data["points"]) == ("m-b", "referee", 10)
    assert a.key != b.key
    assert a.key == "m-a|referral_rewarded|ref-1|"


def test_a_purchase_earn_is_not_a_referral() -> None:
    earned = entry("m-a", 2, "points_earned", T0, pending_delta=12, details={"kind": "purchase"})
    assert entry_notices(earned, program()) == []


def test_released_pending_points_say_they_are_available() -> None:
    released = entry(
        "m-a",
        4,
        "pending_released",
        T0,
        available_delta=12,
        available_after=22,
        details={"lot_id": "lot-7", "points": 12},
    )
    (notice,) = entry_notices(released, program())
    assert notice.kind == NoticeKind.POINTS_AVAILABLE
    assert notice.key == "m-a|points_available|lot-7|"
    assert notice.data == {"points": 12, "available": 22}


def test_crossing_a_reward_price_unlocks_it_once_per_crossing() -> None:
    p = program()
    crossing = entry("m-a", 5, "points_earned", T0, available_delta=30, available_after=60)
    (notice,) = entry_notices(crossing, p)
    assert (notice.kind, notice.subject, notice.window) == (
        NoticeKind.REWARD_UNLOCKED,
        "coffee",
        "seq-5",
    )
    assert notice.data["price"] == 50
    # Already above the price before: nothing new; the same entry again: the same key.
    above = entry("m-a", 6, "points_earned", T0, available_delta=10, available_after=70)
    assert entry_notices(above, p) == []
    assert entry_notices(crossing, p)[0].key == notice.key
    # One entry that crosses two prices unlocks both.
    jump = entry("m-a", 7, "points_adjusted", T0, available_delta=100, available_after=130)
    assert [n.subject for n in entry_notices(jump, p)] == ["coffee", "lunch"]


def test_spending_below_a_price_unlocks_nothing() -> None:
    spent = entry("m-a", 5, "points_redeemed", T0, available_delta=-50, available_after=10)
    assert entry_notices(spent, program()) == []


def test_points_given_back_by_a_cancelled_redemption_unlock_nothing() -> None:
    back = entry("m-a", 6, "redemption_cancelled", T0, available_delta=50, available_after=60)
    assert entry_notices(back, program()) == []


def test_turned_off_kinds_produce_nothing() -> None:
    p = program(notifications={"kinds": ["points_expiring"]})
    crossing = entry("m-a", 5, "points_earned", T0, available_delta=60, available_after=60)
    assert entry_notices(crossing, p) == []
    upgrade = tier_changed("m-a", "base", "silver", "upgrade", T0, T0 + 365 * DAY)
    assert tier_notices(upgrade, p) == []


# ------------------------------------------------------------------------ tiers


def test_an_upgrade_is_a_tier_reached_notice_keyed_by_tier_and_day() -> None:
    change = tier_changed("m-a", "base", "gold", "upgrade", T0, T0 + 365 * DAY, qualifying=2100)
    (notice,) = tier_notices(change, program())
    assert notice.kind == NoticeKind.TIER_REACHED
    assert notice.key == "m-a|tier_reached|gold|2026-03-02"
    assert notice.data["tier"] == "Gold"


@pytest.mark.parametrize(
    ("from_tier", "to_tier", "reason"),
    [("gold", "silver", "downgrade"), (None, "base", "recompute"), ("silver", "base", "override")],
)
def test_downgrades_and_joining_the_entry_tier_are_not_news(
    from_tier: str | None, to_tier: str, reason: str
) -> None:
    change = tier_changed("m-a", from_tier, to_tier, reason, T0, None)
    assert tier_notices(change, program()) == []


def test_an_override_to_a_higher_tier_is_a_tier_reached_notice() -> None:
    change = tier_changed("m-a", "silver", "gold", "override", T0, None)
    assert [n.kind for n in tier_notices(change, program())] == [NoticeKind.TIER_REACHED]


def _earns(*points_and_days_ago: tuple[int, int], now: datetime) -> list[EntrySummary]:
    return [
        EntrySummary("m-a", i, "points_earned", now - days * DAY, points, 0)
        for i, (points, days) in enumerate(points_and_days_ago, start=2)
    ]


def test_tier_at_risk_inside_the_days_before_period_end_while_below_threshold() -> None:
    p = program(tier_qualification={"grace_days": 10})
    valid_until = T0 + 20 * DAY + 10 * DAY  # period ends in 20 days, plus 10 days of grace
    below = _earns((300, 100), (100, 400), now=T0)  # the 400-days-ago earn is out of window
    (notice,) = tier_at_risk_notices("m-a", "silver", valid_until, below, T0, p)
    assert notice.kind == NoticeKind.TIER_AT_RISK
    assert notice.data["qualifying"] == 300
    assert notice.data["shortfall"] == 200
    assert notice.key == "m-a|tier_at_risk|silver|2026-03-22"
    enough = _earns((300, 100), (250, 10), now=T0)
    assert tier_at_risk_notices("m-a", "silver", valid_until, enough, T0, p) == []
    # Earlier than tier_at_risk_days (30) before the period end: not yet.
    assert tier_at_risk_notices("m-a", "silver", valid_until, below, T0 - 15 * DAY, p) == []
    # The entry tier cannot be lost.
    assert tier_at_risk_notices("m-a", "base", valid_until, below, T0, p) == []


def test_reversed_points_do_not_qualify() -> None:
    p = program()
    valid_until = T0 + 5 * DAY
    entries = [
        EntrySummary("m-a", 2, "points_earned", T0 - 30 * DAY, 600, 600),
        EntrySummary("m-a", 3, "points_reversed", T0 - 20 * DAY, -200, 400),
    ]
    (notice,) = tier_at_risk_notices("m-a", "silver", valid_until, entries, T0, p)
    assert notice.data["qualifying"] == 400


# ------------------------------------------------------------------- expiry scan


def test_expiry_reminders_use_the_narrowest_window_and_group_lots_by_day() -> None:
    p = program()  # windows 30 and 7 days
    lots = (
        lot("a", 40, 40, T0 - 170 * DAY, T0 + 20 * DAY),
        lot("b", 10, 10, T0 - 160 * DAY, T0 + 20 * DAY + 3600 * timedelta(seconds=1)),
        lot("c", 25, 25, T0 - 150 * DAY, T0 + 5 * DAY),
        lot("d", 99, 99, T0 - 10 * DAY, T0 + 90 * DAY),  # not inside any window yet
    )
    found = expiry_notices("m-a", lots, T0, p)
    assert [(n.subject, n.window, n.data["points"]) for n in found] == [
        ("2026-03-07", "7d", 25),
        ("2026-03-22", "30d", 50),
    ]
    # 13 days later the 22 March points are inside the 7-day window: a second reminder.
    later = expiry_notices("m-a", lots, T0 + 13 * DAY, p)
    assert [(n.subject, n.window) for n in later] == [("2026-03-22", "7d")]


def test_spent_and_expired_points_are_never_mentioned() -> None:
    lots = (
        lot("spent", 40, 0, T0 - 170 * DAY, T0 + 3 * DAY),
        lot("gone", 40, 40, T0 - 200 * DAY, T0 - DAY),  # past expiry (scheduler not run yet)
        lot("partly", 40, 15, T0 - 170 * DAY, T0 + 4 * DAY),
    )
    (notice,) = expiry_notices("m-a", lots, T0, program())
    assert notice.data["points"] == 15
    assert notice.cause == "scan of lots partly"


def test_midnight_expiry_is_reminded_as_the_day_before_in_the_program_zone() -> None:
    p = program(timezone="America/New_York")
    midnight_ny = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)  # 1 December 00:00 in New York
    lots = (lot("a", 12, 12, datetime(2026, 5, 4, tzinfo=UTC), midnight_ny),)
    (notice,) = expiry_notices("m-a", lots, midnight_ny - 6 * DAY, p)
    assert notice.subject == "2026-11-30"


def test_a_reminder_is_not_sent_for_points_spent_after_it_was_scheduled() -> None:
    p = program()
    before = (lot("a", 40, 40, T0 - 170 * DAY, T0 + 5 * DAY),)
    (scheduled,) = expiry_notices("m-a", before, T0, p)
    spent = (lot("a", 40, 0, T0 - 170 * DAY, T0 + 5 * DAY),)
    assert recheck(scheduled, spent, T0 + DAY, p) is None
    partly = (lot("a", 40, 15, T0 - 170 * DAY, T0 + 5 * DAY),)
    rechecked = recheck(scheduled, partly, T0 + DAY, p)
    assert rechecked is not None
    assert rechecked.data["points"] == 15
    assert rechecked.key == scheduled.key
    # Past the expiry itself: nothing left to remind about.
    assert recheck(scheduled, before, T0 + 6 * DAY, p) is None


def test_no_reminder_windows_no_reminders() -> None:
    p = program(notifications={"expiry_reminder_days": []})
    assert expiry_notices("m-a", (lot("a", 5, 5, T0, T0 + DAY),), T0, p) == []


# ------------------------------------------------------------- monthly statement


def test_the_monthly_statement_sums_the_previous_month_from_the_statement_day() -> None:
    p = program(notifications={"statement_day": 3})
    feb = datetime(2026, 2, 10, tzinfo=UTC)
    entries = [
        EntrySummary("m-a", 1, "enrolled", datetime(2026, 1, 5, tzinfo=UTC), 0, 0),
        EntrySummary("m-a", 2, "points_earned", feb, 120, 120),
        EntrySummary("m-a", 3, "points_redeemed", feb + DAY, -50, 70),
        EntrySummary("m-a", 4, "points_expired", feb + 2 * DAY, -5, 65),
        EntrySummary("m-a", 5, "points_earned", datetime(2026, 3, 1, tzinfo=UTC), 9, 74),
    ]
    assert statement_notices("m-a", entries, datetime(2026, 3, 2, tzinfo=UTC), p) == []
    (notice,) = statement_notices("m-a", entries, datetime(2026, 3, 3, 9, tzinfo=UTC), p)
    assert notice.key == "m-a|monthly_statement|2026-02|"
    assert notice.data == {
        "month": "2026-02",
        "entries": 3,
        "available": 65,
        "earned": 120,
        "spent": 50,
        "expired": 5,
        "other": 0,
    }
    # Nothing happened in March: no April statement.
    march_only = [e for e in entries if e.seq != 5]
    assert statement_notices("m-a", march_only, datetime(2026, 4, 3, tzinfo=UTC), p) == []


# ---------------------------------------------------- keys, quiet hours, opt-outs


def test_keys_are_member_kind_subject_window() -> None:
    assert notice_key("m-1", NoticeKind.POINTS_EXPIRING, "2026-03-22", "7d") == (
        "m-1|points_expiring|2026-03-22|7d"
    )


def test_quiet_hours_wrap_midnight_in_the_program_zone() -> None:
    p = program(
        timezone="Europe/Paris",
        notifications={"quiet_hours": {"start": "21:00", "end": "08:00"}},
    )
    at_22_paris = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)
    at_07_paris = datetime(2026, 3, 3, 6, 0, tzinfo=UTC)
    at_noon_paris = datetime(2026, 3, 3, 11, 0, tzinfo=UTC)
    assert in_quiet_hours(at_22_paris, p)
    assert in_quiet_hours(at_07_paris, p)
    assert not in_quiet_hours(at_noon_paris, p)
    eight_next_morning = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    assert send_after(at_22_paris, p) == eight_next_morning
    assert send_after(at_07_paris, p) == eight_next_morning
    assert send_after(at_noon_paris, p) == at_noon_paris


def test_quiet_hours_inside_one_day() -> None:
    p = program(notifications={"quiet_hours": {"start": "12:00", "end": "14:00"}})
    assert send_after(T0 + timedelta(minutes=30), p) == T0 + timedelta(hours=2)
    assert not in_quiet_hours(T0 + timedelta(hours=2), p)


def test_opt_outs_per_channel_per_kind_and_everything() -> None:
    kind = NoticeKind.POINTS_EXPIRING
    assert allowed([], kind, "email")
    assert not allowed([("email", "points_expiring")], kind, "email")
    assert allowed([("email", "points_expiring")], kind, "webhook")
    assert allowed([("email", "points_expiring")], NoticeKind.TIER_REACHED, "email")
    assert not allowed([("*", "points_expiring")], kind, "webhook")
    assert not allowed([("webhook", "*")], NoticeKind.TIER_REACHED, "webhook")
    assert not allowed([("*", "*")], kind, "email")


# ------------------------------------------------------------------ program file


def test_the_notifications_section_has_defaults_and_never_changes_the_version() -> None:
    plain = program()
    assert plain.notifications.expiry_reminder_days == (30, 7)
    assert set(plain.notifications.kinds) == EVERY_KIND
    assert "notifications" not in plain.canonical_json()
    written_out = program(notifications={"expiry_reminder_days": [7, 30]})
    assert written_out.version == plain.version
    # The notifier's settings decide no points: the ledger's program version ignores them.
    quiet = program(notifications={"quiet_hours": {"start": "22:00", "end": "07:00"}})
    assert quiet.version == plain.version
    assert "quiet_hours" not in quiet.canonical_json()
    assert quiet.notifications.quiet_hours == QuietHours(start=time(22), end=time(7))


def test_bad_notification_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="different"):
        Notifications.model_validate({"expiry_reminder_days": [7, 7]})
    with pytest.raises(ValueError, match="different start and end"):
        Notifications.model_validate({"quiet_hours": {"start": "09:00", "end": "09:00"}})
    with pytest.raises(ValueError, match="kinds"):
        Notifications.model_validate({"kinds": ["carrier_pigeon"]})
