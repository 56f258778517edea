"""The faust agent of the tiers service, without a broker: `agent.test_context()` and the
in-memory table store. The table's changelog and the tiers topic are replaced by lists."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mode.utils import loops as mode_loops
from prometheus_client import REGISTRY

from schemas.outbound import BalanceOut, LedgerEntry, OriginOut, ProvenanceOut
from schemas.tiers import TierChanged
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from services.tiers.app import TiersApp, build_app

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


def entry(position: int, entry_type: str, points: int = 0, *, at: datetime = T0) -> bytes:
    return (
        LedgerEntry(
            member_id="m-1",
            seq=position,
            position=position,
            entry_type=entry_type,
            effective_at=at,
            recorded_at=at,
            points=points,
            postings=(),
            moves=(),
            lots_after=(),
            balance_after=BalanceOut(available=points, pending=0, held=0),
            provenance=ProvenanceOut(origin=OriginOut(channel="kafka")),
            note="",
            details={"points": points, "kind": "purchase"} if points else {},
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


@pytest.fixture
def tiers(
    monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop
) -> Iterator[tuple[TiersApp, list[TierChanged]]]:
    service = build_app(program(), broker="kafka://127.0.0.1:1", clock=FixedClock(T0))
    sent: list[TierChanged] = []

    async def send(*, key: bytes, value: bytes, **_: Any) -> None:
        message = TierChanged.model_validate_json(value)
        assert key == message.member_id.encode()
        sent.append(message)

    monkeypatch.setattr(service.tiers_topic, "send", send)
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


def test_agent_publishes_an_upgrade_once_and_stores_the_position(
    tiers: tuple[TiersApp, list[TierChanged]],
) -> None:
    service, sent = tiers
    upgrades = {"reason": "upgrade", "day": "2026-03-01"}
    before = REGISTRY.get_sample_value("loyalty_tiers_changes_total", upgrades) or 0

    async def scenario() -> None:
        async with service.entries.test_context() as agent:
            await agent.put(entry(1, "enrolled"))
            await agent.put(entry(2, "points_earned", 600))
            await agent.put(entry(3, "points_earned", 400))
            await agent.put(entry(3, "points_earned", 400))  # redelivered
            await agent.put(entry(4, "points_redeemed", -900))  # spending: no change
            await agent.put(b"not a ledger entry")  # skipped, the agent goes on

    run(scenario())
    assert [(m.data.from_tier, m.data.to_tier, m.data.reason) for m in sent] == [
        (None, "bronze", "upgrade"),
        ("bronze", "silver", "upgrade"),
    ]
    upgrade = sent[1]
    assert upgrade.event_id == "tier:m-1:silver:p3"
    assert upgrade.data.caused_by_position == 3
    assert upgrade.data.qualifying_value == 1000
    assert upgrade.data.valid_until == datetime(2027, 1, 11, tzinfo=UTC)
    stored = service.table[b"m-1"]
    assert stored["tier"] == "silver"
    assert stored["last_position"] == 4
    assert json.loads(json.dumps(stored)) == stored  # the changelog form is plain JSON
    assert REGISTRY.get_sample_value("loyalty_tiers_changes_total", upgrades) == before + 2
    assert REGISTRY.get_sample_value("loyalty_tiers_last_position") == 4


def test_review_timer_downgrades_after_the_period_and_grace(
    tiers: tuple[TiersApp, list[TierChanged]],
) -> None:
    service, sent = tiers
    clock = service.clock
    assert isinstance(clock, FixedClock)

    async def scenario() -> None:
        async with service.entries.test_context() as agent:
            await agent.put(entry(1, "points_earned", 1200))
        clock.set(datetime(2028, 1, 10, tzinfo=UTC))  # 2027 earned nothing; grace not over
        assert await service.review() == 0
        clock.advance(timedelta(days=1))
        assert await service.review() == 1
        assert await service.review() == 0  # the timer firing again changes nothing

    run(scenario())
    last = sent[-1]
    assert (last.data.from_tier, last.data.to_tier, last.data.reason) == (
        "silver",
        "bronze",
        "downgrade",
    )
    assert last.data.caused_by_position is None
    assert last.data.effective_from == datetime(2028, 1, 11, tzinfo=UTC)
    assert service.processor.count_members() == {"bronze": 1}
    assert REGISTRY.get_sample_value("loyalty_tiers_members", {"tier": "silver"}) == 0
    assert REGISTRY.get_sample_value("loyalty_tiers_members", {"tier": "bronze"}) == 1
