"""A ledger's entries in position order, as published: what the tiers projection reads."""

from __future__ import annotations

from collections.abc import Iterator

from schemas.outbound import LedgerEntry
from services.ledger.application.entries import entry_message
from services.ledger.application.ledger import LedgerApplication
from services.ledger.domain.account import MemberAccount, account_id
from services.ledger.domain.tier_policy import Fact
from services.tiers.facts import fact_from_entry


def ledger_entries(app: LedgerApplication, after: int = 0) -> Iterator[LedgerEntry]:
    """Every member entry after ledger position `after`, oldest first."""
    start = after + 1
    while True:
        page = app.process_recorder.select_notifications(start=start, limit=1000)
        if not page:
            return
        for notification in page:
            event = app.mapper.to_domain_event(notification)
            if isinstance(event, MemberAccount.Enrolled | MemberAccount.Entry):
                yield entry_message(event, notification.id)
        start = page[-1].id + 1


def member_facts(app: LedgerApplication, member_id: str) -> list[Fact]:
    """One member's facts read from its own events (numbered by entry, in ledger order):
    what `tier_policy.recompute` reads to show what the policy gives from a history."""
    facts: list[Fact] = []
    for event in app.repository.event_store.get(account_id(member_id)):
        if isinstance(event, MemberAccount.Enrolled | MemberAccount.Entry):
            fact = fact_from_entry(entry_message(event, event.originator_version))
            if fact is not None:
                facts.append(fact)
    return facts
