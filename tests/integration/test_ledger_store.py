"""The ledger application on a real store: the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from services.ledger.adapters.sql_views import construct_view
from services.ledger.application.ledger import Inbound
from services.ledger.application.projection import LedgerProjection
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)  # a Monday

PROGRAM = Program.model_validate(
    {
        "id": "test",
        "name": "Test",
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
        "earn": {"pending_days": 2},
        "activities": {"signup": {"points": 5}, "review": {"points": 3, "limit": "per_day"}},
        "referral": {"referrer_points": 20, "referee_points": 10},
        "expiry": {"months_after_earn": 1},
        "rewards": {"mug": {"name": "Mug", "points": 30}},
        # These tests are about declines and re-drives: nothing waits (parking is tested
        # in tests/unit/test_determinism_examples.py and the property tests).
        "arrival": {"park_hours": 0},
    }
)


def _event(event_id: str, kind: str, member: str, at: datetime, **data: Any) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "type": kind,
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "member_id": member,
            "data": data,
        }
    ).encode()


def _purchase(event_id: str, member: str, order: str, cents: int, at: datetime = T0) -> bytes:
    return _event(
        event_id,
        "purchase.completed",
        member,
        at,
        order_id=order,
        currency="USD",
        total_minor=cents,
    )


def _file(raw: bytes, line: int = 1) -> Inbound:
    return Inbound(raw, Origin("file", file="test", line=line))


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def ledger(store_env: dict[str, str], clock: FixedClock) -> Iterator[Ledger]:
    built = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    yield built
    built.close()


def _balance(ledger: Ledger, member: str) -> tuple[int, int]:
    ledger.projection.run()
    found = ledger.balance(member)
    assert found is not None
    return found.available, found.pending


def test_every_inbound_type_applies_and_is_explained(ledger: Ledger, clock: FixedClock) -> None:
    outcomes = ledger.app.apply_batch(
        [
            _file(_event("e-enrol", "member.enrolled", "m-1", T0)),
            _file(_purchase("e-buy", "m-1", "o-1", 5000)),
            _file(_event("e-ref", "referral.qualified", "m-1", T0, referee_member_id="m-2")),
            _file(_event("e-rev", "activity.completed", "m-1", T0, activity="review")),
        ]
    )
    assert [o.status for o in outcomes] == ["applied"] * 4
    assert _balance(ledger, "m-1") == (5 + 20 + 3, 50)
    assert _balance(ledger, "m-2") == (10, 0)

    clock.advance(timedelta(days=3))
    outcomes = ledger.app.apply_batch(
        [
            _file(
                _event(
                    "e-refund",
                    "purchase.refunded",
                    "m-1",
                    clock.now(),
                    order_id="o-1",
                    refund_id="r-1",
                    amount_minor=1000,
                )
            ),
            _file(
                _event(
                    "e-red",
                    "redemption.requested",
                    "m-1",
                    clock.now(),
                    redemption_id="x-1",
                    reward_id="mug",
                )
            ),
            _file(_event("e-can", "redemption.cancelled", "m-1", clock.now(), redemption_id="x-1")),
        ]
    )
    assert [o.status for o in outcomes] == ["applied"] * 3
    # 28 + 50 released - 10 refunded; the redemption was cancelled.
    assert _balance(ledger, "m-1") == (68, 0)
    types = [row.entry_type for row in reversed(ledger.statement("m-1"))]
    assert types == [
        "enrolled",
        "points_earned",  # signup
        "points_earned",  # purchase (pending)
        "points_earned",  # referral
        "points_earned",  # review
        "pending_released",
        "points_reversed",
        "points_redeemed",
        "redemption_cancelled",
    ]
    for row in ledger.statement("m-1"):
        assert sum(p["amount"] for p in row.body["postings"]) == 0
    assert verify(ledger.app, ledger.view).ok


def test_resent_event_is_a_duplicate_and_conflicting_payload_is_rejected(ledger: Ledger) -> None:
    first = ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000))])
    again = ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000), line=2)])
    changed = ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 9999), line=3)])
    assert first[0].status == "applied"
    assert again[0].status == "duplicate"
    assert again[0].original == "applied"
    assert again[0].entries == first[0].entries
    assert changed[0].status == "rejected"
    assert changed[0].reason == "conflict"
    assert _balance(ledger, "m-1") == (0, 10)
    reasons = [(r.reason, r.origin.line) for r in ledger.app.rejections()]
    assert reasons == [("conflict", 3)]


def test_a_duplicate_inside_one_batch_counts_once(ledger: Ledger) -> None:
    raw = _purchase("e-1", "m-1", "o-1", 1000)
    outcomes = ledger.app.apply_batch([_file(raw), _file(raw, line=2)])
    assert [o.status for o in outcomes] == ["applied", "duplicate"]
    assert _balance(ledger, "m-1") == (0, 10)


def test_a_declined_event_keeps_its_outcome_and_changes_nothing(ledger: Ledger) -> None:
    outcomes = ledger.app.apply_batch(
        [
            _file(_purchase("e-1", "m-1", "o-1", 1000)),
            _file(_event("e-2", "redemption.requested", "m-1", T0, redemption_id="x", points=500)),
            _file(_event("e-3", "redemption.requested", "m-9", T0, redemption_id="y", points=5)),
        ]
    )
    assert [(o.status, o.reason) for o in outcomes] == [
        ("applied", None),
        ("rejected", "insufficient_points"),
        ("rejected", "unknown_member"),
    ]
    again = ledger.app.apply_batch(
        [_file(_event("e-2", "redemption.requested", "m-1", T0, redemption_id="x", points=500))]
    )
    assert (again[0].status, again[0].original) == ("duplicate", "declined")
    assert ledger.app.find_account("m-9") is None
    assert {r.reason for r in ledger.app.rejections()} == {
        "insufficient_points",
        "unknown_member",
    }


def test_batch_and_its_source_position_are_written_together(ledger: Ledger) -> None:
    key = "kafka:loyalty.purchases.v1:0"
    recorder = ledger.app.process_recorder
    ledger.app.apply_batch(
        [_file(_purchase("e-1", "m-1", "o-1", 1000)), _file(_purchase("e-2", "m-1", "o-2", 500))],
        tracking=Tracking(key, 41),
    )
    assert recorder.max_tracking_id(key) == 41
    # The same position again (a redelivered batch after a crash) is refused as a whole.
    with pytest.raises(IntegrityError):
        ledger.app.apply_batch(
            [_file(_purchase("e-3", "m-1", "o-3", 700))], tracking=Tracking(key, 41)
        )
    assert _balance(ledger, "m-1") == (0, 15)
    assert ledger.app.find_account("m-1") is not None


def test_state_survives_a_restart_and_snapshots(
    store_env: dict[str, str], clock: FixedClock
) -> None:
    first = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    items = [_file(_purchase(f"e-{i}", "m-1", f"o-{i}", 100), line=i) for i in range(250)]
    first.app.apply_batch(items)
    first.close()
    second = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    try:
        account = second.app.find_account("m-1")
        assert account is not None
        assert account.version == 251
        assert account.balance.pending == 250
        assert second.app.snapshots is not None
        assert list(second.app.snapshots.get(account.id))  # snapshots were taken
        assert _balance(second, "m-1") == (0, 250)
        assert verify(second.app, second.view).ok
    finally:
        second.close()


def test_tick_is_idempotent_for_an_instant(ledger: Ledger, clock: FixedClock) -> None:
    ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000))])
    ledger.projection.run()
    at = T0 + timedelta(days=2)
    assert ledger.tick(at) == 1  # released
    assert ledger.tick(at) == 0
    expiry = T0 + timedelta(days=40)
    assert ledger.tick(expiry) == 1  # expired
    assert ledger.tick(expiry) == 0
    assert _balance(ledger, "m-1") == (0, 0)
    assert verify(ledger.app, ledger.view).ok


def test_balance_never_shows_expired_points_before_the_scheduler_runs(
    ledger: Ledger, clock: FixedClock
) -> None:
    ledger.app.apply_batch(
        [_file(_event("e-1", "activity.completed", "m-1", T0, activity="review"))]
    )
    ledger.projection.run()
    later = T0 + timedelta(days=45)
    found = ledger.balance("m-1", later)
    assert found is not None
    assert found.available == 0
    soon = ledger.balance("m-1", T0 + timedelta(days=10))
    assert soon is not None
    assert soon.expiring[30] == 3


def test_balance_as_of_a_past_instant_is_the_balance_then(
    ledger: Ledger, clock: FixedClock
) -> None:
    """Entries on several days, one of them recorded late (back-dated), then expiries.

    seq effective  entry                          balance after (available, pending)
    1   day 0      enrolled                        0,  0
    2   day 0      signup +5 (L2)                  5,  0
    3   day 0      purchase o-1 +50 pending (L3)   5, 50
    4   day 1      review +3 (L4)                  8, 50
    5   day 2      L3 released (made on day 3)    58,  0
    6   day 3      mug -30: L2 5, L3 25           28,  0
    7   day 1 6h   purchase o-2 +20 pending (L7), 28, 20
                   sent on day 5: late, pending
                   until day 3 6h like any other
    8   day 3 6h   L7 released (by the tick)      48,  0
    9   day 31     L3 expires (25)                23,  0
    10  day 32     L4 expires (3)                 20,  0
    11  day 32 6h  L7 expires (20)                 0,  0
    """
    day = timedelta(days=1)
    ledger.app.apply_batch(
        [
            _file(_event("e-enrol", "member.enrolled", "m-1", T0)),
            _file(_purchase("e-1", "m-1", "o-1", 5000), line=2),
        ]
    )
    clock.set(T0 + day)
    ledger.app.apply_batch(
        [_file(_event("e-2", "activity.completed", "m-1", T0 + day, activity="review"), line=3)]
    )
    clock.set(T0 + 3 * day)
    ledger.app.apply_batch(
        [
            _file(
                _event(
                    "e-3",
                    "redemption.requested",
                    "m-1",
                    T0 + 3 * day,
                    redemption_id="x",
                    reward_id="mug",
                ),
                line=4,
            )
        ]
    )
    clock.set(T0 + 5 * day)
    ledger.app.apply_batch(
        [_file(_purchase("e-4", "m-1", "o-2", 2000, at=T0 + day + timedelta(hours=6)), line=5)]
    )
    clock.set(T0 + 40 * day)
    assert ledger.tick() == 4
    rows = {r.seq: r for r in ledger.statement("m-1")}
    assert [rows[s].entry_type for s in sorted(rows)] == [
        "enrolled",
        "points_earned",
        "points_earned",
        "points_earned",
        "pending_released",
        "points_redeemed",
        "points_earned",
        "pending_released",
        "points_expired",
        "points_expired",
        "points_expired",
    ]

    # as of: (available, pending, lifetime, expiring 30/60/90 d, the last entry counted)
    expected = {
        T0 - timedelta(seconds=1): (0, 0, 0, (0, 0, 0), 0),  # before the first entry
        T0: (5, 50, 55, (0, 55, 55), 3),  # L2 and L3 expire on day 31
        # Not the late purchase (effective day 1 6h): the ledger only recorded it after
        # entries effective later (days 2 and 3), so it was not in the ledger then. Its
        # balance-after (48) counts those later entries: it is no balance of this instant.
        T0 + day + timedelta(hours=12): (8, 50, 58, (55, 58, 58), 4),
        T0 + 2 * day + timedelta(hours=12): (58, 0, 58, (58, 58, 58), 5),
        T0 + 4 * day: (48, 0, 78, (48, 48, 48), 8),  # the late purchase, released day 3
        T0 + 31 * day + timedelta(hours=12): (23, 0, 78, (23, 23, 23), 9),
        T0 + 40 * day: (0, 0, 78, (0, 0, 0), 11),  # after the last entry: as now
    }
    for at, (available, pending, lifetime, expiring, seq) in expected.items():
        found = ledger.balance("m-1", at)
        assert found is not None
        shown = (
            found.available,
            found.pending,
            found.lifetime_earned,
            (found.expiring[30], found.expiring[60], found.expiring[90]),
            found.as_of_position,
        )
        position = rows[seq].position if seq else 0
        assert shown == (available, pending, lifetime, expiring, position), at
        assert (found.held, found.as_of, found.entries) == (0, at, seq)
    assert ledger.balance("m-1") == ledger.balance("m-1", clock.now())
    assert ledger.balance("m-nobody", T0) is None


def test_projection_rebuilt_from_zero_equals_the_live_one(ledger: Ledger) -> None:
    ledger.app.apply_batch(
        [_file(_purchase(f"e-{i}", f"m-{i % 3}", f"o-{i}", 100 * i), line=i) for i in range(1, 30)]
    )
    ledger.projection.run()
    ledger.tick(T0 + timedelta(days=5))
    rebuilt = construct_view(ledger.app.factory, prefix="rebuild_")
    LedgerProjection(ledger.app.process_recorder, ledger.app.mapper, rebuilt).run()
    assert rebuilt.all_balances() == ledger.view.all_balances()
    assert rebuilt.all_lots() == ledger.view.all_lots()
    for member in ("m-0", "m-1", "m-2"):
        assert rebuilt.entries(member, limit=100) == ledger.view.entries(member, limit=100)
    ledger.view.reset()
    assert ledger.view.all_balances() == []
    ledger.projection.run()
    assert ledger.view.all_balances() == rebuilt.all_balances()


def test_verify_detects_a_projection_that_drifted(ledger: Ledger) -> None:
    ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000))])
    ledger.projection.run()
    view: Any = ledger.view
    with view._tx(commit=True) as cursor:
        view._run(cursor, f"UPDATE {view.prefix}balances SET pending = pending + 1")
    report = verify(ledger.app, ledger.view)
    assert not report.ok
    assert any("projection shows" in v for v in report.violations)


def test_an_account_cached_by_one_process_and_changed_by_another_is_never_overwritten(
    store_env: dict[str, str], clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ledger process caches the accounts it wrote. A batch first brings its cached
    copies up to the store, so one that another process wrote meanwhile is applied on top of
    the other's entry. One written after that check is not saved either: the batch fails as
    a whole, the account leaves the cache, and the same batch applied again sees the entry."""
    first = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    second = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    try:
        first.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000))])  # cached by first
        second.app.apply_batch([_file(_purchase("e-2", "m-1", "o-2", 500))])
        outcomes = first.app.apply_batch([_file(_purchase("e-3", "m-1", "o-3", 700))])
        assert [o.status for o in outcomes] == ["applied"]
        assert _balance(first, "m-1") == (0, 22)

        checked = first.app._prefetch

        def then_written_by_second(*args: Any) -> None:
            checked(*args)
            second.app.apply_batch([_file(_purchase("e-4", "m-1", "o-4", 300))])

        monkeypatch.setattr(first.app, "_prefetch", then_written_by_second)
        retry = [
            _file(_purchase("e-5", "m-1", "o-5", 400)),
            _file(_purchase("e-6", "m-2", "o-6", 100)),
        ]
        with pytest.raises(IntegrityError):
            first.app.apply_batch(retry)
        monkeypatch.undo()
        outcomes = first.app.apply_batch(retry)
        assert [o.status for o in outcomes] == ["applied", "applied"]
        assert _balance(first, "m-1") == (0, 29)
        assert _balance(first, "m-2") == (0, 1)
        assert verify(first.app, first.view).ok
    finally:
        first.close()
        second.close()


