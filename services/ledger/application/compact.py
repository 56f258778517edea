"""Stored events in a compact form (issue 11): what the rows hold, not how the library frames it.

A compact row is what `CompactMapper` writes. Its state is a JSON object whose first key is
`"@"`, the event class's version, and which leaves out:

- every field of the event whose value is its type's empty (None, "", 0, False, an empty
  sequence) or the field's default, when the field's annotation says what to fill back
  (`EventSpec`, a table built once per event class). A field of any other type is never
  left out: encoding cannot omit what decoding could not fill back;
- a created event's `originator_topic` while it is the topic of the event's own aggregate
  class (the class the event class is nested in);
- a field worked out from the others (`DERIVED`: a receipt's digest, the SHA-256 of its
  payload) while working it out gives back exactly its value.

The fields it writes go under short aliases (`ALIASES`: "0" for `timestamp`, ...; a field
is read under its alias or its name). Inside, `CompactTranscoder.encode_compact` frames value
objects and datetimes shortly: a value object as `{"$Lo": [...]}`, the list of its values in
the order `POSITIONS` pins, trailing defaults left out (a short code per type, `SHORT_NAMES`;
the dict of its fields while its class's fields differ from those positions), and a UTC
datetime as `{"$t": microseconds since the epoch}`, instead of the library's
`{"_type_": "Lot", "_data_": {...}}` and `{"_type_": "datetime_iso", "_data_": "...+00:00"}`.
A datetime in another zone, or naive, keeps the library's form. Both forms decode. The
short names, positions and aliases are pinned by tests: rows are read by them.

A compact row of an earlier class version has its left-out fields filled in before the
class's upcasters run (they may read them): an upcaster adding a field whose value before
differs from its type's empty must assign it, not `setdefault` it (the ledger's assign,
or `setdefault` the type's empty).

Rows written before (the library's form, no `"@"` first) decode exactly as they did: the
compact framing is read only in compact rows, so a plain dict of an old row that happened to
look like a short frame stays a dict. A state that would not encode compactly (a plain dict
whose key looks like a short frame, a UUID value, an integer beyond 64 bits) is written in
the library's full form, as before. Compact rows do not load in releases before this one.

A compact row's topic is its class's short one (`SHORT_TOPICS`, pinned: "a:PE"), read back
as the class's own; rows under the class's own topic (written before) read as they did,
and a read of the notification log by topic must ask for both (`stored_topics`). Some
classes pack their compact state further (`PACKED`, pinned keys that are never a field's
name nor an alias): a receipt's payload without escaped quotes. A tier assignment's note
is `DERIVED`. Each is done only while undoing it gives back
exactly what was written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import operator
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoding,
    find_id_convertor,
)
from eventsourcing.utils import get_topic, resolve_topic

from services.ledger.application.transcodings import (
    _OPTIONS,
    _UUID_TEXT,
    DataclassAsDict,
    LedgerTranscoder,
    _tuples,
)
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.receipts import InboundReceipt

# The short frame of each type, by the library's name for it. Never change or reuse one:
# stored rows name their values by these (tests pin them). Add new ones only.
SHORT_NAMES: dict[str, str] = {
    "datetime_iso": "t",
    "Balances": "Ba",
    "HoldRecord": "Ho",
    "Line": "Li",
    "LinePoints": "LP",
    "Lot": "Lo",
    "LotMove": "LM",
    "OrderRecord": "Or",
    "Origin": "Og",
    "ParkedEvent": "PE",
    "Posting": "Po",
    "Provenance": "Pv",
    "Qualifying": "Q",
    "RedemptionRecord": "RR",
    "RefundStep": "RS",
    "Respent": "Rp",
    "TierChange": "TC",
}

# A value object of these types is written as the list of its values in this order, the
# trailing ones at their default left out (`{"$Lo": ["L3", 35, ...]}`), while its class has
# exactly these fields; otherwise as the dict of its fields (which also decodes). Like the
# short names, never change one: rows decode by it. A class whose fields change is written
# as a dict until it gets a new short name with its new positions.
POSITIONS: dict[str, tuple[str, ...]] = {
    "Ba": ("available", "pending", "held"),
    "Ho": (
        "hold_id",
        "reference",
        "points",
        "moves",
        "placed_at",
        "expires_at",
        "status",
        "captured",
        "resolved_at",
    ),
    "Li": ("sku", "category", "quantity", "unit_price_minor"),
    "LP": ("sku", "quantity", "value_minor", "points"),
    "Lo": (
        "lot_id",
        "amount",
        "remaining",
        "status",
        "earned_at",
        "release_at",
        "expires_at",
        "source",
        "program_version",
        "settled",
    ),
    "LM": ("lot_id", "amount"),
    "Or": (
        "order_id",
        "lot_id",
        "currency",
        "total_minor",
        "points",
        "lines",
        "refunded_minor",
        "refunded_quantities",
        "reversed_points",
        "refund_ids",
        "expired_credited",
        "basis",
        "source",
        "earned_at",
        "tier",
        "day",
        "seq",
        "refunds",
    ),
    "Og": ("channel", "topic", "partition", "offset", "line", "file", "request_id", "actor"),
    "PE": (
        "event_id",
        "event_type",
        "payload",
        "raw_b64",
        "origin",
        "occurred_at",
        "reason",
        "detail",
        "deadline",
        "parked_at",
    ),
    "Po": ("account", "amount"),
    "Pv": ("origin", "event_id", "event_type", "rule_id", "program_version", "tier"),
    "Q": ("at", "points", "spend_minor"),
    "RR": (
        "redemption_id",
        "points",
        "reward_id",
        "moves",
        "status",
        "at",
        "event_id",
        "dated",
        "cancelled_at",
        "settled",  # appended: a shorter list (written before) leaves it at its default
    ),
    "RS": (
        "at",
        "refunded_minor",
        "quantities",
        "refund_id",
        "taken_from",
        "wanted",
        "owes",
        "expired",
    ),
    "Rp": ("redemptions", "orders", "unexpired"),
    "TC": (
        "at",
        "seq",
        "tier",
        "cause",
        "rank",
        "period_end",
        "held_until",
        "retracts",
        "override_until",
        "locked",
    ),
}

# The key a compact row writes an event's field under, by the field's name: short, and
# never a field's name (no identifier starts with a digit). Rows are read by these: never
# change or reuse one. A field without one is written under its name (adding one is safe:
# a field is read under its alias or its name).
ALIASES: dict[str, str] = {
    "timestamp": "0",
    "member_id": "1",
    "effective_at": "2",
    "balance_after": "3",
    "provenance": "4",
    "note": "5",
    "points": "6",
    "kind": "7",
    "reference": "8",
    "order": "9",
    "day": "10",
    "event_id": "11",
    "event_type": "12",
    "outcome": "13",
    "entries": "14",
    "origin": "15",
    "received_at": "16",
    "payload": "17",
    "postings": "18",
    "moves": "19",
    "lots_after": "20",
    "counters": "21",
    "tier_period_end": "22",
    "tier_held_until": "23",
    "expired": "24",
    "tier": "25",
    "previous": "26",
    "reason": "27",
    "until": "28",
    "locked": "29",
    "cause": "30",
    "period_end": "31",
    "held_until": "32",
    "override_until": "33",
    "rank": "34",
    "retracts": "35",
    "item": "36",
    "auto": "37",
    "redemption": "38",
    "respent": "39",
    "order_id": "40",
    "refund_id": "41",
    "forgiven": "42",
    "already_expired": "43",
    "lot_id": "44",
    "hold_id": "45",
    "hold": "46",
    "detail": "47",
    "digest": "48",
    "originator_topic": "49",
    "redemption_id": "50",
}
_UNALIASED = {alias: name for name, alias in ALIASES.items()}

# The topic a compact row is stored under, by its event class's topic: short, never a
# module's path (no module is named so), so every row names its class in a few bytes
# instead of about 55 (issue 11). Rows are read by these: never change or reuse one; add
# new ones only. A class without one is stored under its own topic, and a row under a
# class's own topic (every row written before) still resolves: reads by topic ask for
# both (`stored_topics`).
SHORT_TOPICS: dict[str, str] = {
    "services.ledger.domain.account:MemberAccount.Created": "a:C",
    "services.ledger.domain.account:MemberAccount.Enrolled": "a:En",
    "services.ledger.domain.account:MemberAccount.EnrolmentCompleted": "a:EC",
    "services.ledger.domain.account:MemberAccount.EnrolmentUndone": "a:EU",
    "services.ledger.domain.account:MemberAccount.HoldCaptured": "a:HC",
    "services.ledger.domain.account:MemberAccount.HoldExpired": "a:HE",
    "services.ledger.domain.account:MemberAccount.HoldPlaced": "a:HP",
    "services.ledger.domain.account:MemberAccount.HoldVoided": "a:HV",
    "services.ledger.domain.account:MemberAccount.LotsReallocated": "a:LR",
    "services.ledger.domain.account:MemberAccount.PendingReleased": "a:PR",
    "services.ledger.domain.account:MemberAccount.PointsAdjusted": "a:PA",
    "services.ledger.domain.account:MemberAccount.PointsEarned": "a:PE",
    "services.ledger.domain.account:MemberAccount.PointsExpired": "a:PX",
    "services.ledger.domain.account:MemberAccount.PointsRedeemed": "a:PD",
    "services.ledger.domain.account:MemberAccount.PointsReversed": "a:PV",
    "services.ledger.domain.account:MemberAccount.PointsToppedUp": "a:PT",
    "services.ledger.domain.account:MemberAccount.RedemptionCancelled": "a:RC",
    "services.ledger.domain.account:MemberAccount.ReferralReassigned": "a:RA",
    "services.ledger.domain.account:MemberAccount.ReferralReversed": "a:RV",
    "services.ledger.domain.account:MemberAccount.TierAssigned": "a:TA",
    "services.ledger.domain.parking:ParkedEvents.Created": "p:C",
    "services.ledger.domain.parking:ParkedEvents.Opened": "p:O",
    "services.ledger.domain.parking:ParkedEvents.Parked": "p:P",
    "services.ledger.domain.parking:ParkedEvents.Unparked": "p:U",
    "services.ledger.domain.program_record:ProgramRecord.Created": "g:C",
    "services.ledger.domain.program_record:ProgramRecord.Recorded": "g:R",
    "services.ledger.domain.receipts:InboundReceipt.Created": "r:C",
    "services.ledger.domain.receipts:InboundReceipt.Reapplied": "r:A",
    "services.ledger.domain.receipts:InboundReceipt.Recorded": "r:R",
    "services.ledger.domain.receipts:InboundReceipt.Settled": "r:S",
    "services.ledger.domain.receipts:InboundReceipt.Withdrawn": "r:W",
    "services.ledger.domain.receipts:Rejection.Created": "j:C",
    "services.ledger.domain.receipts:Rejection.Recorded": "j:R",
    "services.ledger.domain.receipts:Rejection.Redriven": "j:D",
}
_LONG_TOPICS = {short: topic for topic, short in SHORT_TOPICS.items()}


def stored_topics(*classes: type[Any]) -> list[str]:
    """Every topic rows of `classes` are stored under (their own, and the short one they
    are written under now): what a read of the notification log by topic asks for."""
    topics: list[str] = []
    for cls in classes:
        topic = get_topic(cls)
        topics.append(topic)
        short = SHORT_TOPICS.get(topic)
        if short is not None:
            topics.append(short)
    return topics


def long_topic(topic: str) -> str:
    """A stored row's topic as the library names the class (a short one made long)."""
    return _LONG_TOPICS.get(topic, topic)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FRAME = b'{"$'  # how every short frame starts in the output, and nothing else can
