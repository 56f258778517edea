"""What-if on a real store: the same program changes nothing; another one posts its
difference once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.application.what_if import what_if
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from services.tiers.embedded import tier_decider
from tests.integration.test_ledger_store import PROGRAM, T0, _event, _file, _purchase

DOUBLE = Program.model_validate(
    {
        **PROGRAM.model_dump(mode="json"),
        "currencies": {"USD": {"minor_units": 2, "points_per_unit": "2"}},
    }
)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def ledger(store_env: dict[str, str], clock: FixedClock) -> Iterator[Ledger]:
    built = build_ledger(program=PROGRAM, clock=clock, env=store_env)
    built.app.apply_batch(
        [
            _file(_purchase("e-1", "m-1", "o-1", 5000)),
            _file(_purchase("e-2", "m-2", "o-2", 2000)),
            _file(_event("e-3", "activity.completed", "m-1", T0, activity="review")),
        ]
    )
    clock.advance(timedelta(days=3))
    built.tick()
    built.adjust("m-2", 7, reason="goodwill", actor="ops-1")
    hold = built.place_hold("m-1", reference="c", points=20, ttl=timedelta(hours=1), actor="pos")
    built.capture_hold(hold.result.hold_id, points=15, actor="pos")
    yield built
    built.close()


def test_the_same_program_recomputes_every_balance_exactly(ledger: Ledger) -> None:
    report = what_if(ledger, PROGRAM)
    assert report.skipped == []
    assert report.replayed_events == 3
    assert report.replayed_operations == 3  # adjustment, hold placed, hold captured
    assert {d.member_id: (d.actual, d.difference) for d in report.members} == {
        "m-1": (50 + 3 - 15, 0),
        "m-2": (20 + 7, 0),
    }


def test_another_program_shows_the_difference_and_posts_it_once(ledger: Ledger) -> None:
    report = what_if(ledger, DOUBLE, member="m-1")
    (diff,) = report.members
    assert (diff.actual, diff.would_have, diff.difference) == (38, 100 + 3 - 15, 50)
    assert diff.would_have_lifetime - diff.actual_lifetime == 50
    assert report.posted == []

    applied = what_if(ledger, DOUBLE, member="m-1", apply=True)
    assert len(applied.posted) == 1
    balance = ledger.balance("m-1")
    assert balance is not None
    assert balance.available == 88
    entry = ledger.statement("m-1", limit=1)[0].body
    assert entry["provenance"]["origin"]["request_id"] == f"what-if:{applied.run_id}"

    again = what_if(ledger, DOUBLE, member="m-1", apply=True)
    assert again.posted == []
    assert [d.difference for d in again.members] == [0]
    assert verify(ledger.app, ledger.view).ok


TIERED = Program.model_validate(
    {
        **PROGRAM.model_dump(mode="json", exclude={"tiers", "tier_qualification"}),
        "tiers": [
            {"id": "base", "name": "Base", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 50, "earn_multiplier": "2"},
        ],
        "tier_qualification": {"basis": "points", "window": "calendar_year"},
    }
)
GOLD_AT_1000 = Program.model_validate(
    {
        **TIERED.model_dump(mode="json"),
        "tiers": [
            {"id": "base", "name": "Base", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 1000, "earn_multiplier": "2"},
        ],
    }
)


@pytest.fixture
def tiered(store_env: dict[str, str], clock: FixedClock) -> Iterator[Ledger]:
    """m-1 earns 60 points, reaches Gold (decided in-process, as in embedded mode), then
    earns 10 points more at x2."""
    built = build_ledger(program=TIERED, clock=clock, env=store_env)
    decide = tier_decider(built.app)
    built.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 6000))])
    assert decide(None) == 2  # base on the first entry, then gold
    clock.advance(timedelta(hours=1))
    built.app.apply_batch([_file(_purchase("e-2", "m-1", "o-2", 1000, T0 + timedelta(hours=1)))])
    built.projection.run()
    yield built
    built.close()


def test_tiers_are_decided_again_under_the_other_program(tiered: Ledger) -> None:
    # Under its own program, deciding tiers again gives back exactly what was recorded.
    same = what_if(tiered, TIERED, tiers=tier_decider)
    assert same.tiers_recomputed
    assert same.tier_changes == 2
    assert [(d.actual, d.difference) for d in same.members] == [(60 + 20, 0)]

    # With Gold out of reach, the second purchase would have earned at x1.
    raised = what_if(tiered, GOLD_AT_1000, tiers=tier_decider)
    assert raised.tier_changes == 1  # base only
    (diff,) = raised.members
    assert (diff.actual, diff.would_have, diff.difference) == (80, 70, -10)

    # Replaying the recorded tier changes instead keeps Gold, so it shows no difference.
    recorded = what_if(tiered, GOLD_AT_1000)
    assert not recorded.tiers_recomputed
    assert recorded.tier_changes == 2
    assert [d.difference for d in recorded.members] == [0]
    assert recorded.run_id != raised.run_id

    applied = what_if(tiered, GOLD_AT_1000, tiers=tier_decider, apply=True)
    assert len(applied.posted) == 1
    again = what_if(tiered, GOLD_AT_1000, tiers=tier_decider, apply=True)
    assert again.posted == []
    assert [d.difference for d in again.members] == [0]
    assert verify(tiered.app, tiered.view).ok
