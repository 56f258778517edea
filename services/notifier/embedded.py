"""The notifier called in-process over an embedded ledger (no Kafka): the demo's way, and
the tests' way to get real entries without a broker."""

from __future__ import annotations

from schemas import TOPIC_LEDGER
from schemas.outbound import LedgerEntry
from services.ledger.application.entries import entry_message
from services.ledger.application.projection import account_topics
from services.ledger.application.service import Ledger
from services.ledger.domain.account import MemberAccount
from services.notifier.consumer import Record


def ledger_entries(ledger: Ledger, after: int = 0, limit: int = 10_000) -> list[LedgerEntry]:
    """Entries after ledger position `after`, as the relay publishes them."""
    app = ledger.app
    found: list[LedgerEntry] = []
    for n in app.process_recorder.select_notifications(
        start=after + 1, limit=limit, topics=account_topics()
    ):
        event = app.mapper.to_domain_event(n)
        if isinstance(event, MemberAccount.Enrolled | MemberAccount.Entry):
            found.append(entry_message(event, n.id))
    return found


def as_records(entries: list[LedgerEntry]) -> list[Record]:
    """Entries as if read from partition 0 of loyalty.ledger.v1 at their positions."""
    return [
        Record(TOPIC_LEDGER, 0, entry.position or 0, entry.model_dump_json().encode())
        for entry in entries
    ]
