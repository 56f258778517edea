"""A member's audit trail: every entry, oldest first, with its provenance, the source event
it came from, the lots it touched, and a check that the entries add up to the balance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from schemas.outbound import LedgerEntry
from services.ledger.application.service import Ledger, MemberBalanceView
from services.ledger.domain.lots import Lot
from services.ledger.domain.receipts import InboundReceipt, receipt_id


@dataclass(frozen=True, slots=True)
class AuditLine:
    entry: LedgerEntry
    source_event: dict[str, Any] | None  # the inbound event as received (canonical JSON)


@dataclass(frozen=True, slots=True)
class Audit:
    member_id: str
    balance: MemberBalanceView
    lines: list[AuditLine]
    lots: list[Lot]
    entries_total: int  # what the entries add up to (available + pending + held)
    recorded_total: int  # what the ledger's balance says

    @property
    def explained(self) -> bool:
        return self.entries_total == self.recorded_total


def audit(ledger: Ledger, member_id: str) -> Audit | None:
    balance = ledger.balance(member_id)
    row = ledger.view.balance(member_id)
    if balance is None or row is None:
        return None
    rows = []
    before: int | None = None
    while True:
        page = ledger.statement(member_id, before_seq=before, limit=500)
        rows.extend(page)
        if len(page) < 500:
            break
        before = page[-1].seq
    lines = []
    sources: dict[str, dict[str, Any] | None] = {}
    for r in reversed(rows):
        entry = LedgerEntry.model_validate(r.body)
        event_id = entry.provenance.event_id
        if event_id is not None and event_id not in sources:
            sources[event_id] = _source(ledger, event_id)
        lines.append(AuditLine(entry, sources.get(event_id) if event_id else None))
    return Audit(
        member_id=member_id,
        balance=balance,
        lines=lines,
        lots=ledger.lots(member_id),
        entries_total=sum(line.entry.points for line in lines),
        recorded_total=row.available + row.pending + row.held,
    )


def _source(ledger: Ledger, event_id: str) -> dict[str, Any] | None:
    try:
        receipt: Any = ledger.app.repository.get(receipt_id(event_id))
    except AggregateNotFoundError:
        return None
    assert isinstance(receipt, InboundReceipt)
    payload = getattr(receipt, "payload", None)
    return json.loads(payload) if payload else None
