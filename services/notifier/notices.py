"""Which notices the ledger's entries, tier changes and the scheduled scan produce.

Pure: no I/O, no framework, no clock. Every notice has a deterministic key
(member, kind, subject, window), so the same cause always gives the same key and the
sent-log's primary key makes a redelivered entry or a repeated scan harmless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from schemas.outbound import LedgerEntry, LotOut
from schemas.tiers import TierChanged
from services.ledger.domain.program import NoticeKind, Program

AVAILABLE_ACCOUNT = "member:available"
# Entries that bring points the member did not have: a cancelled redemption or a voided
# hold gives back what they had, which unlocks nothing new.
UNLOCKING_ENTRIES = frozenset({"points_earned", "pending_released", "points_adjusted"})
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to tell one member; `data` holds integers and strings only."""

    member_id: str
    kind: NoticeKind
    subject: str
    window: str
    at: datetime  # the instant of the cause (entry, tier change or scan)
    cause: str  # what caused it, for people: "entry 12 (pending_released #4)", ...
    data: dict[str, str | int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return notice_key(self.member_id, self.kind, self.subject, self.window)


def notice_key(member_id: str, kind: NoticeKind | str, subject: str, window: str) -> str:
    return "|".join((member_id, str(kind), subject, window))


@dataclass(frozen=True, slots=True)
class EntrySummary:
    """What the notifier keeps of each ledger entry (monthly statements, tier at risk)."""

    member_id: str
    seq: int
    entry_type: str
    effective_at: datetime
    points: int
    available_after: int


def summary(entry: LedgerEntry) -> EntrySummary:
    return EntrySummary(
        entry.member_id,
        entry.seq,
        entry.entry_type,
        entry.effective_at,
        entry.points,
        entry.balance_after.available,
    )


def _cause(entry: LedgerEntry) -> str:
    where = f"entry {entry.position}" if entry.position is not None else "entry"
    return f"{where} ({entry.entry_type} #{entry.seq} of {entry.member_id})"


# ------------------------------------------------------------------ from entries


def entry_notices(entry: LedgerEntry, program: Program) -> list[Notice]:
    """Notices one ledger entry causes: referral rewarded, points available, reward unlocked."""
    settings = program.notifications
    found: list[Notice] = []
    details = entry.details
    if entry.entry_type == "points_earned" and details.get("kind") == "referral":
        reference = str(details.get("reference") or "")
        role, _, other = reference.partition(":")
        found.append(
            Notice(
                entry.member_id,
                NoticeKind.REFERRAL_REWARDED,
                entry.provenance.event_id or reference,
                "",
                entry.effective_at,
                _cause(entry),
                {
                    "points": entry.points,
                    "role": "referrer" if role == "referee" else "referee",
                    "other_member": other,
                },
            )
        )
    if entry.entry_type == "pending_released":
        found.append(
            Notice(
                entry.member_id,
                NoticeKind.POINTS_AVAILABLE,
                str(details.get("lot_id") or entry.seq),
                "",
                entry.effective_at,
                _cause(entry),
                {
                    "points": int(details.get("points") or 0),
                    "available": entry.balance_after.available,
                },
            )
        )
    after = entry.balance_after.available
    before = after - sum(p.amount for p in entry.postings if p.account == AVAILABLE_ACCOUNT)
    for reward_id, reward in sorted(program.rewards.items()):
        if entry.entry_type in UNLOCKING_ENTRIES and before < reward.points <= after:
            found.append(
                Notice(
                    entry.member_id,
                    NoticeKind.REWARD_UNLOCKED,
                    reward_id,
                    f"seq-{entry.seq}",
                    entry.effective_at,
                    _cause(entry),
                    {"reward": reward.name, "price": reward.points, "available": after},
                )
            )
    return [n for n in found if settings.enabled(n.kind)]


def tier_notices(change: TierChanged, program: Program) -> list[Notice]:
    """Tier reached: an upgrade (or an override or recompute that lands on a higher tier)."""
    data = change.data
    to_tier = program.tier(data.to_tier)
    from_tier = program.tier(data.from_tier)
    higher = to_tier is not None and (from_tier is None or to_tier.threshold > from_tier.threshold)
    if data.reason != "upgrade" and not higher:
        return []
    if data.from_tier is None and to_tier is not None and to_tier == program.entry_tier:
        return []  # joining the entry tier is not news
    if not program.notifications.enabled(NoticeKind.TIER_REACHED):
        return []
    local = data.effective_from.astimezone(program.zone).date()
    return [
        Notice(
            change.member_id,
            NoticeKind.TIER_REACHED,
            data.to_tier,
            local.isoformat(),
            data.effective_from,
            f"tier.changed {change.event_id}",
            {
                "tier": to_tier.name if to_tier else data.to_tier,
                "tier_id": data.to_tier,
                "qualifying_value": data.qualifying_value,
                "valid_until": _day(data.valid_until, program.zone) if data.valid_until else "",
            },
        )
    ]


# ---------------------------------------------------------------------- the scan


def last_day(expires_at: datetime, zone: ZoneInfo) -> date:
    """The last local day the points can be used (expiry at local midnight: the day before)."""
    return (expires_at - _TICK).astimezone(zone).date()


def _day(at: datetime, zone: ZoneInfo) -> str:
    return last_day(at, zone).isoformat()


def expiring_on(lots: Iterable[LotOut], day: date, now: datetime, zone: ZoneInfo) -> int:
    """Unspent points still to expire at `now` whose last day is `day`."""
    return sum(
        lot.remaining
        for lot in lots
        if lot.remaining > 0
        and lot.expires_at is not None
        and lot.expires_at > now
        and last_day(lot.expires_at, zone) == day
    )


def expiry_notices(
    member_id: str, lots: Sequence[LotOut], now: datetime, program: Program
) -> list[Notice]:
    """One reminder per (last day, window): the narrowest window the expiry falls in.

    Computed from unspent remainders at `now`; spent or already expired points are never
    mentioned. A lot first seen inside the 7-day window gets the 7-day reminder only."""
    settings = program.notifications
    if not settings.enabled(NoticeKind.POINTS_EXPIRING) or not settings.expiry_reminder_days:
        return []
    zone = program.zone
    by_day: dict[date, list[LotOut]] = {}
    for lot in lots:
        if lot.remaining > 0 and lot.expires_at is not None and lot.expires_at > now:
            by_day.setdefault(last_day(lot.expires_at, zone), []).append(lot)
    found: list[Notice] = []
    for day, group in sorted(by_day.items()):
        soonest = min(lot.expires_at for lot in group if lot.expires_at is not None)
        windows = [d for d in settings.expiry_reminder_days if soonest <= now + timedelta(days=d)]
        if not windows:
            continue
        window = min(windows)
        found.append(
            Notice(
                member_id,
                NoticeKind.POINTS_EXPIRING,
                day.isoformat(),
                f"{window}d",
                now,
                "scan of lots " + ", ".join(sorted(lot.lot_id for lot in group)),
                {"points": sum(lot.remaining for lot in group), "last_day": day.isoformat()},
            )
        )
    return found


#: In the window of an expiry reminder that corrects an earlier one: "7d-correction-55".
CORRECTION = "-correction-"


@dataclass(frozen=True, slots=True)
class Reminded:
    """What a member was told about the points whose last day is one day."""

    windows: frozenset[str]  # the reminder windows recorded for that day ("30d", "7d")
    stated: int  # the points the last reminder delivered stated (0: none delivered)
    undelivered: bool  # a reminder for that day is still to go out (it states the amount then)


def expiry_corrections(found: Sequence[Notice], reminded: Mapping[str, Reminded]) -> list[Notice]:
    """A corrected reminder for each day whose reminder in this window was delivered
    stating fewer points than now expire that day (late, back-dated events added to it).

    Keyed by the amount, so a repeated scan records it once, and a later increase gets a
    correction of its own. A reminder still to be delivered needs none: it is rechecked."""
    corrections: list[Notice] = []
    for notice in found:
        told = reminded.get(notice.subject)
        points = int(notice.data["points"])
        if (
            notice.kind != NoticeKind.POINTS_EXPIRING
            or told is None
            or notice.window not in told.windows
            or told.undelivered
            or points <= told.stated
        ):
            continue
        corrections.append(
            Notice(
                notice.member_id,
                notice.kind,
                notice.subject,
                f"{notice.window}{CORRECTION}{points}",
                notice.at,
                f"{notice.cause}; the last reminder said {told.stated}",
                # Reminders rechecked to nothing (spent) told nothing: a plain one then.
                {**notice.data, **({"previous": told.stated} if told.stated else {})},
            )
        )
    return corrections


def recheck(
    notice: Notice, lots: Sequence[LotOut], now: datetime, program: Program
) -> Notice | None:
    """Just before sending: an expiry reminder with what is still unspent, or None when
    the points were spent (or expired) after the reminder was scheduled."""
    if notice.kind != NoticeKind.POINTS_EXPIRING:
        return notice
    points = expiring_on(lots, date.fromisoformat(notice.subject), now, program.zone)
    if points <= 0:
        return None
    return Notice(
        notice.member_id,
        notice.kind,
        notice.subject,
        notice.window,
        notice.at,
        notice.cause,
        {**notice.data, "points": points},
    )


def _year_before(at: datetime) -> datetime:
    try:
        return at.replace(year=at.year - 1)
    except ValueError:  # 29 February
        return at.replace(year=at.year - 1, day=28)


def qualifying_points(
    entries: Iterable[EntrySummary], period_end: datetime, program: Program
) -> int:
    """Points earned (less points reversed) inside the qualification window ending at
    `period_end`: a rolling 12 months, or the calendar year it closes (program zone)."""
    if program.tier_qualification.window == "calendar_year":
        year = (period_end - _TICK).astimezone(program.zone).year
        start = datetime(year, 1, 1, tzinfo=program.zone)
    else:
        start = _year_before(period_end)
    return sum(
        e.points
        for e in entries
        if e.entry_type in ("points_earned", "points_reversed")
        and start <= e.effective_at < period_end
    )


def tier_at_risk_notices(
    member_id: str,
    tier_id: str | None,
    valid_until: datetime | None,
    entries: Sequence[EntrySummary],
    now: datetime,
    program: Program,
) -> list[Notice]:
    """Tier at risk: within N days of the period end and below the tier's threshold.

    Points-based qualification only: spend-based programs get no at-risk notice (the
    notifier does not see spend)."""
    settings = program.notifications
    tier = program.tier(tier_id)
    if (
        not settings.enabled(NoticeKind.TIER_AT_RISK)
        or tier is None
        or valid_until is None
        or tier == program.entry_tier
        or program.tier_qualification.basis != "points"
    ):
        return []
    period_end = valid_until - timedelta(days=program.tier_qualification.grace_days)
    if not period_end - timedelta(days=settings.tier_at_risk_days) <= now < period_end:
        return []
    qualifying = qualifying_points(entries, period_end, program)
    if qualifying >= tier.threshold:
        return []
    return [
        Notice(
            member_id,
            NoticeKind.TIER_AT_RISK,
            tier.id,
            _day(period_end, program.zone),
            now,
            f"scan: {qualifying} of {tier.threshold} qualifying points",
            {
                "tier": tier.name,
                "tier_id": tier.id,
                "qualifying": qualifying,
                "threshold": tier.threshold,
                "shortfall": tier.threshold - qualifying,
                "period_end": _day(period_end, program.zone),
            },
        )
    ]


def _month_start(year: int, month: int, zone: ZoneInfo) -> datetime:
    return datetime(year, month, 1, tzinfo=zone)


def statement_notices(
    member_id: str, entries: Sequence[EntrySummary], now: datetime, program: Program
) -> list[Notice]:
    """The previous month's summary, from the program's statement day on, for a member
    with entries in that month."""
    settings = program.notifications
    if not settings.enabled(NoticeKind.MONTHLY_STATEMENT):
        return []
    zone = program.zone
    local = now.astimezone(zone)
    if local.day < settings.statement_day:
        return []
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    start = _month_start(year, month, zone)
    end = _month_start(local.year, local.month, zone)
    inside = sorted((e for e in entries if start <= e.effective_at < end), key=lambda e: e.seq)
    if not inside:
        return []
    totals = {"earned": 0, "spent": 0, "expired": 0, "other": 0}
    for e in inside:
        if e.entry_type == "points_earned":
            totals["earned"] += e.points
        elif e.entry_type in ("points_redeemed", "redemption_cancelled"):
            totals["spent"] -= e.points
        elif e.entry_type == "points_expired":
            totals["expired"] -= e.points
        else:
            totals["other"] += e.points
    label = f"{year:04d}-{month:02d}"
    return [
        Notice(
            member_id,
            NoticeKind.MONTHLY_STATEMENT,
            label,
            "",
            now,
            f"entries #{inside[0].seq}..#{inside[-1].seq} of {label}",
            {
                "month": label,
                "entries": len(inside),
                "available": inside[-1].available_after,
                **totals,
            },
        )
    ]


# ------------------------------------------------------------ quiet hours, opt-outs


def in_quiet_hours(at: datetime, program: Program) -> bool:
    quiet = program.notifications.quiet_hours
    if quiet is None:
        return False
    clock = at.astimezone(program.zone).time()
    if quiet.start < quiet.end:
        return quiet.start <= clock < quiet.end
    return clock >= quiet.start or clock < quiet.end


def send_after(at: datetime, program: Program) -> datetime:
    """The earliest instant from `at` outside the program's quiet hours."""
    quiet = program.notifications.quiet_hours
    if quiet is None or not in_quiet_hours(at, program):
        return at
    local = at.astimezone(program.zone)
    day = local.date()
    if quiet.start > quiet.end and local.time() >= quiet.start:
        day += timedelta(days=1)
    return _local(day, quiet.end, program.zone)


def _local(day: date, clock: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


def allowed(opt_outs: Iterable[tuple[str, str]], kind: NoticeKind | str, channel: str) -> bool:
    """`opt_outs` holds (channel, kind) pairs; "*" stands for every channel or kind."""
    for out_channel, out_kind in opt_outs:
        if out_channel in ("*", channel) and out_kind in ("*", str(kind)):
            return False
    return True
