"""The loyalty program: earn rules, tiers, expiry, rewards and return policy, validated."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import date, time
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Slug = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Points = Annotated[int, Field(ge=0, le=10**9)]
PositiveDecimal = Annotated[Decimal, Field(gt=0, le=1000, max_digits=12, decimal_places=6)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rounding(StrEnum):
    """How an order's fractional points become whole points (applied once per order)."""

    FLOOR = "floor"
    HALF_UP = "half_up"


class Weekday(StrEnum):
    MONDAY = "monday"
    TUESDAY = "tuesday"
    WEDNESDAY = "wednesday"
    THURSDAY = "thursday"
    FRIDAY = "friday"
    SATURDAY = "saturday"
    SUNDAY = "sunday"

    @property
    def number(self) -> int:
        """Monday is 0, as in `date.weekday()`."""
        return list(Weekday).index(self)


class CurrencyRate(_Model):
    """Points earned per whole currency unit; `minor_units` is the ISO 4217 exponent."""

    minor_units: int = Field(ge=0, le=4)
    points_per_unit: PositiveDecimal


class Multiplier(_Model):
    """A category or SKU multiplier (the highest matching one applies to a line)."""

    id: Slug
    multiplier: PositiveDecimal
    categories: tuple[Slug, ...] = ()
    skus: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _targets(self) -> Multiplier:
        if not self.categories and not self.skus:
            raise ValueError("a multiplier needs at least one of categories or skus")
        return self


class Promotion(_Model):
    """A time-boxed multiplier: date range (inclusive, program time zone) and/or weekdays."""

    id: Slug
    multiplier: PositiveDecimal
    starts_on: date | None = None
    ends_on: date | None = None
    weekdays: tuple[Weekday, ...] = ()
    categories: tuple[Slug, ...] = ()

    @model_validator(mode="after")
    def _range(self) -> Promotion:
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise ValueError("ends_on is before starts_on")
        return self


class Caps(_Model):
    per_order: Points | None = None
    per_member_per_day: Points | None = None


class Earn(_Model):
    rounding: Rounding = Rounding.FLOOR
    multipliers: tuple[Multiplier, ...] = ()
    promotions: tuple[Promotion, ...] = ()
    caps: Caps = Caps()
    pending_days: int = Field(default=0, ge=0, le=365)


class Partner(_Model):
    """An emitting partner (envelope `source`) that earns at its own rate."""

    points_per_unit: PositiveDecimal
    name: str | None = Field(default=None, max_length=200)


class ActivityLimit(StrEnum):
    ONCE = "once"
    PER_YEAR = "per_year"
    PER_DAY = "per_day"
    UNLIMITED = "unlimited"


class Activity(_Model):
    points: Points
    limit: ActivityLimit = ActivityLimit.ONCE


class Referral(_Model):
    referrer_points: Points = 0
    referee_points: Points = 0


class ExpiryRounding(StrEnum):
    NONE = "none"
    END_OF_MONTH = "end_of_month"
    END_OF_YEAR = "end_of_year"


class Expiry(_Model):
    """Each lot expires `months_after_earn` after it was earned (None: never)."""

    months_after_earn: int | None = Field(default=None, ge=1, le=120)
    round_to: ExpiryRounding = ExpiryRounding.NONE


class Tier(_Model):
    id: Slug
    name: str = Field(min_length=1, max_length=100)
    threshold: Points = 0
    earn_multiplier: PositiveDecimal = Decimal(1)
    perks: tuple[str, ...] = ()


class TierQualification(_Model):
    """How a tier is earned and kept (the tiers service applies it; see services/tiers).

    - basis: points earned (never the spendable balance) or spend in minor units;
    - window: rolling N months (``rolling_12_months``, or ``rolling_months`` with
      ``months``) or the calendar year in the program's time zone;
    - grace_days: days after the end of the qualification period before a downgrade;
    - downgrade: straight to the tier the period qualifies for, or one level at a time.
    """

    basis: Literal["points", "spend"] = "points"
    window: Literal["rolling_12_months", "rolling_months", "calendar_year"] = "rolling_12_months"
    months: int = Field(default=12, ge=1, le=36)
    grace_days: int = Field(default=0, ge=0, le=365)
    downgrade: Literal["to_qualified", "one_level"] = "to_qualified"

    @property
    def rolling_months(self) -> int | None:
        """Length of a rolling window in months; None for the calendar year."""
        if self.window == "calendar_year":
            return None
        return 12 if self.window == "rolling_12_months" else self.months


class Arrival(_Model):
    """How the ledger treats events by their time (see README, "Backfills and late events").

    - future_tolerance_seconds: an event dated further ahead of the ledger's clock is
      rejected (`occurred_in_future`), never applied early;
    - park_hours: a redemption, refund or cancellation that arrives before what it depends
      on (funds, its order, its redemption) waits this long after its own time, retried
      whenever the member's account changes, before it is declined.
    """

    future_tolerance_seconds: int = Field(default=300, ge=0, le=7 * 86400)
    park_hours: int = Field(default=72, ge=0, le=90 * 24)


