"""The faust agent of the tiers projection, without a broker: `agent.test_context()` and the
in-memory table store. The table's changelog and the output topics are replaced by lists.

The entries fed to it are a real ledger's (an in-memory LedgerApplication, which decides the
tiers inline), so the projection is checked against what the ledger recorded."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mode.utils import loops as mode_loops
from prometheus_client import REGISTRY

from schemas import TOPIC_TIER_STATUS, TOPIC_TIERS
from schemas.outbound import BalanceOut, LedgerEntry, OriginOut, ProvenanceOut, TierStatus
from schemas.tiers import TierChanged
from services.ledger.adapters.kafka_clients import RepeatedLines
from services.ledger.application.ledger import Inbound, LedgerApplication
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin
from services.tiers.app import TiersApp, Worker, build_app
from services.tiers.history import ledger_entries

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def program() -> Program:
    return Program.model_validate(
        {
            "id": "shop",
            "name": "Shop",
            "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
            "tiers": [
                {"id": "bronze", "name": "Bronze", "threshold": 0},
                {"id": "silver", "name": "Silver", "threshold": 1000, "earn_multiplier": "1.5"},
            ],
            "tier_qualification": {"window": "calendar_year", "grace_days": 10},
        }
    )


def purchase(n: int, cents: int, at: datetime) -> Inbound:
    event = {
        "event_id": f"e-{n}",
        "type": "purchase.completed",
        "occurred_at": at.isoformat(),
        "member_id": "m-1",
        "data": {"order_id": f"o-{n}", "currency": "USD", "total_minor": cents},
    }
    return Inbound(json.dumps(event).encode(), Origin("file"))


@pytest.fixture
def ledger() -> LedgerApplication:
    """m-1: bronze on the first purchase ($600), silver on the second ($400: 1000 points in
    2026); 2026 qualifies for silver again at the review on 11 Jan 2027 (kept), 2027 earns
    nothing: back to bronze on 11 Jan 2028 (period end + 10 days' grace)."""
    clock = FixedClock(T0)
    app = LedgerApplication(program(), clock, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    app.apply_batch([purchase(1, 60000, T0)])
    clock.advance(timedelta(days=1))
    app.apply_batch([purchase(2, 40000, clock.now())])
    clock.set(datetime(2028, 1, 11, 1, tzinfo=UTC))
    app.advance_members(["m-1"], clock.now())
    return app


def other(position: int, entry_type: str, at: datetime) -> bytes:
    """An entry that changes nothing tier-related (as the ledger would publish it)."""
    return (
        LedgerEntry(
            member_id="m-1",
            seq=position,
            position=position,
            entry_type=entry_type,
            effective_at=at,
            recorded_at=at,
            points=0,
            postings=(),
            moves=(),
            lots_after=(),
            balance_after=BalanceOut(available=0, pending=0, held=0),
            provenance=ProvenanceOut(origin=OriginOut(channel="scheduler")),
            note="",
        )
        .model_dump_json()
        .encode()
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """faust (through mode) binds to a loop when it is built: one loop per test, closed.

    mode caches a loop per thread (made at import when none was running): it is closed
    and replaced by this test's loop, so no loop is left open for the garbage collector.
    """
    cached = getattr(mode_loops._current_loop, "loop", None)
    if cached is not None and not cached.is_running():
        cached.close()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mode_loops._current_loop.loop = loop
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    asyncio.set_event_loop(None)


Sent = list[tuple[str, TierChanged | TierStatus]]


@pytest.fixture
def tiers(
    monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop
) -> Iterator[tuple[TiersApp, Sent]]:
    service = build_app(program(), broker="kafka://127.0.0.1:1")
    sent: Sent = []

    def sender(topic: str) -> Any:
        async def send(*, key: bytes, value: bytes, **_: Any) -> None:
            message: TierChanged | TierStatus = (
                TierChanged.model_validate_json(value)
                if topic == TOPIC_TIERS
                else TierStatus.model_validate_json(value)
            )
            assert key == message.member_id.encode()
            sent.append((topic, message))

        return send

    monkeypatch.setattr(service.tiers_topic, "send", sender(TOPIC_TIERS))
    monkeypatch.setattr(service.status_topic, "send", sender(TOPIC_TIER_STATUS))
    # No broker: the table's changelog writes go nowhere (the in-memory store keeps values).
    monkeypatch.setattr(type(service.table), "on_key_set", lambda self, key, value: None)
    service.app.finalize()
    service.app.flow_control.resume()
    yield service, sent
    # The agent's stream made a (never started) consumer thread with a loop of its own.
    consumer = service.app._consumer
    thread = getattr(consumer, "_thread", None) if consumer is not None else None
    if thread is not None:
        thread.thread_loop.close()


def run(coro: Any) -> Any:
    return asyncio.get_event_loop().run_until_complete(coro)


def changes(sent: Sent) -> list[TierChanged]:
    return [m for topic, m in sent if isinstance(m, TierChanged) and topic == TOPIC_TIERS]


def statuses(sent: Sent) -> list[TierStatus]:
    return [m for topic, m in sent if isinstance(m, TierStatus) and topic == TOPIC_TIER_STATUS]


def test_the_table_follows_the_ledgers_tier_entries_and_publishes_each_change_once(
    tiers: tuple[TiersApp, Sent], ledger: LedgerApplication
) -> None:
    service, sent = tiers
    upgrades = {"reason": "upgrade"}
    before = REGISTRY.get_sample_value("loyalty_tiers_changes_total", upgrades) or 0
    entries = list(ledger_entries(ledger))
    tier_entries = [e for e in entries if e.entry_type == "tier_assigned"]
    assert [
        (e.details["previous"], e.details["tier"], e.details["cause"]) for e in tier_entries
    ] == [
        (None, "bronze", "entry"),
        ("bronze", "silver", "upgrade"),
        ("silver", "silver", "kept"),
        ("silver", "bronze", "downgrade"),
    ]

    async def scenario() -> None:
        async with service.entries.test_context() as agent:
            for entry in entries:
                await agent.put(entry.model_dump_json().encode())
            await agent.put(entries[3].model_dump_json().encode())  # redelivered
            await agent.put(b"not a ledger entry")  # skipped, the agent goes on

    run(scenario())
    found = changes(sent)
    # The kept tier publishes nothing; every change exactly once, with the entry's position.
    assert [(m.data.from_tier, m.data.to_tier, m.data.reason) for m in found] == [
        (None, "bronze", "upgrade"),
        ("bronze", "silver", "upgrade"),
        ("silver", "bronze", "downgrade"),
    ]
    _, silver, bronze = tier_entries[0], tier_entries[1], tier_entries[3]
    upgrade, downgrade = found[1], found[2]
    earn = next(e for e in entries if e.seq == silver.seq - 1)
    assert earn.entry_type == "points_earned"
    assert upgrade.event_id == f"tier:m-1:silver:p{silver.position}"
    assert upgrade.data.caused_by_position == earn.position  # the earn that reached it
    assert upgrade.data.qualifying_value == 1000
    # Reached in 2026, kept at the review of 2026 (2027-01-11): held until the review of 2027.
    assert upgrade.data.valid_until == datetime(2028, 1, 11, tzinfo=UTC)
    assert upgrade.data.valid_until == downgrade.data.effective_from
    assert upgrade.occurred_at == T0 + timedelta(days=1)
    assert downgrade.event_id == f"tier:m-1:bronze:p{bronze.position}"
    assert downgrade.data.caused_by_position is None  # the period-end review
    assert downgrade.data.qualifying_value == 0  # 2027 earned nothing
    assert downgrade.data.effective_from == datetime(2028, 1, 11, tzinfo=UTC)

    # The table holds what the ledger's account holds.
    account = ledger.find_account("m-1")
    assert account is not None
    stored = service.table[b"m-1"]
    assert (stored["tier"], stored["held_until"], stored["locked"]) == (
        account.tier,
        None,
        account.tier_locked,
    )
    assert stored["last_position"] == entries[-1].position
    assert json.loads(json.dumps(stored)) == stored  # the changelog form is plain JSON
    # Both upgrades (into bronze, then silver), whatever their day: no per-day series.
    assert REGISTRY.get_sample_value("loyalty_tiers_changes_total", upgrades) == before + 2
    assert REGISTRY.get_sample_value("loyalty_tiers_last_position") == entries[-1].position
    assert service.processor.count_members() == {"bronze": 1}
    assert REGISTRY.get_sample_value("loyalty_tiers_members", {"tier": "silver"}) == 0
    assert REGISTRY.get_sample_value("loyalty_tiers_members", {"tier": "bronze"}) == 1


def test_the_tier_status_shows_the_progress_and_is_published_when_it_changes(
    tiers: tuple[TiersApp, Sent], ledger: LedgerApplication
) -> None:
    service, sent = tiers
    entries = list(ledger_entries(ledger))
    first_earn = next(e for e in entries if e.entry_type == "points_earned")
    last = entries[-1]

    async def scenario() -> None:
        async with service.entries.test_context() as agent:
            for entry in entries:
                await agent.put(entry.model_dump_json().encode())
            # Nothing tier-related changes: no status.
            shown = len(statuses(sent))
            await agent.put(other((last.position or 0) + 1, "hold_placed", last.effective_at))
            assert len(statuses(sent)) == shown

    run(scenario())
    found = statuses(sent)
    assert all(s.member_id == "m-1" for s in found)
    after_first = next(s for s in found if s.as_of_position == first_earn.position)
    assert (after_first.tier, after_first.qualifying_value) == ("bronze", 600)
    assert (after_first.next_tier, after_first.next_threshold) == ("silver", 1000)
    assert after_first.period_end == datetime(2027, 1, 1, tzinfo=UTC)
    latest = found[-1]  # what the compacted topic keeps for m-1
    assert latest.as_of_position == last.position
    assert (latest.tier, latest.held_until, latest.locked) == ("bronze", None, False)
    assert (latest.qualifying_value, latest.next_tier) == (0, "silver")
    assert latest.period_end == datetime(2029, 1, 1, tzinfo=UTC)
    assert latest.basis == "points"


def test_a_reason_stored_with_control_characters_is_published_escaped(
    tiers: tuple[TiersApp, Sent], ledger: LedgerApplication
) -> None:
    # Recorded before the API and the CLI refused control characters: the tier.changed
    # message is still valid (its schema refuses them too) and shows them escaped.
    ledger.assign_tier("m-1", "silver", reason="ops\r\nforged\x00", actor="ops-1")
    service, sent = tiers
    entries = list(ledger_entries(ledger))

    async def scenario() -> None:
        async with service.entries.test_context() as agent:
            for entry in entries:
                await agent.put(entry.model_dump_json().encode())

    run(scenario())
    override = changes(sent)[-1]
    assert (override.data.to_tier, override.data.detail) == ("silver", "ops\\x0d\\x0aforged\\x00")


def test_the_worker_limits_repeated_log_lines_once_faust_set_up_logging(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """faust's aiokafka clients log every failed attempt while the broker is away."""
    service = build_app(program(), broker="kafka://127.0.0.1:1", data_dir=tmp_path)
    worker = Worker(service.app, loglevel="info", loop=loop)
    logger = logging.getLogger("test-tiers-worker")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        worker.on_setup_root_logger(logger, logging.INFO)
        assert any(isinstance(f, RepeatedLines) for f in handler.filters)
    finally:
        logger.removeHandler(handler)
