"""How the view stores an entry's body (the ledger-entry message as JSON) in fewer bytes.

The view's entries table has the member, seq, entry type and effective time as columns and
the ledger position as its key; the body held them again, with every key of every nested
object spelled out. A compact body is a JSON array (orjson) instead:

    [1, recorded_at, points, postings, moves, lots_after, balance_after, provenance, note,
     details, extra?]

- postings and moves are flat lists (`[account, amount, ...]`, `[amount, lot_id, ...]`);
- a lot, the balance, the provenance and its origin are lists of their values in the order
  of their keys sorted, without trailing nulls;
- `details` with one of the key sets in `DETAIL_KEYS` is `[its number, values...]`;
- in a lot, an `earned_at` that is the entry's effective time and a `program_version` that
  is the provenance's are `SAME` (1);
- `extra` (left out when empty) holds the fields the columns hold whose body value is not
  what the columns give back (e.g. an effective time written with another offset).

`expand` gives back exactly the dict the full body decoded to, with its keys in the same
(sorted) order at every level, so every read (statement, audit, console, the published
message, balances as of an instant, verify) sees what it saw. A body that does not fit
this shape (a key the shape does not know, an integer beyond 64 bits, text orjson will not
write) is stored in full, as before; rows written in full by earlier releases (a JSON
object) are read as before. The key lists are pinned to the outbound schema by a test.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson

COMPACT = 1  # the first element of a compact body: its format

TOP_KEYS = (
    "balance_after",
    "details",
    "effective_at",
    "entry_type",
    "lots_after",
    "member_id",
    "moves",
    "note",
    "points",
    "position",
    "postings",
    "provenance",
    "recorded_at",
    "seq",
)
COLUMN_KEYS = ("effective_at", "entry_type", "member_id", "position", "seq")
LOT_KEYS = (
    "amount",
    "earned_at",
    "expires_at",
    "lot_id",
    "program_version",
    "release_at",
    "remaining",
    "settled",
    "source",
    "status",
)
BALANCE_KEYS = ("available", "held", "pending")
PROVENANCE_KEYS = ("event_id", "event_type", "origin", "program_version", "rule_id", "tier")
ORIGIN_KEYS = ("actor", "channel", "file", "line", "offset", "partition", "request_id", "topic")
POSTING_KEYS = ("account", "amount")
MOVE_KEYS = ("amount", "lot_id")

# The key sets of `details` the entries have (each sorted): such details are stored as
# `[number, values...]`, their number the place in this list. Append only: stored bodies
# name them by place. Details with other keys are stored as they are (an object).
DETAIL_KEYS: tuple[tuple[str, ...], ...] = (
    (
        "day",
        "expired",
        "kind",
        "order_total_minor",
        "points",
        "reference",
        "tier_held_until",
        "tier_period_end",
    ),
    (
        "day",
        "expired",
        "kind",
        "order",
        "points",
        "reference",
        "tier_held_until",
        "tier_period_end",
    ),
    (
        "cause",
        "held_until",
        "locked",
        "override_until",
        "period_end",
        "previous",
        "rank",
        "reason",
        "retracts",
        "tier",
        "until",
    ),
    ("auto",),
    (
        "already_expired",
        "forgiven",
        "order_id",
        "order_refunded_minor",
        "points",
        "refund_id",
        "respent",
    ),
    ("respent",),
    ("points", "reason", "redemption_id", "respent"),
    ("lot_id", "points"),
    ("lot_id", "points", "respent"),
    ("lot_id",),
    ("hold_id", "points", "reference"),
    ("hold_id", "points", "returned"),
    ("hold_id", "points", "reason"),
    ("hold_id", "points"),
    ("actor", "points", "reason"),
    ("earned_at", "forgiven", "points", "referee", "respent", "role", "undone", "winner"),
    ("undone",),
    ("previous", "referrer"),
)
_DETAILS = {keys: number for number, keys in enumerate(DETAIL_KEYS)}
SAME = 1  # in a lot, for its earned_at the entry's effective time, for its program_version
# the provenance's (neither is ever an integer)

_TOP = frozenset(TOP_KEYS)
_LOT = frozenset(LOT_KEYS)
_PROVENANCE = frozenset(PROVENANCE_KEYS)
_ORIGIN = frozenset(ORIGIN_KEYS)
_BALANCE = frozenset(BALANCE_KEYS)
_POSTING = frozenset(POSTING_KEYS)
_MOVE = frozenset(MOVE_KEYS)


class _Misfit(Exception):
    """The body is not of the shape a compact body holds: it is stored in full."""


def effective_text(column: str) -> str:
    """The effective time as the body writes it, from the column (UTC, microseconds):
    pydantic writes UTC as `Z` and leaves out a zero fraction."""
    when = datetime.fromisoformat(column)
    offset = when.utcoffset()
    if offset is None or offset:
        return column
    return when.replace(tzinfo=None).isoformat() + "Z"


def _values(obj: Any, keys: tuple[str, ...], known: frozenset[str]) -> list[Any]:
    if not isinstance(obj, dict) or obj.keys() != known:
        raise _Misfit
    values = [obj[k] for k in keys]
    while values and values[-1] is None:
        values.pop()
    return values


def _flat(items: Any, keys: tuple[str, str], known: frozenset[str]) -> list[Any]:
    if not isinstance(items, list):
        raise _Misfit
    flat: list[Any] = []
    for item in items:
        if not isinstance(item, dict) or item.keys() != known:
            raise _Misfit
        flat += (item[keys[0]], item[keys[1]])
    return flat


def _compact(body: dict[str, Any], columns: dict[str, Any]) -> list[Any]:
    if body.keys() != _TOP or not isinstance(body["details"], dict):
        raise _Misfit
    if not isinstance(body["lots_after"], list):
        raise _Misfit
    provenance = _values(body["provenance"], PROVENANCE_KEYS, _PROVENANCE)
    provenance[2] = _values(body["provenance"]["origin"], ORIGIN_KEYS, _ORIGIN)
    compact: list[Any] = [
        COMPACT,
        body["recorded_at"],
        body["points"],
        _flat(body["postings"], POSTING_KEYS, _POSTING),
        _flat(body["moves"], MOVE_KEYS, _MOVE),
        [_lot(lot, body["effective_at"], provenance) for lot in body["lots_after"]],
        _values(body["balance_after"], BALANCE_KEYS, _BALANCE),
        provenance,
        body["note"],
        _details(body["details"]),
    ]
    extra = {k: body[k] for k in COLUMN_KEYS if body[k] != columns[k] or _typed(body[k], k)}
    if extra:
        compact.append(extra)
    return compact


def _details(details: dict[str, Any]) -> Any:
    number = _DETAILS.get(tuple(sorted(details)))
    if number is None:
        return details
    values = [number, *(details[k] for k in DETAIL_KEYS[number])]
    while values[-1] is None:
        values.pop()
    return values


def _lot(lot: Any, effective_at: Any, provenance: list[Any]) -> list[Any]:
    values = _values(lot, LOT_KEYS, _LOT)
    if len(values) < len(LOT_KEYS) or type(values[1]) is not str:
        raise _Misfit
    if type(values[4]) is int:  # would read as SAME
        raise _Misfit
    if values[1] == effective_at:
        values[1] = SAME
    if type(values[4]) is str and len(provenance) > 3 and values[4] == provenance[3]:
        values[4] = SAME
    return values


def _typed(value: Any, key: str) -> bool:
    """True when a value equals the column's but is not of its type (True == 1)."""
    return key in ("position", "seq") and type(value) is not int


