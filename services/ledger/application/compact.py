"""Stored events in a compact form (issue 11): what the rows hold, not how the library frames it.

A compact row is what `CompactMapper` writes. Its state is a JSON object whose first key is
`"@"`, the event class's version, and which leaves out:

- every field of the event whose value is its type's empty (None, "", 0, False, an empty
  sequence) or the field's default, when the field's annotation says what to fill back
  (`EventSpec`, a table built once per event class). A field of any other type is never
  left out: encoding cannot omit what decoding could not fill back;
- a created event's `originator_topic` while it is the topic of the event's own aggregate
  class (the class the event class is nested in).

Inside, `CompactTranscoder.encode_compact` frames value objects and datetimes shortly: a
value object as `{"$Lo": {...}}` (a short code per type, `SHORT_NAMES`, fixed for good) and a
UTC datetime as `{"$t": microseconds since the epoch}` instead of the library's
`{"_type_": "Lot", "_data_": {...}}` and `{"_type_": "datetime_iso", "_data_": "...+00:00"}`.
A datetime in another zone, or naive, keeps the library's form. Both forms decode.

Rows written before (the library's form, no `"@"` first) decode exactly as they did: the
compact framing is read only in compact rows, so a plain dict of an old row that happened to
look like a short frame stays a dict. A state that would not encode compactly (a plain dict
whose key looks like a short frame, a UUID value, an integer beyond 64 bits) is written in
the library's full form, as before. Compact rows do not load in releases before this one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Hashable
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
)

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
        self._compact_decoder = json.JSONDecoder(object_hook=self._decode_compact_obj)

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

            def decode_datetime(data: Any) -> datetime:
                if type(data) is not int:
                    raise ValueError(f"not a compact datetime: {data!r}")
                return EPOCH + timedelta(microseconds=data)

            self._short_encoders[transcoding.type] = encode_datetime
            self._short_decoders[key] = decode_datetime
            return
        encode: Callable[[Any], Any] = transcoding.encode
        if type(transcoding) is DataclassAsDict:
            encode = transcoding.as_dict
        self._short_encoders[transcoding.type] = lambda obj: {key: encode(obj)}
        self._short_decoders[key] = transcoding.decode

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

    def _decode_compact_obj(self, d: dict[str, Any]) -> Any:
        if len(d) == 1:
            for key, value in d.items():
                decode = self._short_decoders.get(key)
                return d if decode is None else decode(value)
        return self._decode_obj(d)


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
class EventSpec:
    """What a compact row of one event class leaves out, and how it fills it back."""

    version: int
    names: tuple[str, ...]  # the event's fields but the ids, in order
    fills: dict[str, Any]  # name -> what a left-out field holds (EMPTY_SEQUENCE: a new [])

    @classmethod
    def of(cls, event_class: type[Any]) -> EventSpec:
        version = getattr(event_class, "class_version", 1)
        if not dataclasses.is_dataclass(event_class):
            return cls(version, (), {})
        fields = [f for f in dataclasses.fields(event_class) if f.name not in _IDS]
        fills = {}
        for field in fields:
            fill = _fill_of(field, event_class)
            if fill is not _MISSING:
                fills[field.name] = fill
        return cls(version, tuple(f.name for f in fields), fills)

    def omits(self, name: str, value: Any) -> bool:
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
        return type(value) is type(fill) and value == fill


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
        spec = self.spec(cls)
        fills = spec.fills
        state: dict[str, Any] = {"@": spec.version}
        for name, value in vars(domain_event).items():
            if name in _IDS:
                continue
            if name in fills and spec.omits(name, value):
                continue
            state[name] = value
        stored = self._encode_compact(state) if self.cipher is None else None
        if stored is None:  # as the library writes it
            return super().to_stored_event(domain_event)
        if self.compressor:
            stored = self.compressor.compress(stored)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(cls),
            state=stored,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        data = stored_event.state
        if self.compressor and not self.cipher:
            data = self.compressor.decompress(data)
        if not data.startswith(COMPACT):
            return super().to_domain_event(stored_event)
        cls = resolve_topic(stored_event.topic)
        try:
            state: dict[str, Any] = self._decode_compact(data)
            version = state.pop("@")
            spec = self.spec(cls)
            if len(state) != len(spec.names):
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


def _filled(state: dict[str, Any], spec: EventSpec, current: bool) -> dict[str, Any]:
    """`state` with the fields a compact row left out filled back, in the class's order."""
    out: dict[str, Any] = {}
    fills = spec.fills
    found = 0
    for name in spec.names:
        value = state.get(name, _MISSING)
        if value is _MISSING:
            fill = fills.get(name, _MISSING)
            if fill is _MISSING:
                if current:  # never left out by encoding: the row is not this class's
                    raise ValueError(f"field {name!r} missing from a compact row")
                continue  # not written by that class version: its upcaster adds it
            value = [] if fill is EMPTY_SEQUENCE else fill
        else:
            found += 1
        out[name] = value
    if found < len(state):
        for name, value in state.items():  # not a field (any more): kept, as before
            out.setdefault(name, value)
    return out