class Reward(_Model):
    name: str = Field(min_length=1, max_length=200)
    points: Annotated[int, Field(ge=1, le=10**9)]


class ReturnPolicy(StrEnum):
    """What a refund takes back (the order's pending points always go first).

    - pending_only: only points still pending from that order;
    - within_balance: then the available balance, never below zero;
    - unlimited: everything; the balance may go negative and later earnings settle it.
    Whatever a policy does not take back is recorded on the entry as forgiven.
    """

    PENDING_ONLY = "pending_only"
    WITHIN_BALANCE = "within_balance"
    UNLIMITED = "unlimited"


class Returns(_Model):
    policy: ReturnPolicy = ReturnPolicy.WITHIN_BALANCE


class NoticeKind(StrEnum):
    """What the notifier tells members about."""

    POINTS_EXPIRING = "points_expiring"
    TIER_REACHED = "tier_reached"
    TIER_AT_RISK = "tier_at_risk"
    REWARD_UNLOCKED = "reward_unlocked"
    REFERRAL_REWARDED = "referral_rewarded"
    POINTS_AVAILABLE = "points_available"
    MONTHLY_STATEMENT = "monthly_statement"


class QuietHours(_Model):
    """No notice is sent from `start` to `end` (program time zone; may wrap midnight)."""

    start: time
    end: time

    @model_validator(mode="after")
    def _span(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours need different start and end")
        return self


class Notifications(_Model):
    """What the notifier sends and when (not part of the ledger's rules, see `version`)."""

    kinds: tuple[NoticeKind, ...] = tuple(NoticeKind)
    expiry_reminder_days: tuple[Annotated[int, Field(ge=1, le=365)], ...] = (30, 7)
    tier_at_risk_days: int = Field(default=30, ge=1, le=365)
    quiet_hours: QuietHours | None = None
    statement_day: int = Field(default=1, ge=1, le=28)
    attempts: int = Field(default=5, ge=1, le=20, description="tries per channel, then dead")
    retry_base_seconds: int = Field(default=30, ge=1, le=86400)

    @field_validator("expiry_reminder_days")
    @classmethod
    def _days(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError("reminder windows must be different")
        return tuple(sorted(value, reverse=True))

    def enabled(self, kind: NoticeKind) -> bool:
        return kind in self.kinds


class Program(_Model):
    id: Slug
    name: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    auto_enrol: bool = True
    currencies: dict[Annotated[str, Field(pattern=r"^[A-Z]{3}$")], CurrencyRate] = Field(
        min_length=1
    )
    earn: Earn = Earn()
    partners: dict[Slug, Partner] = {}
    activities: dict[Slug, Activity] = {}
    referral: Referral = Referral()
    expiry: Expiry = Expiry()
    tiers: tuple[Tier, ...] = ()
    tier_qualification: TierQualification = TierQualification()
    rewards: dict[Slug, Reward] = {}
    returns: Returns = Returns()
    notifications: Notifications = Notifications()
    arrival: Arrival = Arrival()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _tiers(self) -> Program:
        ids = [t.id for t in self.tiers]
        if len(set(ids)) != len(ids):
            raise ValueError("tier ids must be unique")
        thresholds = [t.threshold for t in self.tiers]
        if thresholds != sorted(thresholds) or len(set(thresholds)) != len(thresholds):
            raise ValueError("tiers must be listed by strictly increasing threshold")
        if self.tiers and self.tiers[0].threshold != 0:
            raise ValueError("the first tier is the entry tier and needs threshold 0")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("version", None)  # computed once per content, not copied over
        return copied

    @cached_property
    def version(self) -> str:
        """Content hash of the validated program: the same rules give the same version."""
        return f"{self.id}@{program_digest(self)[:12]}"

    def canonical_json(self) -> str:
        """The same rules give the same text: numbers are written in one way (1.0 -> "1").

        Only what decides points is in it (and so in the version): the notifier's section
        is left out, and the arrival section while it is the default, so programs written
        before it existed keep their versions."""
        data = self.model_dump(mode="python")
        del data["notifications"]
        if self.arrival == Arrival():
            del data["arrival"]
        return json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"))

    def tier(self, tier_id: str | None) -> Tier | None:
        for tier in self.tiers:
            if tier.id == tier_id:
                return tier
        return None

    @property
    def entry_tier(self) -> Tier | None:
        return self.tiers[0] if self.tiers else None


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, date | time):
        return value.isoformat()
    return value


def program_digest(program: Program) -> str:
    return hashlib.sha256(program.canonical_json().encode()).hexdigest()
