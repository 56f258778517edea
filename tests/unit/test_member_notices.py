"""Member-facing notices say what is true when they are sent: the tier's real held-until
date, and expiry amounts as they stand, corrected when late events add to them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from schemas import TOPIC_PURCHASES, TOPIC_TIERS
from schemas.tiers import TierChanged
from services.ledger.adapters.program_file import load_program
from services.ledger.application.ledger import Inbound, LedgerApplication
from services.ledger.bootstrap import EXAMPLES
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin
from services.notifier.notices import tier_notices
from services.notifier.templates import render
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