def encode(
    body: dict[str, Any],
    *,
    position: int,
    member_id: str,
    seq: int,
    entry_type: str,
    effective_at: str,
) -> str:
    """The body as the view stores it; `effective_at` is the column's text."""
    columns = {
        "effective_at": effective_text(effective_at),
        "entry_type": entry_type,
        "member_id": member_id,
        "position": position,
        "seq": seq,
    }
    try:
        return orjson.dumps(_compact(body, columns), option=orjson.OPT_SORT_KEYS).decode()
    except (_Misfit, KeyError, IndexError, TypeError):  # orjson.JSONEncodeError is a TypeError
        return json.dumps(body, sort_keys=True)


def _dict(keys: tuple[str, ...], values: list[Any]) -> dict[str, Any]:
    return {k: values[i] if i < len(values) else None for i, k in enumerate(keys)}


def _lot_dict(values: list[Any], effective: str, provenance: dict[str, Any]) -> dict[str, Any]:
    lot = _dict(LOT_KEYS, values)
    if lot["earned_at"] == SAME and type(lot["earned_at"]) is int:
        lot["earned_at"] = effective
    if lot["program_version"] == SAME and type(lot["program_version"]) is int:
        lot["program_version"] = provenance["program_version"]
    return lot


def expand(
    text: str,
    *,
    position: int,
    member_id: str,
    seq: int,
    entry_type: str,
    effective_at: str,
) -> dict[str, Any]:
    """The body as the view was given it (the keys sorted at every level)."""
    if not text.startswith("["):
        body: dict[str, Any] = json.loads(text)  # stored in full
        return body
    c = orjson.loads(text)
    extra: dict[str, Any] = c[10] if len(c) > 10 else {}
    provenance = _dict(PROVENANCE_KEYS, c[7])
    provenance["origin"] = _dict(ORIGIN_KEYS, provenance["origin"])
    postings, moves = c[3], c[4]
    effective = extra.get("effective_at") or effective_text(effective_at)
    return {
        "balance_after": _dict(BALANCE_KEYS, c[6]),
        "details": _dict(DETAIL_KEYS[c[9][0]], c[9][1:]) if type(c[9]) is list else c[9],
        "effective_at": effective,
        "entry_type": extra.get("entry_type", entry_type),
        "lots_after": [_lot_dict(lot, effective, provenance) for lot in c[5]],
        "member_id": extra.get("member_id", member_id),
        "moves": [{"amount": moves[i], "lot_id": moves[i + 1]} for i in range(0, len(moves), 2)],
        "note": c[8],
        "points": c[2],
        "position": extra.get("position", position),
        "postings": [
            {"account": postings[i], "amount": postings[i + 1]} for i in range(0, len(postings), 2)
        ],
        "provenance": provenance,
        "recorded_at": c[1],
        "seq": extra.get("seq", seq),
    }


def published(
    text: str,
    *,
    position: int,
    member_id: str,
    seq: int,
    entry_type: str,
    effective_at: str,
) -> str:
    """The body as JSON text, byte for byte what the view stored in full before."""
    if not text.startswith("["):
        return text
    body = expand(
        text,
        position=position,
        member_id=member_id,
        seq=seq,
        entry_type=entry_type,
        effective_at=effective_at,
    )
    return json.dumps(body)  # its keys are in sorted order already (`expand`)
