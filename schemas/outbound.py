"""Models of what the ledger and its projections publish: every entry, each member's latest
balance and tier status."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostingOut(_Out):
    account: str = Field(description="member:available|pending|held or program:* account")
    amount: int = Field(description="signed points; the postings of one entry sum to zero")


class LotOut(_Out):
    lot_id: str
    amount: int
    remaining: int
    status: str
    earned_at: datetime
    release_at: datetime | None
    expires_at: datetime | None
    source: str
    program_version: str | None = None
    settled: int = Field(
        0, description="what of it settled a balance below zero (unlimited return policy)"
    )


class LotMoveOut(_Out):
    lot_id: str
    amount: int = Field(description="negative: taken from the lot; positive: returned to it")


class BalanceOut(_Out):
    available: int
    pending: int
    held: int


class OriginOut(_Out):
    channel: str = Field(description="kafka | http | file | ops | scheduler")
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    line: int | None = None
    file: str | None = None
    request_id: str | None = None
    actor: str | None = None


class ProvenanceOut(_Out):
    origin: OriginOut
    event_id: str | None = None
    event_type: str | None = None
    rule_id: str | None = None
    program_version: str | None = None
    tier: str | None = None


class LedgerEntry(_Out):
    """One ledger entry as published on loyalty.ledger.v1 and shown in statements."""

    member_id: str
    seq: int = Field(description="the entry's number in the member's account (1 = enrolment)")
    position: int | None = Field(
        default=None, description="ledger position (notification id): order across members"
    )
    entry_type: str
    effective_at: datetime
    recorded_at: datetime
    points: int = Field(description="signed change of the member's available+pending points")
    postings: tuple[PostingOut, ...]
    moves: tuple[LotMoveOut, ...]
    lots_after: tuple[LotOut, ...]
    balance_after: BalanceOut
    provenance: ProvenanceOut
    note: str
    details: dict[str, str | int | None] = {}


class TierProgressOut(_Out):
    """Where a member stands toward the next tier (qualifying activity, not the balance)."""

    basis: str = Field(description="points (earned) or spend (minor units)")
    qualifying_value: int = Field(description="qualifying points or spend in the window now")
    next_tier: str | None = Field(description="the next tier up; null at the top")
    next_threshold: int | None
    period_end: datetime = Field(description="end of the current qualification period")


class MemberBalance(_Out):
    """A member's balance as published on loyalty.balances.v1 (key: member_id)."""

    member_id: str
    available: int
    pending: int
    held: int
    lifetime_earned: int
    tier: str | None
    expiring: dict[str, int] = Field(
        default={}, description="points expiring within 30, 60 and 90 days"
    )
    as_of_position: int | None
    as_of: datetime
    tier_held_until: datetime | None = Field(
        default=None, description="the current tier is held at least until then"
    )
    tier_progress: TierProgressOut | None = None


class TierStatus(_Out):
    """A member's tier status as the tiers projection follows it from the ledger, published
    on loyalty.tier-status.v1 (compacted; key: member_id). The tier and its dates are the
    ledger's own (its tier_assigned entries); the qualifying value is counted at `as_of`."""

    member_id: str
    tier: str | None
    held_until: datetime | None = Field(description="the tier is held at least until then")
    locked: bool = Field(description="an ops override keeps automatic changes out")
    override_until: datetime | None = Field(description="when an ops override ends")
    basis: str = Field(description="points (earned) or spend (minor units)")
    qualifying_value: int = Field(description="qualifying points or spend in the window")
    next_tier: str | None = Field(description="the next tier up; null at the top")
    next_threshold: int | None
    period_end: datetime = Field(description="end of the current qualification period")
    as_of_position: int = Field(description="ledger position of the last entry followed")
    as_of: datetime = Field(description="the instant the qualifying value is counted at")
