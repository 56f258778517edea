"""verify's replay check: every entry made again from the receipts and operations.

Figures by hand: the program earns 1 point per dollar, then 2 after it changes; the replay
must earn each purchase under the version that applied it (10 then 40), and a store where
an entry was written without its input (a bug applying an earn twice, say) is a violation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.ledger.application import commands
from services.ledger.application.replay_check import replay_check
from services.ledger.application.verify import verify
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin, Provenance
from tests.support.histories import (
    activity,
    apply_at,
    cancellation,
    file_item,
    open_ledger,
    purchase,
    redemption,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def program(rate: str) -> Program:
    document: dict[str, Any] = {
        "id": "replay",
        "name": "Replay",
        "timezone": "UTC",
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": rate}},
        "earn": {"pending_days": 2},
        "activities": {"review": {"points": 5, "limit": "per_day"}},
        "expiry": {"months_after_earn": 1},
    }
    return Program.model_validate(document)


def test_a_store_written_under_two_program_versions_replays_clean(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    ledger = open_ledger(tmp_path, program("1"), clock)
    apply_at(
        ledger,
        clock,
        T0,
        [file_item(purchase("e1", "m-1", T0, order_id="o1", total_minor=1000), 1)],
    )
    ledger.close()
    later = T0 + timedelta(days=3)
    ledger = open_ledger(tmp_path, program("2"), clock)
    try:
        apply_at(
            ledger,
            clock,
            later,
            [file_item(purchase("e2", "m-1", later, order_id="o2", total_minor=2000), 2)],
        )
        ledger.projection.run()
        earned = [
            row.body["points"]
            for row in ledger.statement("m-1", limit=100)
            if row.entry_type == "points_earned"
        ]
        assert sorted(earned) == [10, 40]  # each under the version that applied it
        ledger.projection.run()
        report = verify(ledger.app, ledger.view)
        assert report.ok, report.violations
        assert report.replayed_events == 2
    finally:
        ledger.close()


def test_scheduler_work_and_late_events_replay_in_place(tmp_path: Path) -> None:
    """The scheduler releases and expires between events; a late event (dated before that
    work) and an adjustment follow: the replay makes every entry again, in place."""
    clock = FixedClock(T0)
    ledger = open_ledger(tmp_path, program("1"), clock)
    try:
        apply_at(
            ledger,
            clock,
            T0,
            [file_item(purchase("e1", "m-1", T0, order_id="o1", total_minor=5000), 1)],
        )
        clock.set(T0 + timedelta(days=40))
        ledger.app.advance_members(["m-1"], clock.now())  # released, then expired
        late = T0 + timedelta(days=10)
        apply_at(
            ledger,
            clock,
            clock.now(),
            [file_item(redemption("e2", "m-1", late, redemption_id="x1", points=20), 2)],
        )
        apply_at(
            ledger,
            clock,
            clock.now(),
            [file_item(activity("e3", "m-1", clock.now(), name="review"), 3)],
        )
        commands.adjust(ledger.app, "m-1", 7, reason="goodwill", actor="ops")
        ledger.projection.run()
        report = verify(ledger.app, ledger.view)
        assert report.ok, report.violations
        assert (report.replayed_events, report.replayed_operations) == (3, 1)
    finally:
        ledger.close()


def test_an_entry_no_input_explains_is_a_violation(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    ledger = open_ledger(tmp_path, program("1"), clock)
    try:
        apply_at(ledger, clock, T0, [file_item(activity("e1", "m-1", T0, name="review"), 1)])
        ledger.projection.run()
        assert verify(ledger.app, ledger.view).ok
        # A bug that applies the same activity again without a receipt of its own.
        account = ledger.app.find_account("m-1")
        assert account is not None
        account.earn_activity(
            ledger.app.program,
            activity="review",
            reference=None,
            occurred_at=T0 + timedelta(days=1),
            provenance=Provenance(Origin("file", file="x", line=1), event_id="e1"),
            now=T0 + timedelta(days=1),
        )
        ledger.app.save(account)
        ledger.projection.run()
        report = verify(ledger.app, ledger.view)
        assert any(v.startswith("replay: m-1#3: stored PointsEarned") for v in report.violations), (
            report.violations
        )
    finally:
        ledger.close()


def parking_program() -> Program:
    return Program.model_validate(
        {
            "id": "replay-parking",
            "name": "Replay parking",
            "timezone": "UTC",
            "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
            "arrival": {"park_hours": 72},
        }
    )


def test_parked_events_settled_by_a_retry_and_at_their_deadline_replay_clean(
    tmp_path: Path,
) -> None:
    """m-1: a redemption and two cancellations of it wait for the member; the purchase that
    arrives applies the redemption and the first cancellation, and declines the second on
    that retry. m-2: a redemption that waits past its deadline is declined by the scheduler."""
    clock = FixedClock(T0)
    ledger = open_ledger(tmp_path, parking_program(), clock)
    later = T0 + timedelta(days=2)
    events = [
        redemption("p1", "m-1", T0, redemption_id="x1", points=11),
        redemption("p2", "m-2", T0, redemption_id="y1", points=5),
        cancellation("p3", "m-1", later - timedelta(minutes=2), redemption_id="x1"),
        cancellation("p4", "m-1", later - timedelta(minutes=1), redemption_id="x1"),
        purchase("p5", "m-1", later, order_id="o1", total_minor=1100),
    ]
    try:
        for line, event in enumerate(events, 1):
            apply_at(ledger, clock, event.occurred_at, [file_item(event, line)])
        apply_at(
            ledger,
            clock,
            later,
            [file_item(purchase("p6", "m-2", later, order_id="o2", total_minor=100), 6)],
        )
        ledger.tick(T0 + timedelta(days=4))  # y1's deadline has passed: declined
        assert [p.event_id for _, p in ledger.app.parked()] == []
        late = T0 + timedelta(days=5)  # funds y1 had it still waited: it must not apply
        apply_at(
            ledger,
            clock,
            late,
            [file_item(purchase("p7", "m-2", late, order_id="o3", total_minor=1000), 7)],
        )
        assert ledger.app.find_account("m-2").balance.available == 11  # type: ignore[union-attr]
        ledger.projection.run()
        report = verify(ledger.app, ledger.view)
        assert report.ok, report.violations
    finally:
        ledger.close()


def test_the_replay_check_reports_the_same_whether_it_reads_the_accounts_or_is_given_them(
    tmp_path: Path,
) -> None:
    """verify hands the replay check the stored accounts its own fold read (one read of each
    account); alone, the check reads them itself. The two paths report the same, and a
    store with an entry no input explains is caught by both, down to the final balance."""
    clock = FixedClock(T0)
    ledger = open_ledger(tmp_path, program("1"), clock)
    try:
        apply_at(ledger, clock, T0, [file_item(activity("e1", "m-1", T0, name="review"), 1)])
        apply_at(ledger, clock, T0, [file_item(activity("e2", "m-2", T0, name="review"), 2)])
        account = ledger.app.find_account("m-1")
        assert account is not None
        account.earn_activity(
            ledger.app.program,
            activity="review",
            reference=None,
            occurred_at=T0 + timedelta(days=1),
            provenance=Provenance(Origin("file", file="x", line=1), event_id="e1"),
            now=T0 + timedelta(days=1),
        )
        ledger.app.save(account)
        ledger.projection.run()
        alone = replay_check(ledger.app)
        given = verify(ledger.app, ledger.view)
        assert [f"replay: {v}" for v in alone.violations] == [
            v for v in given.violations if v.startswith("replay: ")
        ]
        assert (alone.events, alone.operations) == (
            given.replayed_events,
            given.replayed_operations,
        )
        assert any(v.startswith("m-1#3: stored PointsEarned") for v in alone.violations)
        assert any(v.startswith("m-1: stored balance") for v in alone.violations), alone.violations
        assert not any(v.startswith("m-2") for v in alone.violations)
    finally:
        ledger.close()