COMPACT = b'{"@":'  # how every compact row starts


class CompactTranscoder(LedgerTranscoder):
    """`LedgerTranscoder` (its `encode`/`decode` unchanged: the library's form, byte for
    byte) with the compact framing of `encode_compact`/`decode_compact` besides."""

    def __init__(self) -> None:
        super().__init__()
        self._short_encoders: dict[type, Callable[[Any], dict[str, Any]]] = {}
        self._short_decoders: dict[str, Callable[[Any], Any]] = {}
        self._compact_decoder = json.JSONDecoder(object_hook=self._compact_hook())

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        code = SHORT_NAMES.get(transcoding.name)
        if code is None:  # the library's form, also in compact rows
            self._short_encoders[transcoding.type] = self._encoders[transcoding.type]
            return
        key = "$" + code
        if type(transcoding) is DatetimeAsISO:
            full = self._encoders[transcoding.type]

            def encode_datetime(obj: datetime) -> dict[str, Any]:
                if obj.tzinfo is UTC:
                    return {key: (obj - EPOCH) // _MICROSECOND}
                return full(obj)

            # The same instants recur in an event (its time, its lot's, its order's): the
            # last few thousand decoded are kept (datetimes are immutable).
            seen: dict[int, datetime] = {}

            def decode_datetime(data: Any) -> datetime:
                found = seen.get(data)
                if found is not None:
                    return found
                if type(data) is not int:
                    raise ValueError(f"not a compact datetime: {data!r}")
                if len(seen) >= 4096:
                    seen.clear()
                found = seen[data] = EPOCH + timedelta(0, 0, data)
                return found

            self._short_encoders[transcoding.type] = encode_datetime
            self._short_decoders[key] = decode_datetime
            return
        encode: Callable[[Any], Any] = transcoding.encode
        decode: Callable[[Any], Any] = transcoding.decode
        if type(transcoding) is DataclassAsDict:
            encode = transcoding.as_dict
            positions = POSITIONS.get(code)
            if positions is not None:
                decode = _positional_decoder(transcoding, positions)
                if _direct(transcoding, positions):
                    encode = _positional_encoder(transcoding)
        self._short_encoders[transcoding.type] = lambda obj: {key: encode(obj)}
        self._short_decoders[key] = decode

    def encode_compact(self, obj: Any) -> bytes | None:
        """`obj` with the short frames, or None where it must be stored in full: orjson
        cannot write it as the library would (see `LedgerTranscoder`), or it holds a UUID,
        or a plain dict of it looks like a short frame (the output has more frames than
        were written)."""
        encoders = self._short_encoders
        framed = 0

        def default(value: Any) -> dict[str, Any]:
            nonlocal framed
            out = encoders[type(value)](value)  # KeyError: orjson raises
            if "_type_" not in out:
                framed += 1
            return out

        try:
            data = orjson.dumps(obj, default=default, option=_OPTIONS)
        except orjson.JSONEncodeError:
            return None
        if data.count(_FRAME) != framed:
            return None
        if _UUID_TEXT.search(data) is not None and self._holds_uuid(obj):
            return None
        return data

    def decode_compact(self, data: bytes) -> Any:
        return self._compact_decoder.decode(data.decode("utf8"))

    def _compact_hook(self) -> Callable[[dict[str, Any]], Any]:
        """The decoder's hook for every JSON object of a compact row: a short frame, the
        library's frame, or a plain dict."""
        short = self._short_decoders.get  # filled in by `register`
        full = self._decode_obj

        def hook(d: dict[str, Any]) -> Any:
            if len(d) == 1:
                (key,) = d
                decode = short(key)
                return d if decode is None else decode(d[key])
            if len(d) == 2:
                return full(d)
            return d

        return hook


def _direct(transcoding: DataclassAsDict, positions: tuple[str, ...]) -> bool:
    """Whether the class's fields are `positions`, each an argument of its constructor."""
    fields = dataclasses.fields(transcoding.type)
    return positions == transcoding.fields and all(f.init for f in fields)


def _positional_encoder(transcoding: DataclassAsDict) -> Callable[[Any], list[Any]]:
    """A value object to the list of its fields' values, the trailing ones that hold their
    default (that very value, or an equal one of its type) left out."""
    fields = transcoding.fields
    getter = operator.attrgetter(*fields)
    defaults = transcoding.defaults
    required = 0
    for i, name in enumerate(fields):
        if name not in defaults:
            required = i + 1
    trailing = tuple((i, defaults[name]) for i, name in enumerate(fields) if i >= required)
    trailing = tuple(reversed(trailing))
    single = len(fields) == 1

    def encode(obj: Any) -> list[Any]:
        values = [getter(obj)] if single else list(getter(obj))
        for i, default in trailing:
            value = values[i]
            if value is default or (type(value) is type(default) and value == default):
                del values[i]
            else:
                break
        return values

    return encode


def _positional_decoder(
    transcoding: DataclassAsDict, positions: tuple[str, ...]
) -> Callable[[Any], Any]:
    """A value object from the list of its values (by `positions`) or from the dict of its
    fields. While `positions` are the class's fields, the list goes straight to the
    constructor (the missing trailing ones take their defaults), sequences made tuples."""
    decode = transcoding.decode
    cls = transcoding.type
    direct = _direct(transcoding, positions)
    sequences = tuple(i for i, name in enumerate(positions) if name in transcoding.sequences)

    def decode_positional(data: Any) -> Any:
        if type(data) is not list:
            return decode(data)
        if len(data) > len(positions):
            raise ValueError(f"{transcoding.name}: {len(data)} values for {positions}")
        if not direct:
            return decode(dict(zip(positions, data, strict=False)))
        for i in sequences:
            if i < len(data) and type(data[i]) is list:
                data[i] = _tuples(data[i])
        return cls(*data)

    return decode_positional


# ------------------------------------------------------------------------------ mapper

_IDS = frozenset({"originator_id", "originator_version"})
_MISSING: Any = object()


class _Empty:
    """The fill of a sequence field: a fresh list each time (as a stored `[]` decodes)."""


EMPTY_SEQUENCE: Any = _Empty()


def _fill_of(field: dataclasses.Field[Any], cls: type[Any]) -> Any:
    """What a compact row's decoding puts in `field` when the row leaves it out, or
    `_MISSING`: the field is never left out. Only what decodes back exactly as the full
    form would (a sequence decodes to a list there, so it does here)."""
    if field.name == "originator_topic":
        topic = get_topic(cls)
        module, _, qualname = topic.partition(":")
        owner = qualname.rpartition(".")[0]
        return f"{module}:{owner}" if owner else _MISSING
    if field.default is not dataclasses.MISSING:
        default = field.default
        if default is None or type(default) in (str, int, bool):
            return default
        if type(default) is tuple and not default:
            return EMPTY_SEQUENCE
        return _MISSING
    if field.default_factory is not dataclasses.MISSING:
        return _MISSING
    annotation = field.type
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", None)
        if annotation is None:
            return _MISSING
    parts = [part.strip() for part in annotation.split("|")]
    if "None" in parts:
        return None
    if annotation in _EMPTIES:
        return _EMPTIES[annotation]
    if len(parts) == 1 and annotation.startswith(("tuple[", "list[")):
        return EMPTY_SEQUENCE
    return _MISSING


_EMPTIES: dict[str, Any] = {"str": "", "int": 0, "bool": False}


@dataclasses.dataclass(frozen=True)
class Derived:
    """The fill of a field worked out from the event's other fields: left out only when
    that gives back exactly the value (of the same type)."""

    of: Callable[[Mapping[str, Any]], Any]


def _receipt_digest(state: Mapping[str, Any]) -> str | None:
    payload = state.get("payload")
    if type(payload) is not str:
        return None
    return hashlib.sha256(payload.encode("utf8")).hexdigest()


def _tier_note(state: Mapping[str, Any]) -> str | None:
    """A tier assignment's note, as the account writes it from the tiers and the reason."""
    tier, previous, reason = state.get("tier"), state.get("previous"), state.get("reason")
    if type(reason) is not str:
        return None
    if previous != tier:
        return f"tier {previous or 'none'} -> {tier or 'none'}: {reason}"
    return f"tier {tier or 'none'} kept: {reason}"


# Fields worked out from others, by event class: a receipt's digest is the SHA-256 of its
# payload (the canonical JSON of the inbound event) while it has one; a tier assignment's
# note is "tier <previous> -> <tier>: <reason>" (or "tier <tier> kept: <reason>").
DERIVED: dict[type[Any], dict[str, Derived]] = {
    InboundReceipt.Recorded: {"digest": Derived(_receipt_digest)},
    MemberAccount.TierAssigned: {"note": Derived(_tier_note)},
}


def _pack_receipt(state: dict[str, Any]) -> None:
    """A receipt's compact state, packed in place (`PACKED`): its payload, the canonical
    JSON of the inbound event, with `'` for `"` under `"17'"` while it holds a `"` but no
    `'` and no backslash (its quotes then need no escaping: about 35 B a receipt)."""
    payload = state.get("17")
    if type(payload) is str and '"' in payload and "'" not in payload and "\\" not in payload:
        del state["17"]
        state["17'"] = payload.replace('"', "'")


def _unpack_receipt(state: dict[str, Any]) -> None:
    """`_pack_receipt` undone, in place (a state it did not pack is left as it is)."""
    swapped = state.pop("17'", None)
    if swapped is not None:
        state["17"] = swapped.replace("'", '"')


# What a compact row of these classes packs further, by class: (pack, unpack), each on the
# compact state in place (its keys are aliases; the packed keys are never a field's name
# nor an alias). Pinned like the aliases: rows are read by them.
PACKED: dict[
    type[Any], tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], None]]
] = {
    InboundReceipt.Recorded: (_pack_receipt, _unpack_receipt),
}


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """What a compact row of one event class leaves out, and how it fills it back."""

    version: int
    names: tuple[str, ...]  # the event's fields but the ids, in order
    fills: dict[str, Any]  # name -> what a left-out field holds (EMPTY_SEQUENCE: a new [])
    # Generated once (`_generate`): an event's `vars` to its compact state, and a compact
    # state of this version to the full one (both raise KeyError for a missing field).
    compact: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    full: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    keys: frozenset[str] = frozenset()  # `names` and their aliases
    topic: str = ""  # the topic its compact rows are stored under (`SHORT_TOPICS`)

    @classmethod
    def of(cls, event_class: type[Any]) -> EventSpec:
        version = getattr(event_class, "class_version", 1)
        topic = get_topic(event_class)
        topic = SHORT_TOPICS.get(topic, topic)
        if not dataclasses.is_dataclass(event_class):
            return cls(version, (), {}, topic=topic)
        fields = [f for f in dataclasses.fields(event_class) if f.name not in _IDS]
        fills: dict[str, Any] = {}
        for field in fields:
            fill = _fill_of(field, event_class)
            if fill is not _MISSING:
                fills[field.name] = fill
        for name, derived in DERIVED.get(event_class, {}).items():
            fills[name] = derived  # instead of its type's empty, if it has one
        names = tuple(f.name for f in fields)
        compact, full = _generate(event_class, version, names, fills)
        keys = frozenset(names) | {ALIASES[name] for name in names if name in ALIASES}
        return cls(version, names, fills, compact, full, keys, topic)

    def omits(self, name: str, value: Any, state: Mapping[str, Any]) -> bool:
        """Whether `value` of field `name` is left out: it is exactly what is filled back
        (of the same type: 0 is not False, "" is not None)."""
        fill = self.fills.get(name, _MISSING)
        if fill is _MISSING:
            return False
        if fill is None:
            return value is None
        if fill is EMPTY_SEQUENCE:
            kind = type(value)
            return (kind is tuple or kind is list) and not value
        if type(fill) is Derived:
            fill = fill.of(state)
        return type(value) is type(fill) and value == fill


