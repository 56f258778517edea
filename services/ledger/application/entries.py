"""Turns the account's domain events into ledger entries as published and shown to people."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python

from schemas.outbound import LedgerEntry
from services.ledger.domain import postings as acc
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.provenance import Provenance

_COMMON = {
    "originator_id",
    "originator_version",
    "timestamp",
    "originator_topic",
    "member_id",
    "effective_at",
    "postings",
    "moves",
    "lots_after",
    "balance_after",
    "provenance",
    "note",
}
_MEMBER = set(acc.MEMBER_ACCOUNTS)


def _fields(value: Any) -> dict[str, Any]:
    """A flat dataclass as a dict, without `dataclasses.asdict`'s deep copy."""
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    return {name: getattr(value, name) for name in names}


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _provenance(p: Provenance) -> dict[str, Any]:
    return {
        "origin": _fields(p.origin),
        "event_id": p.event_id,
        "event_type": p.event_type,
        "rule_id": p.rule_id,
        "program_version": p.program_version,
        "tier": p.tier,
    }


def entry_type(event: Any) -> str:
    """Entry type names, e.g. PointsEarned -> points_earned (worked out once per class)."""
    cls = type(event)
    found = _ENTRY_TYPES.get(cls)
    if found is None:
        name = cls.__name__
        found = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
        _ENTRY_TYPES[cls] = found
    return found


_ENTRY_TYPES: dict[type[Any], str] = {}


def entry_message(event: Any, position: int | None) -> LedgerEntry:
    """The ledger entry of an account event, as published and shown to people."""
    # Validated in one call from plain values (pydantic builds the nested models in its
    # core): the same models as building each nested model in Python first, for less.
    return _validate(entry_fields(event, position))


_validate = LedgerEntry.model_validate


def entry_json(fields: dict[str, Any]) -> dict[str, Any]:
    """`entry_fields` as `entry_message(...).model_dump(mode="json")` gives them (pydantic's
    own conversion of the values: times as it writes them, tuples as lists), without
    building the models. The fields are every field of the models (the dataclasses they
    come from have exactly those fields; a test pins both), so nothing is left to a
    default, and no value is one validation would change (a test compares the two on
    every kind of entry)."""
    body: dict[str, Any] = to_jsonable_python(fields)
    return body


def entry_fields(event: Any, position: int | None) -> dict[str, Any]:
    """The fields of the event's `LedgerEntry`, nested models as dicts (not validated)."""
    if isinstance(event, MemberAccount.Enrolled):
        how = "automatically on the first event" if event.auto else "by enrolment"
        return {
            "member_id": event.member_id,
            "seq": event.originator_version,
            "position": position,
            "entry_type": "enrolled",
            "effective_at": event.effective_at,
            "recorded_at": event.timestamp,
            "points": 0,
            "postings": (),
            "moves": (),
            "lots_after": (),
            "balance_after": {"available": 0, "pending": 0, "held": 0},
            "provenance": _provenance(event.provenance),
            "note": f"enrolled {how}",
            "details": {"auto": int(event.auto)},
        }
    assert isinstance(event, MemberAccount.Entry)
    details: dict[str, str | int | None] = {}
    for key, value in vars(event).items():
        if key in _COMMON or key.startswith("_"):
            continue
        if isinstance(value, bool):
            details[key] = int(value)
        elif value is None or isinstance(value, str | int):
            details[key] = value
        elif isinstance(value, datetime):
            details[key] = value.isoformat()
    # What the tiers service needs for a spend basis: the order's total and refunds so far.
    if isinstance(event, MemberAccount.PointsEarned) and event.order is not None:
        details["order_total_minor"] = event.order.total_minor
    if isinstance(event, MemberAccount.PointsReversed):
        details["order_refunded_minor"] = event.order.refunded_minor
    respent = getattr(event, "respent", None)
    if respent is not None:
        # Spends dated after this late one, taken again: a withdrawn redemption waits for
        # points again (its reward system may want to know).
        withdrawn = [r.redemption_id for r in respent.redemptions if r.status == "withdrawn"]
        if withdrawn:
            details["withdrawn_redemptions"] = ",".join(withdrawn)
    if isinstance(event, MemberAccount.PointsToppedUp) and event.taken_back:
        # "<instant> <points>" per refund that took its share of the top-up back
        details["taken_back"] = ";".join(f"{at.isoformat()} {n}" for at, n in event.taken_back)
    return {
        "member_id": event.member_id,
        "seq": event.originator_version,
        "position": position,
        "entry_type": entry_type(event),
        "effective_at": event.effective_at,
        "recorded_at": event.timestamp,
        "points": sum(p.amount for p in event.postings if p.account in _MEMBER),
        "postings": [{"account": p.account, "amount": p.amount} for p in event.postings],
        "moves": [{"lot_id": m.lot_id, "amount": m.amount} for m in event.moves],
        "lots_after": [_fields(lot) for lot in event.lots_after],
        "balance_after": _fields(event.balance_after),
        "provenance": _provenance(event.provenance),
        "note": event.note,
        "details": details,
    }


def lifetime_change(entry_type: str, details: Mapping[str, Any]) -> int:
    """How an entry changes the points a member has earned in all (`lifetime_earned`): an
    earn or a top-up adds its points, a refund takes back what it reversed, forgave or found
    expired, and a referral bonus reversed by an earlier referral is taken back."""
    if entry_type in ("points_earned", "points_topped_up"):
        return int(details["points"])
    if entry_type == "referral_reversed":
        return -int(details["points"]) - int(details["forgiven"])
    if entry_type == "points_reversed":
        return -int(details["points"]) - int(details["forgiven"]) - int(details["already_expired"])
    return 0
