"""A balance as of a past instant: holds and lots as they were, and the lot naming it needs.

The figures over several days, a late (back-dated) event and expiries are in
tests/integration/test_ledger_store.py (both stores); the CLI and the API have their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from services.ledger.application.service import Ledger
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.lots import created_by
from tests.integration.test_ledger_store import PROGRAM, T0, _event, _file, _purchase

DAY = timedelta(days=1)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def ledger(tmp_path: Path, clock: FixedClock) -> Iterator[Ledger]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "l.db")}
    built = build_ledger(program=PROGRAM, clock=clock, env=env)
    yield built
    built.close()


def test_every_lot_is_named_after_the_entry_that_created_it(
    ledger: Ledger, clock: FixedClock
) -> None:
    """`lots_before` leaves out the lots that entries after the instant created, by name."""
    ledger.app.apply_batch(
        [
            _file(_event("e-1", "member.enrolled", "m-1", T0)),
            _file(_purchase("e-2", "m-1", "o-1", 2500), line=2),
            _file(_event("e-3", "referral.qualified", "m-1", T0, referee_member_id="m-2"), 3),
        ]
    )
    clock.set(T0 + 3 * DAY)
    ledger.adjust("m-1", 7, reason="goodwill", actor="ops-1")
    ledger.projection.run()
    rows = {r.seq: r for r in ledger.statement("m-1")}
    lots = ledger.lots("m-1")
    assert len(lots) == 4  # signup, purchase, referral, adjustment
    for lot in lots:
        made = created_by(lot.lot_id)
        assert made is not None
        touching = [
            s for s, r in rows.items() if lot.lot_id in {x["lot_id"] for x in r.body["lots_after"]}
        ]
        assert min(touching) == made, lot
        assert rows[made].entry_type in {"points_earned", "points_adjusted"}
    assert created_by("X9") is None
    assert created_by("L") is None


def test_holds_and_lots_as_they_were(ledger: Ledger, clock: FixedClock) -> None:
    """seq 1 enrolled, 2 signup +5 (day 0); 3 adjustment +40 (day 0); 4 hold 25 (day 1);
    5 capture 15, 10 back (day 2). The hold takes the signup lot first (it expires first)."""
    ledger.app.apply_batch([_file(_event("e-1", "member.enrolled", "m-1", T0))])
    ledger.adjust("m-1", 40, reason="welcome", actor="ops-1")
    clock.set(T0 + DAY)
    hold = ledger.place_hold(
        "m-1", reference="basket-1", points=25, ttl=timedelta(days=30), actor="pos"
    )
    clock.set(T0 + 2 * DAY)
    ledger.capture_hold(hold.result.hold_id, points=15, actor="pos")

    def shown(days: float) -> tuple[int, int, int, dict[int, int]]:
        found = ledger.balance("m-1", T0 + timedelta(days=days))
        assert found is not None
        return found.available, found.held, found.lifetime_earned, found.expiring

    # Both lots expire a month after day 0 (2026-04-02): within 60 days of each instant.
    # Lifetime counts earned points only, not the adjustment.
    assert shown(0.5) == (45, 0, 5, {30: 0, 60: 45, 90: 45})
    assert shown(1.5) == (20, 25, 5, {30: 20, 60: 20, 90: 20})
    assert shown(2.5) == (30, 0, 5, {30: 30, 60: 30, 90: 30})
