"""Holds on a real store (SQLite and PostgreSQL): concurrency, TTL expiry by the scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from services.ledger.adapters.sql_views import SqlLedgerView
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.errors import Declined
from tests.integration.test_ledger_store import PROGRAM, T0, _file, _purchase


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def ledger(store_env: dict[str, str], clock: FixedClock) -> Iterator[Ledger]:
    built = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    yield built
    built.close()


def _with_points(ledger: Ledger, clock: FixedClock, member: str, cents: int) -> None:
    ledger.app.apply_batch([_file(_purchase(f"e-{member}", member, f"o-{member}", cents))])
    clock.advance(timedelta(days=3))  # past the return window
    ledger.tick()
    found = ledger.balance(member)
    assert found is not None
    assert found.available == cents // 100


def test_concurrent_holds_that_exceed_the_balance_exactly_the_ones_that_fit_succeed(
    ledger: Ledger, clock: FixedClock
) -> None:
    _with_points(ledger, clock, "m-1", 10000)  # 100 points

    def hold(i: int) -> str:
        try:
            ledger.place_hold(
                "m-1", reference=f"basket-{i}", points=30, ttl=timedelta(minutes=5), actor="t"
            )
        except Declined as exc:
            return exc.reason
        return "held"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(hold, range(8)))
    assert sorted(results) == ["held"] * 3 + ["insufficient_points"] * 5
    ledger.projection.run()
    found = ledger.balance("m-1")
    assert found is not None
    assert (found.available, found.held) == (10, 90)
    assert len([h for h in ledger.holds("m-1") if h.status == "held"]) == 3
    assert verify(ledger.app, ledger.view).ok


def test_concurrent_captures_of_one_hold_resolve_it_once(ledger: Ledger, clock: FixedClock) -> None:
    _with_points(ledger, clock, "m-1", 10000)
    placed = ledger.place_hold("m-1", reference="b", points=40, ttl=timedelta(minutes=5), actor="t")
    hid = placed.result.hold_id

    def capture(_: int) -> str:
        try:
            ledger.capture_hold(hid, points=None, actor="t")
        except Declined as exc:
            return exc.reason
        return "captured"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(capture, range(4)))
    assert sorted(results) == ["captured"] + ["hold_resolved"] * 3
    found = ledger.balance("m-1")
    assert found is not None
    assert (found.available, found.held) == (60, 0)
    assert verify(ledger.app, ledger.view).ok


def test_a_hold_for_an_unknown_member_or_hold_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(Declined, match=r"^unknown_member:"):
        ledger.place_hold("m-9", reference="b", points=1, ttl=timedelta(minutes=1), actor="t")
    with pytest.raises(Declined, match=r"^unknown_hold:"):
        ledger.void_hold("h.bS05.0123456789abcdef0123", reason=None, actor="t")
    with pytest.raises(Declined, match=r"^unknown_hold:"):
        ledger.capture_hold("nonsense", points=None, actor="t")


def test_an_expired_hold_is_released_by_the_scheduler(ledger: Ledger, clock: FixedClock) -> None:
    _with_points(ledger, clock, "m-1", 5000)
    placed = ledger.place_hold("m-1", reference="b", points=20, ttl=timedelta(minutes=1), actor="t")
    hid = placed.result.hold_id
    found = ledger.hold(hid)
    assert found is not None
    assert found[1].status == "held"
    clock.advance(timedelta(minutes=2))
    found = ledger.hold(hid)
    assert found is not None
    assert found[1].status == "expired"  # shown as of now, before the scheduler runs
    assert ledger.tick() == 1
    assert ledger.tick() == 0
    balance = ledger.balance("m-1")
    assert balance is not None
    assert (balance.available, balance.held) == (50, 0)
    assert [h.status for h in ledger.holds("m-1")] == ["expired"]
    assert ledger.statement("m-1", limit=1)[0].entry_type == "hold_expired"
    assert verify(ledger.app, ledger.view).ok


def test_verify_catches_a_holds_projection_that_differs_from_the_ledger(
    ledger: Ledger, clock: FixedClock
) -> None:
    _with_points(ledger, clock, "m-1", 5000)
    ledger.place_hold("m-1", reference="b", points=20, ttl=timedelta(minutes=1), actor="t")
    assert verify(ledger.app, ledger.view).ok
    view = ledger.view
    assert isinstance(view, SqlLedgerView)
    with view._tx(commit=True) as cursor:
        view._run(cursor, "UPDATE view_holds SET status = 'voided'")
    report = verify(ledger.app, ledger.view)
    assert report.violations == ["m-1: projected holds differ from the ledger"]
