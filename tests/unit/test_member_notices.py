"""Member-facing notices say what is true when they are sent: the tier's real held-until
date, and expiry amounts as they stand, corrected when late events add to them."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from schemas import TOPIC_PURCHASES, TOPIC_TIERS
from schemas.tiers import TierChanged
from services.ledger.adapters.program_file import load_program
from services.ledger.application.ledger import Inbound, LedgerApplication
from services.ledger.bootstrap import EXAMPLES
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import NoticeKind, Program
from services.ledger.domain.provenance import Origin
from services.notifier.bootstrap import build_notifier
from services.notifier.contacts import Contact
from services.notifier.embedded import as_records
from services.notifier.notices import Notice, tier_notices
from services.notifier.templates import Rendered, render
from services.tiers.history import ledger_entries
from services.tiers.processor import TierProcessor


def _purchase(event_id: str, at: str, cents: int, member: str = "m-1") -> Inbound:
    raw: dict[str, Any] = {
        "event_id": event_id,
        "type": "purchase.completed",
        "occurred_at": at,
        "member_id": member,
        "data": {"order_id": event_id, "currency": "USD", "total_minor": cents},
    }
    return Inbound(
        json.dumps(raw).encode(), Origin("kafka", topic=TOPIC_PURCHASES, partition=0, offset=0)
    )


def _tier_changes(program: Program, ledger: LedgerApplication) -> list[TierChanged]:
    """What the tiers projection publishes on loyalty.tiers.v1 for the ledger's entries."""
    processor = TierProcessor(program, {})
    found = []
    for entry in ledger_entries(ledger):
        state, out = processor.on_entry(entry.model_dump_json().encode())
        if state is not None:
            processor.save(state)
        found += [TierChanged.model_validate_json(v) for t, _, v in out if t == TOPIC_TIERS]
    return found


def test_gold_reached_in_2026_is_announced_as_held_until_the_end_of_2027_plus_grace() -> None:
    """coffee.yaml: 50 points in a calendar year make a member Gold "until the end of the
    next year" (plus 30 days' grace). The ledger records the next review (2027-01-31), which
    keeps Gold on the 2026 points; the email used to say 2027-01-30."""
    program = load_program(EXAMPLES / "coffee.yaml")
    ledger = LedgerApplication(
        program,
        FixedClock(datetime(2026, 11, 20, 12, tzinfo=UTC)),
        {"PERSISTENCE_MODULE": "eventsourcing.popo"},
    )
    ledger.apply_batch(
        [
            _purchase("p1", "2026-11-16T15:00:00Z", 3000),
            _purchase("p2", "2026-11-16T16:00:00Z", 3000),
        ]
    )
    (gold,) = [c for c in _tier_changes(program, ledger) if c.data.to_tier == "gold"]
    # 2028-01-01 00:00 in New York plus 30 days: reviewed (on 2027's points) then.
    assert gold.data.valid_until == datetime(2028, 1, 31, 5, tzinfo=UTC)
    (notice,) = tier_notices(gold, program)
    assert notice.data["valid_until"] == "2028-01-30"  # the last day it is surely held
    text = render(notice, program.name).text
    assert "you reached Gold; it is yours at least through 2028-01-30." in text


def test_a_tier_nothing_can_end_has_no_held_until() -> None:
    program = load_program(EXAMPLES / "coffee.yaml")
    ledger = LedgerApplication(
        program,
        FixedClock(datetime(2026, 11, 20, 12, tzinfo=UTC)),
        {"PERSISTENCE_MODULE": "eventsourcing.popo"},
    )
    ledger.apply_batch([_purchase("p1", "2026-11-16T15:00:00Z", 1000)])
    (green,) = _tier_changes(program, ledger)
    assert (green.data.to_tier, green.data.valid_until) == ("green", None)


class _Inbox:
    """A channel that keeps what it was asked to send."""

    name = "inbox"

    def __init__(self) -> None:
        self.sent: list[tuple[Notice, Rendered]] = []

    def unreachable(self, contact: Contact | None) -> str | None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, notice: Notice, rendered: Rendered, contact: Contact | None) -> None:
        self.sent.append((notice, rendered))


