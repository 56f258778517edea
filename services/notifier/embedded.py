"""The notifier called in-process over an embedded ledger (no Kafka): the demo's way, and
the tests' way to get real entries without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from schemas import TOPIC_LEDGER
from schemas.outbound import LedgerEntry
from services.ledger.application.entries import entry_message
from services.ledger.application.projection import account_topics
from services.ledger.application.service import Ledger
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.program import Program
from services.notifier.bootstrap import NotifierSettings, build_notifier, channels_from
from services.notifier.channels import Channel
from services.notifier.channels.printer import PrintChannel
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


class EmbeddedNotifier:
    """The notifier in-process over an embedded ledger, on an in-memory sent-log: after
    each step, new entries are recorded, the scan runs and due notices go out (printed,
    or sent by SMTP when LOYALTY_NOTIFIER_SMTP_HOST is set)."""

    def __init__(
        self,
        program: Program,
        clock: Callable[[], datetime],
        echo: Callable[[str], Any],
        contacts: dict[str, str] | None = None,
    ) -> None:
        settings = NotifierSettings()
        channels: list[Channel] = [PrintChannel(echo)]
        if settings.smtp_host:
            channels = [*channels_from(settings), PrintChannel(echo)]
        self.notifier = build_notifier(program, "sqlite:///:memory:", channels, clock)
        for member, email in (contacts or {}).items():
            self.notifier.contacts.set_contact(member, email)
        self.position = 0

    def step(self, ledger: Ledger) -> int:
        """Record what the new entries and a scan at the clock's instant produce, then
        deliver what is due; returns deliveries handled."""
        entries = ledger_entries(ledger, self.position)
        if entries:
            self.position = entries[-1].position or self.position
            self.notifier.recorder.apply(as_records(entries))
        self.notifier.scanner.scan()
        return asyncio.run(self.notifier.sender.drain())

    def lines(self, member_id: str) -> list[str]:
        """The member's notices, each with its channel state and what caused it."""
        return [
            f"{d.notice.at:%Y-%m-%d} {d.notice.kind} {d.notice.subject} {d.notice.window}"
            f" -> {d.channel} {d.state}; cause: {d.notice.cause}"
            for d in self.notifier.sent_log.deliveries(member_id)
        ]

    def close(self) -> None:
        self.notifier.close()
