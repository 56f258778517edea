"""Request and response models of the HTTP API: separate from the ledger's events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.inbound import WHOLE
from schemas.limits import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_POINTS,
    MAX_REASON_LENGTH,
    MAX_REFERENCE_LENGTH,
)
from schemas.outbound import LedgerEntry, TierProgressOut
from schemas.text import CONTROL_CLASS, NO_CONTROL_PATTERN

Reference = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_REFERENCE_LENGTH, pattern=ID_PATTERN)
]
Reason = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_REASON_LENGTH, pattern=NO_CONTROL_PATTERN),
]
"""Stored free text: no control character (see schemas/text.py)."""
EMAIL_PATTERN = rf"^[^@\s{CONTROL_CLASS}]+@[^@\s{CONTROL_CLASS}]+$"
MAX_TTL_SECONDS = 30 * 24 * 3600


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventResult(_Out):
    status: str = Field(
        description="applied, parked (waits for what it depends on), or duplicate (an "
        "event_id seen before)"
    )
    event_id: str
    member_id: str
    entries: list[str] = Field(description="ledger entries the event produced (member#seq)")
    original: str | None = Field(
        default=None, description="for a duplicate: the outcome of the first delivery"
    )
    reason: str | None = Field(default=None, description="parked: what it waits for")
    detail: str | None = Field(default=None, description="parked: the reason in words")


class ParkedEvent(_Out):
    member_id: str
    event_id: str
    event_type: str
    occurred_at: datetime
    reason: str = Field(description="what it waits for, e.g. insufficient_points")
    detail: str
    deadline: datetime = Field(description="declined and dead-lettered after this instant")
    parked_at: datetime
    source: str = Field(description="where it came from (channel, topic, partition, offset)")


class Balance(_Out):
    member_id: str
    available: int
    pending: int
    held: int
    lifetime_earned: int
    tier: str | None
    expiring: dict[str, int] = Field(description="points expiring within 30d, 60d and 90d")
    as_of: datetime
    as_of_position: int = Field(description="ledger position the balance reflects")
    tier_held_until: datetime | None = Field(
        default=None, description="the current tier is held at least until then"
    )
    tier_progress: TierProgressOut | None = Field(
        default=None, description="qualifying value, next tier, its threshold, period end"
    )


class Statement(_Out):
    member_id: str
    entries: list[LedgerEntry] = Field(description="newest first, with provenance")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


class LotView(_Out):
    lot_id: str
    source: str
    amount: int
    remaining: int
    status: str
    earned_at: datetime
    release_at: datetime | None
    expires_at: datetime | None
    program_version: str | None


class HoldRequest(_In):
    reference: Reference = Field(
        description="the client's reference (e.g. basket id): placing again is idempotent"
    )
    points: Annotated[int, Field(ge=1, le=MAX_POINTS), WHOLE]
    ttl_seconds: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS), WHOLE] = Field(
        default=900, description="released by itself after this"
    )


class CaptureRequest(_In):
    points: Annotated[int, Field(ge=1, le=MAX_POINTS), WHOLE] | None = Field(
        default=None, description="default: the whole hold"
    )


class VoidRequest(_In):
    reason: Reason | None = None


class Hold(_Out):
    hold_id: str
    member_id: str
    reference: str
    points: int
    status: str = Field(description="held | captured | voided | expired")
    captured: int
    placed_at: datetime
    expires_at: datetime
    resolved_at: datetime | None
    entries: list[str] = Field(default=[], description="entries this request recorded")


class AdjustmentRequest(_In):
    points: Annotated[int, Field(ge=-MAX_POINTS, le=MAX_POINTS), WHOLE] = Field(
        description="signed; not zero",
        json_schema_extra={"not": {"const": 0}},
    )
    reason: Reason
    allow_negative: bool = False


class AdjustmentResult(_Out):
    member_id: str
    entries: list[str]
    actor: str
    balance: Balance


class MemberSummary(_Out):
    member_id: str
    available: int
    pending: int
    held: int
    tier: str | None


class DayFigures(_Out):
    day: str
    issued: int
    redeemed: int
    expired: int


class ProgramMetrics(_Out):
    """Ratios are integer basis points (1/100 of a percent), rounded down."""

    program_version: str
    members: int
    outstanding_points: int = Field(description="available + pending + held: the liability")
    issued: int
    redeemed: int
    expired: int
    redemption_rate_bp: int = Field(description="redeemed / issued, basis points")
    breakage_bp: int = Field(description="expired / issued, basis points")
    members_per_tier: dict[str, int]
    period_days: int
    active_members: int = Field(description="members who earned or spent in the last period")
    retention_bp: int = Field(
        description="share of the previous period's active members active again, basis points"
    )
    per_day: list[DayFigures]


class Health(_Out):
    status: str
    checks: dict[str, str] = {}


class AuditEntry(_Out):
    entry: LedgerEntry
    source_event: dict[str, Any] | None = Field(
        description="the inbound event as received (canonical JSON), when the entry came from one"
    )


class AuditReport(_Out):
    member_id: str
    balance: Balance
    entries: list[AuditEntry] = Field(description="oldest first")
    lots: list[LotView]
    entries_total: int = Field(description="what the entries add up to (available+pending+held)")
    recorded_total: int
    explained: bool = Field(description="the entries add up to the balance")


class WhatIfRequest(_In):
    program_yaml: Annotated[str, StringConstraints(min_length=1, max_length=64 * 1024)] = Field(
        description="the other program version, as a program file (YAML)"
    )
    member_id: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
        ]
        | None
    ) = None
    apply: bool = Field(
        default=False, description="post the differences as adjustments (ops:write), once"
    )


class MemberDifference(_Out):
    member_id: str
    actual: int
    would_have: int
    difference: int
    actual_lifetime: int
    would_have_lifetime: int


class WhatIfReport(_Out):
    run_id: str
    program_version: str
    current_version: str
    position: int
    as_of: datetime
    replayed_events: int
    replayed_operations: int
    tiers_recomputed: bool = Field(
        description="tiers decided again under the other program (it has tiers); ops "
        "overrides are replayed as made"
    )
    tier_changes: int = Field(description="tier changes the replay recorded, up to as_of")
    skipped: list[str]
    members: list[MemberDifference]
    posted: list[str]


class WhatIfProgress(_Out):
    stage: Literal["queued", "replay", "compare", "done", "failed"] = Field(
        description="replay: how far through the history (one member: its events; the "
        "whole ledger: positions of its notification log); compare: members compared"
    )
    done: int
    total: int


class WhatIfJob(_Out):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    program_version: str
    member_id: str | None
    apply: bool
    actor: str = Field(description="the key that started the run")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: WhatIfProgress
    result: WhatIfReport | None = Field(description="the report, once done")
    error: str | None = Field(description="why it failed, once failed")


class VerifyResult(_Out):
    ok: bool
    members: int
    entries: int
    receipts: int
    violations: list[str]


class ReplayRequest(_In):
    topic: str = Field(description="an inbound topic, e.g. loyalty.purchases.v1")
    from_offset: Annotated[int, Field(ge=0), WHOLE]
    to_offset: Annotated[int, Field(ge=0), WHOLE] = Field(description="inclusive")
    partitions: list[Annotated[int, Field(ge=0, le=100_000), WHOLE]] | None = Field(
        default=None, max_length=1000, description="default: every partition"
    )


class ReplayResult(_Out):
    applied: int
    skipped: int = Field(description="already applied before (idempotency)")
    dead_lettered: int
    reasons: dict[str, int]


class RebuildResult(_Out):
    serving: str = Field(description="the table set now serving the read models")
    entries: int


# ------------------------------------------------------------- notifications

NoticeChannel = Literal["email", "webhook", "*"]
NoticeKindOrAll = Literal[
    "points_expiring",
    "tier_reached",
    "tier_at_risk",
    "reward_unlocked",
    "referral_rewarded",
    "points_available",
    "monthly_statement",
    "*",
]


class OptOut(_Out):
    channel: str = Field(description="email, webhook, or * (every channel)")
    kind: str = Field(description="a notice kind, or * (every kind)")


class OptOutRequest(_In):
    channel: NoticeChannel = "*"
    kind: NoticeKindOrAll = "*"


class ContactRequest(_In):
    email: (
        Annotated[str, StringConstraints(min_length=3, max_length=320, pattern=EMAIL_PATTERN)]
        | None
    ) = Field(default=None, description="omit or null to clear")
    name: (
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROL_PATTERN)]
        | None
    ) = None


class NotificationPreferences(_Out):
    member_id: str
    email: str | None
    name: str | None
    opted_out: list[OptOut]


class NoticeDelivery(_Out):
    key: str = Field(description="member|kind|subject|window: one notice, at most once")
    kind: str
    channel: str
    state: str = Field(description="pending, sending, sent, failed, dead or suppressed")
    attempts: int
    at: datetime
    sent_at: datetime | None
    last_error: str | None
    in_doubt: bool
    cause: str
