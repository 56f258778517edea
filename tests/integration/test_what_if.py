"""What-if on a real store: the same program changes nothing; another one posts its
difference once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from services.ledger.application import what_if as what_if_module
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.application.what_if import what_if
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Arrival, Program
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
    """m-1 earns 60 points and reaches Gold at once (the ledger decides inline), then earns
    10 points more at x2."""
    built = build_ledger(program=TIERED, clock=clock, env=store_env)
    built.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 6000))])
    account = built.app.find_account("m-1")
    assert account is not None
    assert account.tier == "gold"
    clock.advance(timedelta(hours=1))
    built.app.apply_batch([_file(_purchase("e-2", "m-1", "o-2", 1000, T0 + timedelta(hours=1)))])
    built.projection.run()
    yield built
    built.close()


def test_tiers_are_decided_again_under_the_other_program(tiered: Ledger) -> None:
    # Under its own program, the replay decides exactly what was recorded.
    same = what_if(tiered, TIERED)
    assert same.tiers_recomputed
    assert same.tier_changes == 2  # base on the first entry, then gold
    assert same.replayed_operations == 0  # the ledger's own tier entries are decided again
    assert [(d.actual, d.difference) for d in same.members] == [(60 + 20, 0)]

    # With Gold out of reach, the second purchase would have earned at x1.
    raised = what_if(tiered, GOLD_AT_1000)
    assert raised.tier_changes == 1  # base only
    (diff,) = raised.members
    assert (diff.actual, diff.would_have, diff.difference) == (80, 70, -10)

    applied = what_if(tiered, GOLD_AT_1000, apply=True)
    assert len(applied.posted) == 1
    again = what_if(tiered, GOLD_AT_1000, apply=True)
    assert again.posted == []
    assert [d.difference for d in again.members] == [0]
    assert verify(tiered.app, tiered.view).ok


def test_ops_overrides_are_replayed_with_their_end_and_lock(
    tiered: Ledger, clock: FixedClock
) -> None:
    # Locked at base for 30 days: the next purchase earns at x1 although the window is 80.
    tiered.app.assign_tier(
        "m-1",
        "base",
        reason="fraud check",
        actor="ops-1",
        until=T0 + timedelta(days=30),
        locked=True,
    )
    clock.advance(timedelta(hours=1))
    later = T0 + timedelta(hours=2)
    tiered.app.apply_batch([_file(_purchase("e-3", "m-1", "o-3", 1000, later))])
    clock.set(T0 + timedelta(days=30, hours=1))  # before the points expire (a month)
    tiered.app.advance_members(["m-1"], clock.now())  # the override ends: gold again
    account = tiered.app.find_account("m-1")
    assert account is not None
    assert (account.tier, account.tier_locked, account.lifetime_earned) == ("gold", False, 90)
    tiered.projection.run()

    report = what_if(tiered, TIERED)
    assert report.skipped == []
    assert report.replayed_operations == 1  # the override, with its end and its lock
    assert report.tier_changes == 4  # base, gold, base (override), gold (override ended)
    assert [(d.actual, d.difference) for d in report.members] == [(90, 0)]


class _StoreReads:
    """Counts the stored events the ledger's event store hands out, however they are read:
    the notification log (the whole-ledger replay) and reads by aggregate id."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events = 0
        recorder = ledger.app.process_recorder
        for name in ("select_notifications", "select_events"):
            monkeypatch.setattr(recorder, name, self._counting(getattr(recorder, name)))
        positioned = getattr(what_if_module, "select_positioned", None)
        if positioned is not None:
            monkeypatch.setattr(what_if_module, "select_positioned", self._counting(positioned))

    def _counting(self, read: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            found = list(read(*args, **kwargs))
            self.events += len(found)
            return found

        return counted


def test_one_members_what_if_reads_only_that_members_history(
    ledger: Ledger, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost of a one-member run is the member's: the store is 10 times larger the second
    time, and the run reads exactly as many stored events (and finds the same difference
    as the all-members run)."""
    ledger.projection.run()
    reads = _StoreReads(ledger, monkeypatch)
    small = what_if(ledger, DOUBLE, member="m-1")
    read_small, reads.events = reads.events, 0
    (diff,) = small.members
    assert (diff.actual, diff.difference) == (38, 50)
    assert small.replayed_events == 2  # m-1's purchase and activity, not m-2's purchase
    assert small.replayed_operations == 2  # the hold placed and captured, not m-2's adjustment
    # m-1's account (enrolled, earned x2, released x2, hold placed, captured) and the two
    # receipts its entries came from
    assert 0 < read_small <= 12

    monkeypatch.undo()
    for n in range(30):
        member = f"m-other-{n}"
        ledger.app.apply_batch(
            [
                _file(_purchase(f"x-{n}-1", member, f"ox-{n}-1", 1000 + n, clock.now())),
                _file(_purchase(f"x-{n}-2", member, f"ox-{n}-2", 700, clock.now())),
            ]
        )
    ledger.projection.run()
    everyone = what_if(ledger, DOUBLE)
    reads = _StoreReads(ledger, monkeypatch)
    large = what_if(ledger, DOUBLE, member="m-1")
    assert reads.events == read_small
    assert large.members == small.members
    assert [d for d in everyone.members if d.member_id == "m-1"] == small.members


def test_one_members_run_agrees_with_the_all_members_run(
    store_env: dict[str, str], clock: FixedClock
) -> None:
    """Parked events, referrals (a referral's two members, and a later-arriving earlier
    referral that takes the first one's bonus back), holds and adjustments: each member's
    own run finds what the all-members run finds for that member."""
    waiting = PROGRAM.model_copy(update={"arrival": Arrival()})
    double = DOUBLE.model_copy(update={"arrival": Arrival()})
    built = build_ledger(program=waiting, clock=clock, env=store_env)
    try:
        built.app.apply_batch(
            [
                _file(_purchase("e-1", "m-1", "o-1", 5000)),
                _file(_purchase("e-2", "m-2", "o-2", 2000)),
                _file(_event("e-ref", "referral.qualified", "m-3", T0, referee_member_id="m-2")),
            ]
        )
        earlier = T0 - timedelta(minutes=1)  # arrives later, happened first: it wins
        built.app.apply_batch(
            [_file(_event("e-ref0", "referral.qualified", "m-1", earlier, referee_member_id="m-2"))]
        )
        clock.advance(timedelta(days=2, hours=1))
        built.tick()
        redeem = _event(
            "e-r", "redemption.requested", "m-4", clock.now(), redemption_id="r-1", points=30
        )
        assert built.app.apply_batch([_file(redeem)])[0].status == "parked"  # m-4 unknown yet
        # m-4's purchase, two days late: the parked redemption, retried, spends its points
        built.app.apply_batch([_file(_purchase("e-4", "m-4", "o-4", 5000))])
        # 60 more than m-4 has left (20): parked; under the other program (x2) it would fit
        more = _event(
            "e-r2", "redemption.requested", "m-4", clock.now(), redemption_id="r-2", points=60
        )
        assert built.app.apply_batch([_file(more)])[0].status == "parked"
        built.adjust("m-2", 7, reason="goodwill", actor="ops-1")
        built.projection.run()
        kinds = {
            m: {r.body["entry_type"] for r in built.statement(m, limit=50)} for m in ("m-3", "m-4")
        }
        assert "referral_reversed" in kinds["m-3"]
        # Only the displaced referral had enrolled m-3: no member any more, as in time order.
        assert "enrolment_undone" in kinds["m-3"]
        assert "points_redeemed" in kinds["m-4"], kinds
        everyone = {d.member_id: d for d in what_if(built, double).members}
        assert set(everyone) == {"m-1", "m-2", "m-4"}
        assert what_if(built, double, member="m-3").members == []
        assert any(d.difference != 0 for d in everyone.values())
        for member, diff in everyone.items():
            assert what_if(built, double, member=member).members == [diff], member
    finally:
        built.close()