def _generate(
    cls: type[Any], version: int, names: tuple[str, ...], fills: dict[str, Any]
) -> tuple[Callable[[Mapping[str, Any]], dict[str, Any]], Callable[[Mapping[str, Any]], Any]]:
    """`EventSpec.compact` and `EventSpec.full` for one class: straight code, no loop, as
    `dataclasses` generates `__init__` (and `DataclassAsDict` its encoders). A field is
    written under its alias (`ALIASES`) if it has one, and read under either key."""
    if not all(name.isidentifier() for name in names):
        raise ValueError(f"{cls.__qualname__}: a field name that is not an identifier")
    scope: dict[str, Any] = {"MISSING": _MISSING}
    encode = ["def compact(d):", f"    out = {{'@': {version!r}}}"]
    decode = ["def full(s):", "    out = {"]
    later = []
    for i, name in enumerate(names):
        fill = fills.get(name, _MISSING)
        key = ALIASES.get(name, name)
        encode.append(f"    v = d[{name!r}]")
        keep = f"        out[{key!r}] = v"

        def read(otherwise: str, key: str = key, name: str = name) -> str:
            """The field's value in `s`: under its alias, its name, else `otherwise`."""
            by_name = otherwise.replace("NAME", repr(name))
            if key == name:
                return by_name
            return f"(s[{key!r}] if {key!r} in s else {by_name})"

        if fill is _MISSING:
            encode.append(f"    out[{key!r}] = v")
            decode.append(f"        {name!r}: {read('s[NAME]')},")
            continue
        if fill is None:
            encode.append("    if v is not None:")
        elif fill is EMPTY_SEQUENCE:
            encode.append("    if not ((v.__class__ is tuple or v.__class__ is list) and not v):")
        elif type(fill) is Derived:
            scope[f"f{i}"] = fill.of
            encode.append(f"    c = f{i}(d)")
            encode.append("    if not (v.__class__ is c.__class__ and v == c):")
        else:
            scope[f"e{i}"], scope[f"t{i}"] = fill, type(fill)
            encode.append(f"    if not (v.__class__ is t{i} and v == e{i}):")
        encode.append(keep)
        if fill is EMPTY_SEQUENCE:
            decode.append(f"        {name!r}: {read('(s[NAME] if NAME in s else [])')},")
        elif type(fill) is Derived:
            decode.append(f"        {name!r}: {read('s.get(NAME, MISSING)')},")
            later.append(f"    if out[{name!r}] is MISSING:")
            later.append(f"        out[{name!r}] = f{i}(out)")
        else:
            scope[f"e{i}"] = fill
            decode.append(f"        {name!r}: {read(f's.get(NAME, e{i})')},")
    encode.append("    return out")
    decode.append("    }")
    decode += later
    decode.append("    return out")
    exec("\n".join(encode), scope)  # noqa: S102 - our own field names, checked identifiers
    exec("\n".join(decode), scope)  # noqa: S102
    return scope["compact"], scope["full"]


