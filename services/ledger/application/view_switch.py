"""Which table set the read models are served from, so a rebuild can switch atomically.

`loyalty rebuild` projects the whole ledger into the other table set while the service
keeps serving (and updating) the active one, then records the switch here; running
services pick it up on their next scheduler tick.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event

from services.ledger.application.ledger import LedgerApplication

ACTIVE_VIEW_ID = uuid5(NAMESPACE_URL, "https://loyalty-ledger.invalid/active-view")
PREFIXES = ("view_", "view_b_")


class ActiveView(Aggregate):
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @staticmethod
    def create_id(prefix: str) -> UUID:
        del prefix  # one record for the whole store
        return ACTIVE_VIEW_ID

    @event("Switched")
    def switch(self, prefix: str) -> None:
        self.prefix = prefix


def active_prefix(app: LedgerApplication) -> str:
    try:
        record: Any = app.repository.get(ACTIVE_VIEW_ID)
    except AggregateNotFoundError:
        return PREFIXES[0]
    assert isinstance(record, ActiveView)
    return str(record.prefix)


def other_prefix(prefix: str) -> str:
    return PREFIXES[1] if prefix == PREFIXES[0] else PREFIXES[0]


def record_switch(app: LedgerApplication, prefix: str) -> None:
    try:
        record: Any = app.repository.get(ACTIVE_VIEW_ID)
    except AggregateNotFoundError:
        record = ActiveView(prefix)
    else:
        assert isinstance(record, ActiveView)
        record.switch(prefix)
    app.save(record)
