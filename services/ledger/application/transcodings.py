"""JSON transcodings for the ledger's value objects, so events and snapshots store as JSON.

The stored format is the library's `JSONTranscoder` format: a value object or a datetime is
`{"_type_": name, "_data_": ...}`. `LedgerTranscoder` writes that same format with orjson
(faster than the standard library's encoder), so a store written by either one loads with
either one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Transcoding,
    UUIDAsHex,
)

from services.ledger.domain.account import (
    Balances,
    OrderRecord,
    Qualifying,
    RedemptionRecord,
    RefundStep,
    Respent,
    TierChange,
)
from services.ledger.domain.holds import HoldRecord
from services.ledger.domain.lots import Lot, LotMove
from services.ledger.domain.parking import ParkedEvent
from services.ledger.domain.postings import Posting
from services.ledger.domain.provenance import Origin, Provenance
from services.ledger.domain.rules import Line, LinePoints

VALUE_TYPES: tuple[type[Any], ...] = (
    Balances,
    HoldRecord,
    Line,
    LinePoints,
    Lot,
    LotMove,
    OrderRecord,
    Origin,
    ParkedEvent,
    Posting,
    Provenance,
    Qualifying,
    RedemptionRecord,
    RefundStep,
    Respent,
    TierChange,
)


def _tuples(value: Any) -> Any:
    """JSON has no tuples: value objects hold tuples, so lists come back as tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


_SCALARS = frozenset({"str", "int", "bool", "None", "datetime"})


def _scalar(annotation: Any) -> bool:
    """Whether a field annotated so never holds a list once decoded: str, int, bool, None,
    datetime or a value object, or a union of those. Anything else is converted."""
    if not isinstance(annotation, str):
        return False
    names = {cls.__name__ for cls in VALUE_TYPES}
    return all(part in _SCALARS or part in names for part in annotation.split(" | "))