def test_a_reminder_is_corrected_when_back_dated_purchases_add_to_the_points_expiring() -> None:
    """coffee.yaml: points expire 6 months after the earn, at the end of the month. The
    reminder for 30 November went out saying 10 points; purchases from May recorded
    afterwards make 55 expire that day. The member gets a corrected reminder, once."""
    program = load_program(EXAMPLES / "coffee.yaml")
    clock = FixedClock(datetime(2026, 11, 25, 15, tzinfo=UTC))
    ledger = LedgerApplication(program, clock, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    inbox = _Inbox()
    notifier = build_notifier(program, "sqlite:///:memory:", [inbox], clock.now)
    seen = 0

    def step() -> None:
        nonlocal seen
        entries = list(ledger_entries(ledger, seen))
        if entries:
            seen = entries[-1].position or seen
            notifier.recorder.apply(as_records(entries))
        notifier.scanner.scan()
        asyncio.run(notifier.sender.drain())

    try:
        ledger.apply_batch([_purchase("p1", "2026-05-10T15:00:00Z", 1000, "m-2")])
        step()
        expiring = [(n, r) for n, r in inbox.sent if n.kind == NoticeKind.POINTS_EXPIRING]
        assert [(n.subject, n.data["points"]) for n, _ in expiring] == [("2026-11-30", 10)]

        clock.set(datetime(2026, 11, 26, 15, tzinfo=UTC))
        ledger.apply_batch(
            [
                _purchase("p2", "2026-05-20T15:00:00Z", 2000, "m-2"),
                _purchase("p3", "2026-05-21T15:00:00Z", 2500, "m-2"),
            ]
        )
        step()
        step()  # a repeated scan records nothing new
        expiring = [(n, r) for n, r in inbox.sent if n.kind == NoticeKind.POINTS_EXPIRING]
        assert [(n.subject, n.data["points"]) for n, _ in expiring] == [
            ("2026-11-30", 10),
            ("2026-11-30", 55),
        ]
        corrected, rendered = expiring[-1]
        assert corrected.data["previous"] == 10
        assert rendered.subject == "Correction: 55 points expire after 2026-11-30"
        assert "our last reminder said 10 points" in rendered.text

        # Today's purchase expires on another day: nothing more about 30 November.
        ledger.apply_batch([_purchase("p4", "2026-11-26T16:00:00Z", 100, "m-2")])
        step()
        assert len([n for n, _ in inbox.sent if n.kind == NoticeKind.POINTS_EXPIRING]) == 2
    finally:
        notifier.close()


def test_a_reminder_sent_after_late_purchases_states_the_new_amount_and_needs_no_correction() -> (
    None
):
    program = load_program(EXAMPLES / "coffee.yaml")
    clock = FixedClock(datetime(2026, 11, 25, 15, tzinfo=UTC))
    ledger = LedgerApplication(program, clock, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    inbox = _Inbox()
    notifier = build_notifier(program, "sqlite:///:memory:", [inbox], clock.now)
    try:
        ledger.apply_batch([_purchase("p1", "2026-05-10T15:00:00Z", 1000, "m-3")])
        notifier.recorder.apply(as_records(list(ledger_entries(ledger))))
        assert notifier.scanner.scan() == 1  # recorded saying 10, not sent yet
        ledger.apply_batch([_purchase("p2", "2026-05-20T15:00:00Z", 4500, "m-3")])
        notifier.recorder.apply(as_records(list(ledger_entries(ledger))))
        asyncio.run(notifier.sender.drain())
        notifier.scanner.scan()
        asyncio.run(notifier.sender.drain())
        assert [
            (n.data["points"], r.subject)
            for n, r in inbox.sent
            if n.kind == NoticeKind.POINTS_EXPIRING
        ] == [(55, "55 points expire after 2026-11-30")]
    finally:
        notifier.close()
