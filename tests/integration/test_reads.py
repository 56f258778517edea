"""The read side: the process's one projection runner, read-your-writes, tier fields kept by
the projection, member search by prefix and the program summary (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.ledger.adapters.program_file import load_program
from services.ledger.adapters.sql_views import construct_view
from services.ledger.api import convert
from services.ledger.api.app import create_app
from services.ledger.application.ledger import Inbound
from services.ledger.application.program_metrics import compute, from_summary
from services.ledger.application.service import Ledger, balance_as_of
from services.ledger.application.verify import verify
from services.ledger.bootstrap import EXAMPLES, build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin
from services.tiers.rebuild import TierStateCache, balance_tier_fields
from tests.unit.test_api import CHECKOUT, READER, SUPPORT, key_store

COFFEE = load_program(EXAMPLES / "coffee.yaml")  # tiers, expiry, pending days
T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)


def _event(event_id: str, kind: str, member: str, at: datetime, **data: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": kind,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "member_id": member,
        "data": data,
    }


def _purchase(event_id: str, member: str, cents: int, at: datetime) -> dict[str, Any]:
    return _event(
        event_id,
        "purchase.completed",
        member,
        at,
        order_id=f"o-{event_id}",
        currency="USD",
        total_minor=cents,
    )


def _inbound(event: dict[str, Any]) -> Inbound:
    return Inbound(json.dumps(event).encode(), Origin("file", file="test", line=1))


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def ledger(store_env: dict[str, str], clock: FixedClock) -> Iterator[Ledger]:
    built = build_ledger(program=COFFEE, clock=clock, env=store_env)
    yield built
    built.close()


@pytest.fixture
def client(ledger: Ledger) -> Iterator[TestClient]:
    # The runner wakes only when told: it never catches up on its own during a test.
    ledger.runner.poll_seconds = 3600
    with TestClient(create_app(ledger, key_store())) as c:
        ledger.runner.catch_up()  # its first run (at start) is over
        yield c


# ------------------------------------------------------------ the runner, read-your-writes


def test_the_api_starts_one_runner_and_a_write_answers_once_the_views_hold_it(
    client: TestClient, ledger: Ledger
) -> None:
    assert ledger.runner.running
    r = client.post("/v1/events", json=_purchase("e-1", "m-1", 1250, T0), headers=CHECKOUT)
    assert r.status_code == 201
    # No poll, no projection in the GET: the write waited for the runner to pass it.
    assert ledger.runner.through >= (ledger.app.recorder.max_notification_id() or 0)
    balance = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert balance["pending"] == 12
    r = client.post(
        "/v1/members/m-1/adjustments", json={"points": 5, "reason": "goodwill"}, headers=SUPPORT
    )
    assert r.status_code == 201
    assert r.json()["balance"]["available"] == 5
    balance = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert (balance["available"], balance["pending"]) == (5, 12)
    statement = client.get("/v1/members/m-1/statement", headers=READER).json()
    assert statement["entries"][0]["entry_type"] == "points_adjusted"


def test_a_read_waits_for_the_runner_to_pass_what_another_writer_recorded(
    client: TestClient, ledger: Ledger
) -> None:
    """A write behind the API's back (another process, here the application itself): the
    GET does not project it, it wakes the runner and answers once the runner has."""
    (outcome,) = ledger.app.apply_batch([_inbound(_purchase("e-2", "m-2", 900, T0))])
    assert outcome.status == "applied"
    assert ledger.view.balance("m-2") is None  # not projected yet: the runner sleeps
    runs = []
    real = ledger.projection.run

    def counted(batch_size: int = 500) -> int:
        runs.append(batch_size)
        return real(batch_size)

    ledger.projection.run = counted  # type: ignore[method-assign]
    r = client.get("/v1/members/m-2/balance", headers=READER)
    assert r.status_code == 200
    assert r.json()["pending"] == 9
    assert len(runs) == 1  # the runner's run
    r = client.get("/v1/members/m-2/balance", headers=READER)  # nothing new: no run
    assert len(runs) == 1


def test_without_a_running_runner_a_write_projects_itself(ledger: Ledger) -> None:
    """One-shot use (a CLI command, no API lifespan): catch_up runs the projection here."""
    assert not ledger.runner.running
    ledger.app.apply_batch([_inbound(_purchase("e-3", "m-3", 500, T0))])
    ledger.catch_up()
    row = ledger.view.balance("m-3")
    assert row is not None
    assert row.pending == 5


# ------------------------------------------------------------------ tier fields


def test_balance_tier_fields_from_the_state_the_projection_keeps(
    client: TestClient, ledger: Ledger, clock: FixedClock
) -> None:
    """The tier fields of GET balance equal the ones worked out from the member's account,
    as the member earns, crosses the Gold threshold, refunds and redeems; between reads,
    the projection keeps the cached state up to date (no account read)."""
    tiers = client.app.state.tier_states  # type: ignore[attr-defined]
    member = "t-1"
    at = T0
    steps = [("buy", 1200), ("buy", 2500), ("buy", 900), ("refund", 500), ("buy", 4000)]
    steps += [("redeem", 0), ("buy", 3000), ("buy", 700)]
    for n, (kind, cents) in enumerate(steps):
        if kind == "buy":
            event = _purchase(f"t-{n}", member, cents, at)
        elif kind == "refund":
            event = _event(
                f"t-{n}",
                "purchase.refunded",
                member,
                at,
                order_id="o-t-1",
                refund_id=f"r-{n}",
                amount_minor=cents,
            )
        else:
            event = _event(f"t-{n}", "redemption.requested", member, at, redemption_id=f"x-{n}")
            event["data"]["reward_id"] = "free-drink"
        r = client.post("/v1/events", json=event, headers=CHECKOUT)
        assert r.status_code in (201, 202), r.text
        row = ledger.view.balance(member)
        assert row is not None
        if n > 1:  # read before: followed from the entries projected since
            assert tiers.states[member].last_position == row.entries
        shown = client.get(f"/v1/members/{member}/balance", headers=READER).json()
        found = ledger.balance(member)
        assert found is not None
        expected = convert.balance(
            found, *balance_tier_fields(ledger.app, member, found.as_of, None)
        ).model_dump(mode="json")
        assert shown == expected
        at += timedelta(days=400 if n == 3 else 3)  # and into another qualifying year
        clock.set(at)
    assert shown["tier"] == "gold"
    # Seeded afresh from the account (as after a restart), with what no window counts
    # dropped: the same fields.
    fresh = TierStateCache(ledger.app)
    row = ledger.view.balance(member)
    assert row is not None
    for later in (timedelta(0), timedelta(days=30), timedelta(days=500)):
        now = clock.now() + later
        assert fresh.fields(member, now, row.entries) == balance_tier_fields(
            ledger.app, member, now, row.entries
        )
    state = fresh.states[member]
    assert len(state.contributions) < len(ledger.app.find_account(member).qualifying)  # type: ignore[union-attr]


# ------------------------------------------------------------------ member search


IDS = ["m", "m-1", "m-10", "m-1a", "m-2", "m.1", "m-1\u00e9", "M-1", "n-1", "m-1-", "m-\u00e91"]


def test_member_search_reads_a_bounded_range_with_the_old_answers(
    client: TestClient, ledger: Ledger
) -> None:
    ledger.app.apply_batch([_inbound(_purchase(f"s-{i}", m, 100, T0)) for i, m in enumerate(IDS)])
    ledger.catch_up()
    every = sorted(ledger.view.all_balances(), key=lambda r: r.member_id)
    for prefix in ["", "m", "m-", "m-1", "m-1\u00e9", "M", "n", "x", "m-10", "m-1-"]:
        for limit in (1, 2, 3, 20):
            old = [r.member_id for r in every if r.member_id.startswith(prefix)][:limit]
            assert [r.member_id for r in ledger.view.find_members(prefix, limit)] == old
            found = client.get(
                "/v1/members", params={"prefix": prefix, "limit": limit}, headers=READER
            ).json()
            assert [m["member_id"] for m in found] == old


# --------------------------------------------------------------- program summary


def _random_history(ledger: Ledger, clock: FixedClock, seed: int) -> None:
    rng = random.Random(seed)
    members = [f"p-{i}" for i in range(rng.randint(2, 6))]
    at = T0 - timedelta(days=rng.randint(0, 200))
    orders: dict[str, list[str]] = {}
    for n in range(rng.randint(20, 60)):
        member = rng.choice(members)
        kind = rng.random()
        if kind < 0.55:
            event = _purchase(f"{seed}-{n}", member, rng.randint(100, 9000), at)
            orders.setdefault(member, []).append(f"o-{seed}-{n}")
        elif kind < 0.7 and orders.get(member):
            event = _event(
                f"{seed}-{n}",
                "purchase.refunded",
                member,
                at,
                order_id=rng.choice(orders[member]),
                refund_id=f"r-{n}",
                amount_minor=rng.randint(50, 2000),
            )
        elif kind < 0.85:
            event = _event(
                f"{seed}-{n}",
                "redemption.requested",
                member,
                at,
                redemption_id=f"x-{n}",
                points=rng.randint(10, 60),
            )
        else:
            event = _event(
                f"{seed}-{n}", "activity.completed", member, at, activity="review", reference=f"{n}"
            )
        ledger.app.apply_batch([_inbound(event)])
        if rng.random() < 0.3:
            ledger.catch_up()  # batches of different sizes
        at += timedelta(hours=rng.randint(1, 24 * 20))
        if rng.random() < 0.2:
            clock.set(max(clock.now(), at))
            ledger.tick()  # releases, expiries, tier reviews
    clock.set(max(clock.now(), at))
    ledger.tick()
    ledger.catch_up()


def _both(ledger: Ledger, now: datetime, days: int) -> tuple[Any, Any]:
    view = ledger.view
    full = compute(view.all_balances(), view.all_entries(), now, days)
    return from_summary(view.summary(now, days)), full


@pytest.mark.parametrize("seed", range(6))
def test_program_summary_gives_the_full_computation(
    ledger: Ledger, clock: FixedClock, seed: int
) -> None:
    _random_history(ledger, clock, seed)
    rng = random.Random(seed)
    entries = ledger.view.all_entries()
    assert entries
    instants = [e.effective_at for e in entries]
    for _ in range(12):
        now = rng.choice(instants) + timedelta(seconds=rng.choice([-1, 0, 1, 3600 * 7]))
        days = rng.choice([1, 2, 7, 30, 90, 366])
        summary, full = _both(ledger, now, days)
        assert summary == full, (now, days)


def test_program_summary_of_an_earlier_store_is_filled_once_on_start(
    ledger: Ledger, clock: FixedClock, store_env: dict[str, str]
) -> None:
    _random_history(ledger, clock, 99)
    view: Any = ledger.view
    with view._tx(commit=True) as c:  # as an earlier release left it: no summary
        for table in ("summary_days", "summary_tiers", "summary_activity", "summary_state"):
            view._run(c, f"DELETE FROM {view.prefix}{table}")
    empty = from_summary(view.summary(clock.now(), 30))
    assert empty.members == 0
    reopened: Any = construct_view(ledger.app.factory, view.prefix)
    assert not reopened.fill_summary()  # filled when constructed, once
    summary = from_summary(reopened.summary(clock.now(), 30))
    assert summary == compute(view.all_balances(), view.all_entries(), clock.now(), 30)
    assert summary.members > 0


def test_program_metrics_route_reads_the_summary(client: TestClient, ledger: Ledger) -> None:
    for n in range(3):
        client.post(
            "/v1/events", json=_purchase(f"pm-{n}", f"pm-{n % 2}", 2000, T0), headers=CHECKOUT
        )
    body = client.get("/v1/program/metrics", headers=READER).json()
    full = compute(ledger.view.all_balances(), ledger.view.all_entries(), T0, 30)
    assert (body["members"], body["issued"], body["outstanding_points"]) == (
        full.members,
        full.issued,
        full.outstanding,
    )
    assert body["members"] == 2
    held = sum(r.available + r.pending + r.held for r in ledger.view.all_balances())
    assert ledger.view.outstanding() == held > 0
    metrics = client.get("/metrics").text
    assert f"loyalty_outstanding_points {float(held)}" in metrics


def test_lots_shows_the_open_ones_and_every_one_on_request(
    client: TestClient, ledger: Ledger, clock: FixedClock
) -> None:
    """GET lots reads the lots with points left or pending (not the member's whole
    history); `spent=true` gives every lot, as before. The balance, read from the open lots
    only, is the one worked out from every lot."""
    at = T0
    for n in range(4):
        client.post("/v1/events", json=_purchase(f"l-{n}", "l-1", 3000, at), headers=CHECKOUT)
        at += timedelta(days=3)
        clock.set(at)
    redeem = _event("l-r", "redemption.requested", "l-1", at, redemption_id="l-r", points=70)
    assert client.post("/v1/events", json=redeem, headers=CHECKOUT).status_code == 201
    client.post("/v1/events", json=_purchase("l-9", "l-1", 1000, at), headers=CHECKOUT)
    every = client.get("/v1/members/l-1/lots?spent=true", headers=READER).json()
    shown = client.get("/v1/members/l-1/lots", headers=READER).json()
    assert shown == [x for x in every if x["remaining"] > 0 or x["status"] == "pending"]
    assert len(shown) < len(every)  # some were spent
    assert [x["lot_id"] for x in every] == sorted(x["lot_id"] for x in every)
    row = ledger.view.balance("l-1")
    assert row is not None
    for later in (timedelta(0), timedelta(days=3), timedelta(days=200)):
        now = clock.now() + later
        assert balance_as_of(row, ledger.view.open_lots("l-1"), now) == balance_as_of(
            row, ledger.view.lots("l-1"), now
        )


def test_verify_catches_a_program_summary_that_drifted(ledger: Ledger, clock: FixedClock) -> None:
    _random_history(ledger, clock, 7)
    assert not [v for v in verify(ledger.app, ledger.view).violations if "summary" in v]
    view: Any = ledger.view
    with view._tx(commit=True) as c:
        view._run(c, f"UPDATE {view.prefix}summary_tiers SET members = members + 1")
    found = verify(ledger.app, ledger.view).violations
    assert [v for v in found if "program summary differs" in v]