class CompactMapper(Mapper[UUID]):
    """Writes compact rows (see the module); reads them and rows of the library's form."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._specs: dict[type[Any], EventSpec] = {}
        compact = getattr(self.transcoder, "encode_compact", None)
        self._encode_compact: Callable[[Any], bytes | None] = compact or self.transcoder.encode
        decode = getattr(self.transcoder, "decode_compact", None)
        self._decode_compact: Callable[[bytes], Any] = decode or self.transcoder.decode

    def spec(self, cls: type[Any]) -> EventSpec:
        spec = self._specs.get(cls)
        if spec is None:
            spec = self._specs[cls] = EventSpec.of(cls)
        return spec

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        cls = type(domain_event)
        spec = self._specs.get(cls) or self.spec(cls)
        event_state = vars(domain_event)
        state: dict[str, Any] | None = None
        if spec.compact is not None and len(event_state) == len(spec.names) + 2:
            with contextlib.suppress(KeyError):  # not the class's fields: one by one
                state = spec.compact(event_state)
        if state is None:
            fills = spec.fills
            state = {"@": spec.version}
            for name, value in event_state.items():
                if name in _IDS:
                    continue
                if name in fills and spec.omits(name, value, event_state):
                    continue
                state[name] = value
        packed = PACKED.get(cls)
        if packed is not None:
            packed[0](state)
        stored = self._encode_compact(state) if self.cipher is None else None
        if stored is None:  # as the library writes it
            return super().to_stored_event(domain_event)
        if self.compressor:
            stored = self.compressor.compress(stored)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=spec.topic,
            state=stored,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        topic = stored_event.topic
        topic = _LONG_TOPICS.get(topic, topic)  # a short one names its class's own
        if self.cipher is not None:  # compact rows are never enciphered
            return super().to_domain_event(_topic_made(stored_event, topic))
        data = stored_event.state
        if self.compressor:
            data = self.compressor.decompress(data)
        if not data.startswith(COMPACT):
            return super().to_domain_event(_topic_made(stored_event, topic))
        cls = resolve_topic(topic)
        try:
            state: dict[str, Any] = self._decode_compact(data)
            version = state.pop("@")
            packed = PACKED.get(cls)
            if packed is not None:
                packed[1](state)
            spec = self._specs.get(cls) or self.spec(cls)
            if version == spec.version and spec.full is not None and state.keys() <= spec.keys:
                try:
                    state = spec.full(state)
                except KeyError as missing:  # never left out by encoding
                    raise ValueError(f"field {missing} missing from a compact row") from None
            else:  # an earlier class version (its upcasters follow), or keys not its own
                state = {_UNALIASED.get(k, k): v for k, v in state.items()}
                state = _filled(state, spec, current=version == spec.version)
        except Exception as e:
            msg = (
                f"Failed to deserialise state of stored event with "
                f"topic '{stored_event.topic}', "
                f"originator_id '{stored_event.originator_id}' and "
                f"originator_version {stored_event.originator_version}: {e}"
            )
            raise MapperDeserialisationError(msg) from e
        id_convertor = find_id_convertor(cls, cast(Hashable, type(stored_event.originator_id)))
        state["originator_id"] = id_convertor(stored_event.originator_id)
        state["originator_version"] = stored_event.originator_version
        while version < spec.version:
            getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
            version += 1
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", state)
        return cast(DomainEventProtocol[UUID], domain_event)


def _topic_made(stored_event: StoredEvent, topic: str) -> StoredEvent:
    """`stored_event` under `topic` (the library's mapper resolves the class's own)."""
    if stored_event.topic == topic:
        return stored_event
    return StoredEvent(
        originator_id=stored_event.originator_id,
        originator_version=stored_event.originator_version,
        topic=topic,
        state=stored_event.state,
    )


def _filled(state: dict[str, Any], spec: EventSpec, current: bool) -> dict[str, Any]:
    """`state` with the fields a compact row left out filled back, in the class's order."""
    out: dict[str, Any] = {}
    fills = spec.fills
    found = 0
    derived = []
    for name in spec.names:
        value = state.get(name, _MISSING)
        if value is _MISSING:
            fill = fills.get(name, _MISSING)
            if fill is _MISSING:
                if current:  # never left out by encoding: the row is not this class's
                    raise ValueError(f"field {name!r} missing from a compact row")
                continue  # not written by that class version: its upcaster adds it
            if type(fill) is Derived:
                derived.append((name, fill))
            value = [] if fill is EMPTY_SEQUENCE else fill
        else:
            found += 1
        out[name] = value
    if found < len(state):
        for name, value in state.items():  # not a field (any more): kept, as before
            out.setdefault(name, value)
    for name, fill in derived:  # from the others, once they are all there
        out[name] = fill.of(out)
    return out
