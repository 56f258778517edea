"""The ledger's side of tiers: decided inline (tier.changed is no input any more), never
over a locked ops override; earn entries carry the tier they used; the balance's tier fields
come from the account; the check re-decides each of the ledger's decisions."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import TOPIC_PURCHASES, TOPIC_TIERS
from services.ledger.adapters.program_file import load_program
from services.ledger.application.ledger import (
    APPLIED_STATUS,
    REJECTED_STATUS,
    TIERS_CHANNEL,
    Inbound,
    LedgerApplication,
)
from services.ledger.bootstrap import EXAMPLES
from services.ledger.domain import tier_policy
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin
from services.tiers.history import ledger_entries, member_facts
from services.tiers.rebuild import TierProgressCache, balance_tier_fields, tier_differences

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
HELD_UNTIL = datetime(2027, 1, 31, 5, tzinfo=UTC)  # 1 Jan 2027 in New York + 30 days' grace


def _points(ledger: LedgerApplication) -> tuple[int, str | None, datetime | None]:
    account = ledger.find_account("m-1")
    assert account is not None
    return account.lifetime_earned, account.tier, account.tier_held_until


@pytest.mark.parametrize("batching", ["one batch", "one event per batch"])
def test_an_upgrade_counts_from_the_very_next_earn_whatever_the_batching(
    ledger: LedgerApplication, batching: str
) -> None:
    # Coffee: green (x1) from 0 points, gold (x2) from 50 points in the calendar year.
    # $30 -> 30 (green); $25 -> 25 (green; 55 >= 50: gold from now on); $10 -> 10 x 2 = 20.
    items = [purchase("o1", 3000), purchase("o2", 2500), purchase("o3", 1000)]
    if batching == "one batch":
        outcomes = ledger.apply_batch(items)
    else:
        outcomes = [o for item in items for o in ledger.apply_batch([item])]
    assert [o.status for o in outcomes] == [APPLIED_STATUS] * 3
    assert _points(ledger) == (30 + 25 + 20, "gold", HELD_UNTIL)
    account = ledger.find_account("m-1")
    assert account is not None
    tiers = [
        (e.previous, e.tier, e.cause)
        for e in ledger.events.get(account.id)
        if isinstance(e, type(account).TierAssigned)
    ]
    assert tiers == [(None, "green", "entry"), ("green", "gold", "upgrade")]


def test_tier_changed_is_not_taken_from_anywhere_the_ledger_decides_tiers(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000)])
    origins = (FROM_TIERS, Origin("http", request_id="r-1"), Origin(TIERS_CHANNEL))
    for position, origin in enumerate(origins):
        [outcome] = ledger.apply_batch([tier_changed("gold", origin, position)])
        assert (outcome.status, outcome.reason) == (REJECTED_STATUS, "decided_by_ledger")
    assert _points(ledger)[1] == "green"


def test_a_locked_override_keeps_automatic_changes_out_until_it_ends(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000)])
    ledger.assign_tier(
        "m-1",
        "green",
        reason="goodwill",
        actor="ops-1",
        until=datetime(2027, 1, 2, tzinfo=UTC),
        locked=True,
    )
    ledger.apply_batch([purchase("o2", 3000)])  # 60 points in 2026: gold, but locked
    account = ledger.find_account("m-1")
    assert account is not None
    assert (account.tier, account.tier_locked, account.lifetime_earned) == ("green", True, 60)
    # The override ends on 2 Jan 2027 00:00 UTC (1 Jan in New York): the window then (the
    # calendar year 2027 so far) holds nothing, so the member is green, no longer locked.
    ledger.advance_members(["m-1"], datetime(2027, 1, 3, tzinfo=UTC))
    account = ledger.find_account("m-1")
    assert account is not None
    assert (account.tier, account.tier_locked) == ("green", False)


def test_the_relays_progress_cache_agrees_with_the_account(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000)])
    cache = TierProgressCache(ledger)  # first sight at the enrolment: a new member
    late = TierProgressCache(ledger)  # first sight later: reads the account as of then
    entries = list(ledger_entries(ledger))
    cache.observe(entries[0])
    late.observe(entries[-1])
    ledger.apply_batch([purchase("o2", 2500)])
    for entry in list(ledger_entries(ledger)):  # everything, some of it seen already
        cache.observe(entry)
        late.observe(entry)
    held_until, shown = cache.fields("m-1", NOW)
    assert (held_until, shown) == balance_tier_fields(ledger, "m-1", NOW)
    assert late.fields("m-1", NOW) == (held_until, shown)
    assert shown is not None
    assert shown.qualifying_value == 55  # each purchase counted once
    assert held_until == HELD_UNTIL  # gold, straight from the account
    assert shown.next_tier is None


def test_balance_tier_fields_as_of_an_earlier_entry_use_the_account_as_it_was(
    ledger: LedgerApplication,
) -> None:
    ledger.apply_batch([purchase("o1", 3000), purchase("o2", 2500)])
    account = ledger.find_account("m-1")
    assert account is not None
    earn = next(e for e in ledger_entries(ledger) if e.entry_type == "points_earned")
    held_then, then = balance_tier_fields(ledger, "m-1", NOW, through=earn.seq)
    assert then is not None
    assert (held_then, then.qualifying_value, then.next_tier) == (None, 30, "gold")  # green
    assert balance_tier_fields(ledger, "m-1", NOW, through=0) == (None, None)
    held_now, _ = balance_tier_fields(ledger, "m-1", NOW)
    assert held_now == account.tier_held_until == HELD_UNTIL


def test_the_check_re_decides_each_of_the_ledgers_decisions(
    ledger: LedgerApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.apply_batch([purchase("o1", 3000), purchase("o2", 2500)])
    ledger.assign_tier("m-1", "green", reason="goodwill", actor="ops-1")
    ledger.advance_members(["m-1"], datetime(2028, 3, 1, tzinfo=UTC))  # reviews
    assert tier_differences(ledger) == []

    # Decisions made under another program version are not decided again under this one.
    gold_at_100 = ledger.program.tiers[1].model_copy(update={"threshold": 100})
    other = ledger.program.model_copy(update={"tiers": (ledger.program.tiers[0], gold_at_100)})
    monkeypatch.setattr(ledger, "program", other)
    assert tier_differences(ledger) == []


def test_the_check_finds_a_decision_the_policy_would_not_make(
    ledger: LedgerApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tier_policy.upgrade

    def a_day_longer(*args: Any) -> tier_policy.Step:
        state, decisions = real(*args)
        if decisions and state.held_until is not None:
            state = replace(state, held_until=state.held_until + timedelta(days=1))
        return state, decisions

    monkeypatch.setattr(tier_policy, "upgrade", a_day_longer)  # the ledger's use of it
    ledger.apply_batch([purchase("o1", 3000), purchase("o2", 2500)])
    [problem] = tier_differences(ledger)
    assert "(upgrade) records gold held until 2027-02-01" in problem
    assert "the policy gives gold held until 2027-01-31" in problem


def test_the_check_finds_an_earn_whose_upgrade_was_never_recorded(
    ledger: LedgerApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MemberAccount, "_upgrade_after_earn", lambda *args, **kwargs: None)
    ledger.apply_batch([purchase("o1", 3000), purchase("o2", 2500)])
    assert _points(ledger)[1] == "green"
    [problem] = tier_differences(ledger)
    assert "earn reaches gold, but no upgrade follows it" in problem


def test_in_time_order_a_recomputation_from_the_facts_gives_the_ledgers_tier(
    ledger: LedgerApplication,
) -> None:
    """Only ops overrides are override facts: the ledger's own tier entries (entry tier,
    upgrade, reviews) count as nothing, so the policy from zero lands where the ledger is."""
    ledger.apply_batch([purchase("o1", 3000), purchase("o2", 2500)])
    ledger.assign_tier(
        "m-1", "green", reason="goodwill", actor="ops-1", until=datetime(2026, 12, 1, tzinfo=UTC)
    )
    ledger.advance_members(["m-1"], datetime(2028, 3, 1, tzinfo=UTC))
    account = ledger.find_account("m-1")
    assert account is not None
    facts = member_facts(ledger, "m-1")
    assert [f.tier for f in facts if f.kind == "override"] == ["green"]
    state, _ = tier_policy.recompute(ledger.program, "m-1", facts)
    assert (state.tier, state.held_until) == (account.tier, account.tier_held_until)
