"""The ledger's side of tiers: tier.changed recorded exactly once, only from the tiers
service, never over a locked ops override; and earn entries carry the tier they used."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import TOPIC_PURCHASES, TOPIC_TIERS
from services.ledger.adapters.program_file import load_program
from services.ledger.application.ledger import (
    APPLIED_STATUS,
    DUPLICATE_STATUS,
    REJECTED_STATUS,
    TIERS_CHANNEL,
    Inbound,
    LedgerApplication,
)
from services.ledger.bootstrap import EXAMPLES
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin
from services.tiers.embedded import EmbeddedTiers
from services.tiers.history import ledger_entries
from services.tiers.rebuild import TierProgressCache, balance_tier_fields

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


@pytest.fixture
def ledger() -> LedgerApplication:
    program = load_program(EXAMPLES / "coffee.yaml")
    return LedgerApplication(program, FixedClock(NOW), {"PERSISTENCE_MODULE": "eventsourcing.popo"})


def _raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def purchase(event_id: str, cents: int) -> Inbound:
    return Inbound(
        _raw(
            {
                "event_id": event_id,
                "type": "purchase.completed",
                "occurred_at": "2026-11-19T10:00:00Z",
                "member_id": "m-1",
                "data": {"order_id": event_id, "currency": "USD", "total_minor": cents},
            }
        ),
        Origin("kafka", topic=TOPIC_PURCHASES, partition=0, offset=0),
    )


def tier_changed(to: str, origin: Origin, position: int = 3) -> Inbound:
    return Inbound(
        _raw(
            {
                "event_id": f"tier:m-1:{to}:p{position}",
                "type": "tier.changed",
                "occurred_at": "2026-11-19T10:00:00Z",
                "member_id": "m-1",
                "data": {
                    "from_tier": None,
                    "to_tier": to,
                    "reason": "upgrade",
                    "basis": "points",
                    "qualifying_value": 60,
                    "threshold": 50,
                    "effective_from": "2026-11-19T10:00:00Z",
                    "valid_until": "2027-01-31T05:00:00Z",
                    "caused_by_position": position,
                },
            }
        ),
        origin,
    )


FROM_TIERS = Origin("kafka", topic=TOPIC_TIERS, partition=0, offset=0)


def test_tier_changed_is_recorded_once_and_the_next_earn_uses_the_multiplier(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000)])
    first = ledger.apply_batch([tier_changed("gold", FROM_TIERS)])
    again = ledger.apply_batch([tier_changed("gold", FROM_TIERS)])  # redelivered
    assert [o.status for o in first + again] == [APPLIED_STATUS, DUPLICATE_STATUS]
    account = ledger.find_account("m-1")
    assert account is not None
    assert account.tier == "gold"
    assert account.tier_until == datetime(2027, 1, 31, 5, tzinfo=UTC)
    ledger.apply_batch([purchase("o2", 1000)])
    account = ledger.find_account("m-1")
    assert account is not None
    assert account.lifetime_earned == 30 + 20  # $10 at Gold x2


def test_tier_changed_from_anywhere_but_the_tiers_service_is_refused(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000)])
    http = Origin("http", request_id="r-1")
    [outcome] = ledger.apply_batch([tier_changed("gold", http)])
    assert (outcome.status, outcome.reason) == (REJECTED_STATUS, "wrong_source")
    [embedded] = ledger.apply_batch([tier_changed("gold", Origin(TIERS_CHANNEL), 4)])
    assert embedded.status == APPLIED_STATUS


def test_a_locked_override_refuses_automatic_changes_until_it_ends(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000)])
    ledger.assign_tier(
        "m-1",
        "green",
        reason="goodwill",
        actor="ops-1",
        until=datetime(2027, 1, 1, tzinfo=UTC),
        locked=True,
    )
    [outcome] = ledger.apply_batch([tier_changed("gold", FROM_TIERS)])
    assert (outcome.status, outcome.reason) == (REJECTED_STATUS, "tier_locked")
    account = ledger.find_account("m-1")
    assert account is not None
    assert (account.tier, account.tier_locked) == ("green", True)


def test_the_relays_progress_cache_agrees_with_a_fresh_recomputation(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000)])
    EmbeddedTiers(ledger).run(NOW)
    cache = TierProgressCache(ledger)  # first sight at the enrolment: a new member
    late = TierProgressCache(ledger)  # first sight later: reads the history so far
    entries = list(ledger_entries(ledger))
    cache.observe(entries[0])
    late.observe(entries[-1])
    ledger.apply_batch([purchase("o2", 2500)])
    EmbeddedTiers(ledger).run(NOW)
    for entry in list(ledger_entries(ledger)):  # everything, some of it seen already
        cache.observe(entry)
        late.observe(entry)
    held_until, shown = cache.fields("m-1", NOW)
    assert (held_until, shown) == balance_tier_fields(ledger, "m-1", NOW)
    assert late.fields("m-1", NOW) == (held_until, shown)
    assert shown is not None
    assert shown.qualifying_value == 55  # each purchase counted once
    assert held_until is not None