def omitted_defaults(cls: type[Any]) -> dict[str, Any]:
    """The fields of `cls` left out of the stored value while they hold their default.

    Decoding (`cls(**data)`, here and in every earlier release) fills them in again, so a
    value stores smaller and loads the same. A field's default must therefore never change:
    a value stored without the field would load with the new default (tests pin them)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING and f.init
    }


class DataclassAsDict(Transcoding):
    def __init__(self, cls: type[Any]) -> None:
        self.type = cls
        self.name = cls.__name__
        self.fields = tuple(f.name for f in dataclasses.fields(cls))  # once, not per object
        self.defaults = omitted_defaults(cls)
        self.as_dict = _compile(cls, self.fields, self.defaults)
        # Fields that may hold a sequence: JSON gives lists, the value objects hold tuples.
        self.sequences = tuple(f.name for f in dataclasses.fields(cls) if not _scalar(f.type))

    def encode(self, obj: Any) -> dict[str, Any]:
        return self.as_dict(obj)

    def decode(self, data: Any) -> Any:
        assert isinstance(data, dict)
        for name in self.sequences:  # in place: `data` is the decoder's own, fresh dict
            value = data.get(name)
            if type(value) is list:
                data[name] = _tuples(value)
        return self.type(**data)


def _compile(
    cls: type[Any], fields: tuple[str, ...], defaults: dict[str, Any]
) -> Callable[[Any], dict[str, Any]]:
    """A function from an object of `cls` to its stored dict: its fields in order, each
    defaulted one left out while it holds its default. Generated once per class (as
    `dataclasses` generates `__init__`): no loop, no attribute lookup by name per object.

    A value is left out only when it *is* the default, or equals it and has its type (0 is
    not left out for False, nor False for 0)."""
    if not all(name.isidentifier() for name in fields):
        raise ValueError(f"{cls.__name__}: a field name that is not an identifier")
    names: dict[str, Any] = {}
    lead = 0  # the fields before the first defaulted one go in the dict display
    while lead < len(fields) and fields[lead] not in defaults:
        lead += 1
    display = ", ".join(f"{name!r}: obj.{name}" for name in fields[:lead])
    lines = ["def encode(obj):", f"    out = {{{display}}}"]
    for i, name in enumerate(fields[lead:], start=lead):
        if name not in defaults:
            lines.append(f"    out[{name!r}] = obj.{name}")
            continue
        default = defaults[name]
        names[f"d{i}"], names[f"t{i}"] = default, type(default)
        lines.append(f"    v = obj.{name}")
        if default is None:
            lines.append("    if v is not None:")
        else:
            lines.append(f"    if not (v is d{i} or (type(v) is t{i} and v == d{i})):")
        lines.append(f"        out[{name!r}] = v")
    lines.append("    return out")
    exec("\n".join(lines), names)  # noqa: S102 - our own field names, checked identifiers
    encode: Callable[[Any], dict[str, Any]] = names["encode"]
    encode.__qualname__ = f"DataclassAsDict.encode[{cls.__name__}]"
    return encode


def register_value_types(transcoder: JSONTranscoder) -> None:
    for cls in VALUE_TYPES:
        transcoder.register(DataclassAsDict(cls))


# orjson writes a `uuid.UUID` itself, as its canonical text, and cannot be asked to hand it
# to `default`: such a value would load as a string. The ledger stores no UUID values (ids
# are the rows' own columns). When the output has text that looks like one (an id that is a
# UUID's text, say), the object is searched for a real UUID (`_holds_uuid`, a few µs); only
# if it holds one does it go through the library's encoder, which writes `uuid_hex`.
# The search is for the middle of a UUID's text only: it never misses one, and it is half
# the time of the whole pattern (the walk decides).
_UUID_TEXT = re.compile(rb"-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-")

# Value objects and datetimes go to `default` (the library's envelope), not orjson's own form.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


class LedgerTranscoder(JSONTranscoder):
    """`JSONTranscoder`'s stored format, encoded with orjson.

    Byte for byte what `JSONTranscoder.encode` writes with the same transcodings registered
    (tests compare them), so rows written by either decode with either. Whatever orjson
    cannot write as the standard library would (integers beyond 64 bits, keys that are not
    strings, unregistered types, UUIDs: see `_UUID_TEXT`) goes through
    `JSONTranscoder.encode`, which writes it or raises as before. Decoding is the library's.
    (One difference in what is refused: orjson writes a plain `Enum` member's value where
    the library refuses it. The ledger stores none: it could not until now.)
    """

    def __init__(self) -> None:
        super().__init__()
        self._encoders: dict[type, Callable[[Any], dict[str, Any]]] = {}
        # What `_holds_uuid` looks into, by type: a value object's fields; for any other
        # registered type but the library's own scalars, what its transcoding encodes.
        self._parts: dict[type, Callable[[Any], Any]] = {}

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        self._encoders[transcoding.type] = _envelope(transcoding)
        if type(transcoding) is DataclassAsDict:
            names = transcoding.fields
            self._parts[transcoding.type] = lambda obj: [getattr(obj, n) for n in names]
        elif type(transcoding) not in (DatetimeAsISO, DecimalAsStr, UUIDAsHex):
            self._parts[transcoding.type] = lambda obj: [transcoding.encode(obj)]

    def encode(self, obj: Any) -> bytes:
        try:
            data = orjson.dumps(obj, default=self._default, option=_OPTIONS)
        except orjson.JSONEncodeError:
            return super().encode(obj)
        if _UUID_TEXT.search(data) is not None and self._holds_uuid(obj):
            return super().encode(obj)
        return data

    def _default(self, obj: Any) -> dict[str, Any]:
        return self._encoders[type(obj)](obj)  # KeyError: orjson raises, encode falls back

    def _holds_uuid(self, obj: Any) -> bool:
        """Whether `obj` holds a UUID anywhere orjson would write it."""
        parts = self._parts
        stack = [obj]
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind is str or kind is int or item is None or kind is bool:
                continue
            if isinstance(item, UUID):
                return True
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                stack.extend(item)
            elif kind in parts:
                stack.extend(parts[kind](item))
        return False


def _envelope(transcoding: Transcoding) -> Callable[[Any], dict[str, Any]]:
    """`{"_type_": name, "_data_": encoded}` for one transcoding, as `JSONTranscoder` writes."""
    name = transcoding.name
    encode: Callable[[Any], Any] = transcoding.encode
    if type(transcoding) is DataclassAsDict:
        encode = transcoding.as_dict  # one call less per value object
    elif type(transcoding) is DatetimeAsISO:  # the commonest: one call less per datetime
        return lambda obj: {"_type_": name, "_data_": obj.isoformat()}
    return lambda obj: {"_type_": name, "_data_": encode(obj)}
