"""Tier state <-> JSON-ready dicts: how the faust table (and its changelog) stores it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.ledger.domain.tier_policy import Contribution, TierState


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def encode_state(state: TierState) -> dict[str, Any]:
    return {
        "member_id": state.member_id,
        "tier": state.tier,
        "period_end": _time(state.period_end),
        "held_until": _time(state.held_until),
        "override_until": _time(state.override_until),
        "locked": state.locked,
        "contributions": [[c.at.isoformat(), c.value] for c in state.contributions],
        "refunded": [[order, amount] for order, amount in state.refunded],
        "last_position": state.last_position,
        "stream_time": _time(state.stream_time),
    }


def decode_state(data: dict[str, Any]) -> TierState:
    return TierState(
        member_id=str(data["member_id"]),
        tier=data.get("tier"),
        period_end=_parse(data.get("period_end")),
        held_until=_parse(data.get("held_until")),
        override_until=_parse(data.get("override_until")),
        locked=bool(data.get("locked", False)),
        contributions=tuple(
            Contribution(datetime.fromisoformat(at), int(value))
            for at, value in data.get("contributions", ())
        ),
        refunded=tuple((str(order), int(amount)) for order, amount in data.get("refunded", ())),
        last_position=int(data.get("last_position", 0)),
        stream_time=_parse(data.get("stream_time")),
    )
