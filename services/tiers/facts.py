"""Ledger entries (as published on loyalty.ledger.v1) -> the facts the tier policy reads."""

from __future__ import annotations

from datetime import datetime

from schemas.outbound import LedgerEntry
from services.ledger.domain.tier_policy import Fact

TIER_CHANGED = "tier.changed"


def _int(entry: LedgerEntry, key: str) -> int:
    value = entry.details.get(key)
    return value if isinstance(value, int) else 0


def fact_from_entry(entry: LedgerEntry) -> Fact | None:
    """The policy's view of one entry; None for an entry without a ledger position."""
    if entry.position is None:
        return None
    pos, member, at = entry.position, entry.member_id, entry.effective_at
    details = entry.details
    if entry.entry_type == "points_earned":
        return Fact(
            pos,
            member,
            at,
            kind="earn",
            points=_int(entry, "points"),
            spend_minor=_int(entry, "order_total_minor"),
        )
    if entry.entry_type == "points_reversed":
        order = details.get("order_id")
        return Fact(
            pos,
            member,
            at,
            kind="reverse",
            # Everything the refund reversed: taken back, forgiven or already expired.
            points=_int(entry, "points") + _int(entry, "forgiven") + _int(entry, "already_expired"),
            spend_minor=_int(entry, "order_refunded_minor"),
            order_id=order if isinstance(order, str) else None,
        )
    if entry.entry_type == "tier_assigned" and entry.provenance.event_type != TIER_CHANGED:
        tier = details.get("tier")
        until = details.get("until")
        return Fact(
            pos,
            member,
            at,
            kind="override",
            tier=tier if isinstance(tier, str) else None,
            until=datetime.fromisoformat(until) if isinstance(until, str) else None,
            locked=bool(details.get("locked")),
        )
    return Fact(pos, member, at)