def test_a_failed_batch_leaves_no_trace_in_the_cache(ledger: Ledger) -> None:
    """An account changed in memory by a batch that was not saved is read again from the store."""
    key = "kafka:loyalty.purchases.v1:0"
    ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000))], Tracking(key, 5))
    with pytest.raises(IntegrityError):
        ledger.app.apply_batch([_file(_purchase("e-2", "m-1", "o-2", 500))], Tracking(key, 5))
    ledger.app.apply_batch([_file(_purchase("e-3", "m-1", "o-3", 300))], Tracking(key, 6))
    account = ledger.app.find_account("m-1")
    assert account is not None
    assert account.balance.pending == 13
    assert _balance(ledger, "m-1") == (0, 13)
    assert verify(ledger.app, ledger.view).ok


def test_a_redemption_that_overtook_its_purchase_is_redriven_once(ledger: Ledger) -> None:
    """Topics are not ordered with each other: a redemption can arrive before the purchase
    that funds it. It is declined and dead-lettered; once the points are there, a re-drive
    applies it, exactly once, and a later re-send is a duplicate of the applied event."""
    redeem = _event("e-red", "redemption.requested", "m-1", T0, redemption_id="r1", points=8)
    broken = b'{"event_id": "e-bad",'
    ledger.app.apply_batch([_file(_event("e-0", "member.enrolled", "m-1", T0))])
    first = ledger.app.apply_batch([_file(redeem, line=2), _file(broken, line=3)])
    assert [o.reason for o in first] == ["insufficient_points", "not_json"]
    # Nothing to re-drive into yet: declined again, and recorded as such.
    again = ledger.app.redrive(actor="ops-ana", reasons=["insufficient_points"])
    assert [(r.event_id, r.outcome) for r in again] == [("e-red", "declined")]
    ledger.app.apply_batch(
        [_file(_event("e-adj", "activity.completed", "m-1", T0, activity="review"))]
    )
    assert _balance(ledger, "m-1") == (8, 0)  # signup 5 + review 3

    results = ledger.app.redrive(actor="ops-ana")
    assert [(r.event_id, r.outcome) for r in results] == [("e-red", "applied"), (None, "skipped")]
    assert _balance(ledger, "m-1") == (0, 0)
    assert ledger.app.redrive(actor="ops-ana", reasons=["insufficient_points"]) == []
    resent = ledger.app.apply_batch([_file(redeem, line=9)])
    assert resent[0].status == "duplicate"
    assert resent[0].original == "applied"
    assert _balance(ledger, "m-1") == (0, 0)
    redeemed = [r for r in ledger.statement("m-1") if r.entry_type == "points_redeemed"]
    assert len(redeemed) == 1
    assert redeemed[0].body["provenance"]["origin"]["actor"] == "ops-ana"
    rejection = next(r for r in ledger.app.rejections() if r.event_id == "e-red")
    assert [outcome for _, outcome, _ in rejection.redriven] == ["declined", "applied"]
    assert verify(ledger.app, ledger.view).ok


