"""JSON transcodings for the ledger's value objects, so events and snapshots store as JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from eventsourcing.persistence import JSONTranscoder, Transcoding

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


_OMITTED_AT_DEFAULT = frozenset({"settled"})


def _tuples(value: Any) -> Any:
    """JSON has no tuples: value objects hold tuples, so lists come back as tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


class DataclassAsDict(Transcoding):
    def __init__(self, cls: type[Any]) -> None:
        self.type = cls
        self.name = cls.__name__
        self.fields = tuple(f.name for f in dataclasses.fields(cls))  # once, not per object
        # A field added later with a default (e.g. Lot.settled) is left out while it holds
        # that default: stored values stay as before, and decoding fills it in.
        self.defaults = {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING and f.name in _OMITTED_AT_DEFAULT
        }

    def encode(self, obj: Any) -> dict[str, Any]:
        out = {name: getattr(obj, name) for name in self.fields}
        for name, default in self.defaults.items():
            if out[name] == default:
                del out[name]
        return out

    def decode(self, data: Any) -> Any:
        assert isinstance(data, dict)
        return self.type(**{k: _tuples(v) if isinstance(v, list) else v for k, v in data.items()})


def register_value_types(transcoder: JSONTranscoder) -> None:
    for cls in VALUE_TYPES:
        transcoder.register(DataclassAsDict(cls))
