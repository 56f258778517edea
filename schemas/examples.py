"""One valid example of each inbound event type: shown in the JSON Schemas and the OpenAPI
document (so ``/docs`` and generated clients start from a real event) and checked by
tests/unit/test_contract_examples.py to parse."""

from __future__ import annotations

from typing import Any, Final


def _event(event_type: str, event_id: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": event_type,
        "occurred_at": "2026-11-20T10:15:00Z",
        "member_id": "m-42",
        **extra,
        "data": data,
    }


EVENT_EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "purchase.completed": _event(
        "purchase.completed",
        "ord-1001-paid",
        {
            "order_id": "1001",
            "currency": "USD",
            "total_minor": 12550,
            "lines": [{"sku": "A1", "category": "shoes", "quantity": 1, "unit_price_minor": 12550}],
        },
    ),
    "purchase.refunded": _event(
        "purchase.refunded",
        "ord-1001-refund-1",
        {"order_id": "1001", "refund_id": "r-1", "currency": "USD", "amount_minor": 2500},
    ),
    "referral.qualified": _event(
        "referral.qualified", "ref-77-qualified", {"referee_member_id": "m-77"}
    ),
    "redemption.requested": _event(
        "redemption.requested", "red-9-requested", {"redemption_id": "red-9", "points": 100}
    ),
    "redemption.cancelled": _event(
        "redemption.cancelled",
        "red-9-cancelled",
        {"redemption_id": "red-9", "reason": "changed my mind"},
    ),
    "activity.completed": _event(
        "activity.completed",
        "rev-314-done",
        {"activity": "review", "reference": "rev-314"},
        source="reviews",
    ),
    "member.enrolled": _event("member.enrolled", "m-42-enrolled", {"referral_code": "FRIEND-42"}),
    "tier.changed": _event(
        "tier.changed",
        "tier-m-42-1",
        {
            "from_tier": "silver",
            "to_tier": "gold",
            "reason": "upgrade",
            "basis": "points",
            "qualifying_value": 5000,
            "threshold": 5000,
            "effective_from": "2026-11-20T10:15:00Z",
            "valid_until": "2027-12-31T23:59:59Z",
            "caused_by_position": 17,
        },
    ),
}
"""Event type -> a valid event of that type (the first is the example of DESIGN.md)."""