def test_a_conflicting_payload_is_never_redriven(ledger: Ledger) -> None:
    ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000))])
    clash = ledger.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 99999), line=2)])
    assert clash[0].reason == "conflict"
    results = ledger.app.redrive(actor="ops")
    assert [(r.event_id, r.outcome) for r in results] == [("e-1", "skipped")]
    assert _balance(ledger, "m-1") == (0, 10)


def test_processes_starting_at_once_on_a_fresh_store_all_come_up(
    store_env: dict[str, str], clock: FixedClock
) -> None:
    """Two `serve` processes started together on a new database race to create the tables
    and record the program; neither may fail for it."""
    import threading

    built: list[Ledger] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def start() -> None:
        gate.wait()
        try:
            built.append(build_ledger(program=PROGRAM, clock=clock, env=store_env))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not errors, errors
        assert len(built) == 4
        built[0].app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 1000))])
        assert _balance(built[1], "m-1") == (0, 10)
    finally:
        for ledger in built:
            ledger.close()


def test_projectors_running_at_once_never_deadlock_and_agree(
    store_env: dict[str, str], clock: FixedClock
) -> None:
    """Several processes may project the same store at once (two `serve`s, `verify` while one
    serves). With different batch sizes their batches overlap in different member orders;
    none may fail, and the view must equal a fresh fold of the ledger."""
    import random
    import threading

    writer = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    rng = random.Random(7)
    members = [f"m-{n}" for n in range(150)]
    batch = [
        _file(_purchase(f"e-{n}", rng.choice(members), f"o-{n}", 100 + n), line=n)
        for n in range(1200)
    ]
    for start in range(0, len(batch), 300):
        writer.app.apply_batch(batch[start : start + 300])
    readers = [build_ledger(program=PROGRAM, clock=clock, env=store_env) for _ in range(4)]
    errors: list[BaseException] = []
    gate = threading.Barrier(len(readers))

    def project(ledger: Ledger, size: int) -> None:
        gate.wait()
        try:
            ledger.projection.run(batch_size=size)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=project, args=(r, size))
        for r, size in zip(readers, (13, 97, 500, 1000), strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        report = verify(writer.app, writer.view)
        assert report.ok, report.violations
        assert len(writer.view.all_entries()) == 1200 + len(set(members))  # + enrolments
    finally:
        for ledger in [writer, *readers]:
            ledger.close()
