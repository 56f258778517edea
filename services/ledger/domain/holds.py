"""Redemption holds: points set aside (two-phase, like TigerBeetle's pending transfers).

A hold takes points from the member's lots into `member:held`; it resolves exactly once:
captured (in full or in part: the captured points go to `program:redeemed`, the rest go
back), voided, or expired when its TTL passes. Points that go back return to the lots they
came from, with those lots' original expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime

from services.ledger.domain.lots import LotMove

HELD = "held"
CAPTURED = "captured"
VOIDED = "voided"
EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """One hold: how many points, from which lots, until when, and how it resolved."""

    hold_id: str
    reference: str
    points: int
    moves: tuple[LotMove, ...]  # what was taken from each lot (negative amounts)
    placed_at: datetime
    expires_at: datetime
    status: str = HELD  # held | captured | voided | expired
    captured: int = 0
    resolved_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.status == HELD


def hold_id(member_id: str, reference: str) -> str:
    """A hold's id names its member (so it needs no lookup) and its client reference.

    The same member and reference always give the same id: placing again is idempotent.
    """
    member = base64.urlsafe_b64encode(member_id.encode()).decode().rstrip("=")
    digest = hashlib.sha256(reference.encode()).hexdigest()[:20]
    return f"h.{member}.{digest}"


def member_of_hold(hold: str) -> str | None:
    """The member a hold id names, or None when it is not a hold id."""
    parts = hold.split(".")
    if len(parts) != 3 or parts[0] != "h" or not parts[1] or len(parts[2]) != 20:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        member = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return member if hold_id(member, "x").split(".")[1] == parts[1] else None


def split_capture(
    moves: tuple[LotMove, ...], captured: int
) -> tuple[tuple[LotMove, ...], tuple[LotMove, ...]]:
    """Split a hold's moves: the captured points come from the lots taken first (soonest
    expiring), the rest go back (positive moves) to the lots they came from."""
    taken: list[LotMove] = []
    back: list[LotMove] = []
    left = captured
    for move in moves:
        amount = -move.amount
        use = min(left, amount)
        left -= use
        if use:
            taken.append(LotMove(move.lot_id, -use))
        if amount - use:
            back.append(LotMove(move.lot_id, amount - use))
    return tuple(taken), tuple(back)
