"""Two ledger processes on one store (SQLite and PostgreSQL): nothing is decided from a stale
cached account. Each process keeps the accounts it wrote in memory between batches; another
process may write them meanwhile, and a refusal (which saves no account, so meets no version
conflict) must still be decided against the account as stored."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from services.ledger.application import ledger as ledger_module
from services.ledger.application.batch_reads import select_events_after
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.account import MemberAccount, account_id
from services.ledger.domain.clock import FixedClock
from tests.integration.test_ledger_store import PROGRAM, T0, _event, _file, _purchase


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def pair(store_env: dict[str, str], clock: FixedClock) -> Iterator[tuple[Ledger, Ledger]]:
    """Processes A and B on the same store, each with its own account cache."""
    a = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    b = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    yield a, b
    b.close()
    a.close()


def _enrol(ledger: Ledger, member: str) -> None:
    (outcome,) = ledger.app.apply_batch(
        [_file(_event(f"en-{member}", "member.enrolled", member, T0))]
    )
    assert outcome.status == "applied"
    assert member in ledger.app._accounts  # the process now holds a cached copy


def _stored(ledger: Ledger, member: str) -> MemberAccount:
    found = ledger.app.find_account(member)
    assert found is not None
    return found


def _same_as_stored(ledger: Ledger, other: Ledger, member: str) -> None:
    cached = ledger.app._accounts[member]
    stored = _stored(other, member)
    assert (cached.version, cached.balance) == (stored.version, stored.balance)


def test_a_full_refund_of_an_order_another_process_applied_is_applied(
    pair: tuple[Ledger, Ledger], clock: FixedClock
) -> None:
    a, b = pair
    _enrol(b, "st2")  # B's cached copy predates the purchase
    (bought,) = a.app.apply_batch([_file(_purchase("e-buy", "st2", "o-77", 5000))])
    assert bought.status == "applied"
    refund = _event(
        "e-refund",
        "purchase.refunded",
        "st2",
        T0,
        order_id="o-77",
        refund_id="r-1",
        amount_minor=5000,
    )
    (refunded,) = b.app.apply_batch([_file(refund)])
    assert (refunded.status, refunded.reason) == ("applied", None)
    b.projection.run()
    found = b.balance("st2")
    assert found is not None
    assert (found.available, found.pending) == (5, 0)  # the signup only: the purchase is undone
    _same_as_stored(b, a, "st2")
    assert verify(b.app, b.view).ok


def test_a_redemption_funded_by_another_process_is_applied(pair: tuple[Ledger, Ledger]) -> None:
    a, b = pair
    _enrol(b, "st3")  # 5 points in B's copy
    a.adjust("st3", 100, reason="goodwill", actor="ops")  # 105 available in the store
    redeem = _event("e-red", "redemption.requested", "st3", T0, redemption_id="x-1", points=60)
    (outcome,) = b.app.apply_batch([_file(redeem)])
    assert (outcome.status, outcome.reason) == ("applied", None)
    b.projection.run()
    found = b.balance("st3")
    assert found is not None
    assert found.available == 45
    _same_as_stored(b, a, "st3")


def test_a_hold_placed_by_another_process_can_be_captured(pair: tuple[Ledger, Ledger]) -> None:
    a, b = pair
    _enrol(b, "st4")
    placed = a.place_hold("st4", reference="cart", points=4, ttl=timedelta(minutes=5), actor="t")
    captured = b.capture_hold(placed.result.hold_id, points=None, actor="t")  # not unknown_hold
    assert captured.result.status == "captured"
    _same_as_stored(b, a, "st4")


def test_a_command_is_refused_only_against_the_stored_account(pair: tuple[Ledger, Ledger]) -> None:
    a, b = pair
    _enrol(b, "st5")  # 5 points in B's copy
    a.adjust("st5", 100, reason="goodwill", actor="ops")
    placed = b.place_hold("st5", reference="cart", points=50, ttl=timedelta(minutes=5), actor="t")
    assert placed.result.points == 50  # not insufficient_points


def test_the_scheduler_releases_points_another_process_earned(
    pair: tuple[Ledger, Ledger], clock: FixedClock
) -> None:
    a, b = pair
    _enrol(b, "st6")
    a.app.apply_batch([_file(_purchase("e-buy6", "st6", "o-6", 3000))])  # pending for 2 days
    clock.advance(timedelta(days=3))
    assert b.app.advance_members(["st6"]) == 1  # the release, seen on the stored account
    b.projection.run()
    found = b.balance("st6")
    assert found is not None
    assert (found.available, found.pending) == (35, 0)


def test_a_redrive_is_decided_against_the_stored_account(pair: tuple[Ledger, Ledger]) -> None:
    a, b = pair
    _enrol(b, "st7")
    redeem = _event("e-red7", "redemption.requested", "st7", T0, redemption_id="x-7", points=60)
    (declined,) = b.app.apply_batch([_file(redeem)])
    assert declined.reason == "insufficient_points"
    a.adjust("st7", 100, reason="goodwill", actor="ops")
    (result,) = b.app.redrive(actor="ops", reasons=["insufficient_points"])
    assert (result.outcome, result.event_id) == ("applied", "e-red7")


def test_a_copy_more_than_a_snapshot_interval_behind_is_reloaded(
    pair: tuple[Ledger, Ledger],
) -> None:
    a, b = pair
    _enrol(b, "st8")
    for _ in range(130):  # past a snapshot (every 100 events of an account)
        a.adjust("st8", 1, reason="drip", actor="ops")
    redeem = _event("e-red8", "redemption.requested", "st8", T0, redemption_id="x-8", points=120)
    (outcome,) = b.app.apply_batch([_file(redeem)])
    assert (outcome.status, outcome.reason) == ("applied", None)
    _same_as_stored(b, a, "st8")
    assert _stored(a, "st8").balance.available == 5 + 130 - 120


def test_newer_events_are_read_for_many_accounts_in_one_query(
    pair: tuple[Ledger, Ledger],
) -> None:
    a, _ = pair
    for member in ("n-1", "n-2", "n-3"):
        _enrol(a, member)
    a.adjust("n-2", 1, reason="x", actor="ops")
    a.adjust("n-2", 1, reason="x", actor="ops")
    a.adjust("n-3", 1, reason="x", actor="ops")
    versions = {account_id(m): _stored(a, m).version for m in ("n-1", "n-2", "n-3")}
    assert select_events_after(a.app.recorder, versions, 5) == {}
    behind = {aid: v - 2 for aid, v in versions.items()}
    found = select_events_after(a.app.recorder, behind, 5)
    assert {aid: [e.originator_version for e in events] for aid, events in found.items()} == {
        aid: [v - 1, v] for aid, v in versions.items()
    }
    capped = select_events_after(a.app.recorder, {account_id("n-2"): 0}, 2)
    assert [e.originator_version for e in capped[account_id("n-2")]] == [1, 2]


def test_the_check_is_one_query_per_unit_of_work(
    pair: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    members = [f"q-{i}" for i in range(30)]
    a.app.apply_batch([_file(_event(f"en-{m}", "member.enrolled", m, T0)) for m in members])
    checked: list[int] = []

    def counting(recorder: Any, versions: Mapping[UUID, int], limit: int) -> Any:
        checked.append(len(versions))
        return select_events_after(recorder, versions, limit)

    monkeypatch.setattr(ledger_module, "select_events_after", counting)
    b.adjust("q-3", 7, reason="goodwill", actor="ops")  # B caches nothing of q-3: no check
    assert checked == []
    reviews = [_event(f"rv-{m}", "activity.completed", m, T0, activity="review") for m in members]
    outcomes = a.app.apply_batch([_file(raw, line) for line, raw in enumerate(reviews, 1)])
    assert {o.status for o in outcomes} == {"applied"}
    assert checked == [30]  # every cached account of the batch, in one query
    a.adjust("q-1", 1, reason="x", actor="ops")
    assert checked == [30, 1]
    assert a.app.advance_members(members) == 0
    assert checked == [30, 1, 30]
    _same_as_stored(a, b, "q-3")
