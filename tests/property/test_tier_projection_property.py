"""The tiers projection follows the ledger: for random histories applied by a real (in-memory)
ledger, which decides tiers inline, the projection's state per member is the account's tier
state, its tier.changed messages are the ledger's tier changes, a redelivered entry changes
nothing, and the check that re-decides the ledger's decisions finds nothing to report."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import TOPIC_TIERS
from schemas.tiers import TierChanged
from services.ledger.application.ledger import Inbound, LedgerApplication
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.errors import Declined
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin
from services.ledger.domain.tier_policy import progress
from services.tiers.history import ledger_entries
from services.tiers.processor import TierProcessor
from services.tiers.rebuild import account_tier_state, tier_differences

START = datetime(2026, 1, 5, 12, tzinfo=UTC)
MEMBERS = ("m-1", "m-2")


def program(basis: str, window: str, grace: int, downgrade: str) -> Program:
    scale = 1 if basis == "points" else 100  # spend is in cents
    return Program.model_validate(
        {
            "id": "shop",
            "name": "Shop",
            "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
            "tiers": [
                {"id": "bronze", "name": "Bronze", "threshold": 0},
                {"id": "silver", "name": "Silver", "threshold": 300 * scale},
                {"id": "gold", "name": "Gold", "threshold": 900 * scale, "earn_multiplier": "2"},
            ],
            "tier_qualification": {
                "basis": basis,
                "window": window,
                "months": 4,
                "grace_days": grace,
                "downgrade": downgrade,
            },
        }
    )


programs = st.builds(
    program,
    st.sampled_from(["points", "spend"]),
    st.sampled_from(["rolling_months", "calendar_year"]),
    st.sampled_from([0, 10]),
    st.sampled_from(["to_qualified", "one_level"]),
)
step = st.tuples(
    st.integers(0, 60),  # days since the previous step
    st.sampled_from(MEMBERS),
    st.sampled_from(["buy", "buy", "buy", "refund", "override", "tick"]),
    st.integers(20, 400),  # dollars, or days an override lasts
    st.sampled_from(["bronze", "silver", "gold"]),
    st.booleans(),  # override locked / override without an end
)


def _event(n: int, kind: str, member: str, at: datetime, **data: object) -> Inbound:
    body = {"event_id": f"e-{n}", "type": kind, "occurred_at": at.isoformat(), "member_id": member}
    return Inbound(json.dumps({**body, "data": data}).encode(), Origin("file"))


def run_ledger(
    prog: Program, steps: list[tuple[int, str, str, int, str, bool]]
) -> LedgerApplication:
    clock = FixedClock(START)
    app = LedgerApplication(prog, clock, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    orders: dict[str, list[tuple[str, int]]] = {}
    for n, (gap, member, kind, amount, tier, flag) in enumerate(steps):
        clock.advance(timedelta(days=gap, hours=n % 5))
        at = clock.now()
        if kind == "buy":
            orders.setdefault(member, []).append((f"o-{n}", amount * 100))
            app.apply_batch(
                [
                    _event(
                        n,
                        "purchase.completed",
                        member,
                        at,
                        order_id=f"o-{n}",
                        currency="USD",
                        total_minor=amount * 100,
                    )
                ]
            )
        elif kind == "refund" and orders.get(member):
            order, cents = orders[member][n % len(orders[member])]
            app.apply_batch(
                [
                    _event(
                        n,
                        "purchase.refunded",
                        member,
                        at,
                        order_id=order,
                        refund_id=f"r-{n}",
                        amount_minor=max(1, cents // 4),
                    )
                ]
            )
        elif kind == "override" and app.find_account(member) is not None:
            until = None if flag else at + timedelta(days=amount)
            with contextlib.suppress(Declined):  # already in that tier
                app.assign_tier(member, tier, reason="ops", actor="ops-1", until=until, locked=flag)
        else:
            app.advance_members(MEMBERS, at)
    clock.advance(timedelta(days=800))
    app.advance_members(MEMBERS, clock.now())  # every review due by then
    return app


@settings(max_examples=int(os.environ.get("LOYALTY_MODEL_EXAMPLES", "40")), deadline=None)
@given(prog=programs, steps=st.lists(step, min_size=1, max_size=25))
def test_the_projection_follows_the_ledger_and_the_check_agrees(
    prog: Program, steps: list[tuple[int, str, str, int, str, bool]]
) -> None:
    app = run_ledger(prog, steps)
    entries = list(ledger_entries(app))
    processor = TierProcessor(prog, {})
    published: list[TierChanged] = []
    for entry in entries:
        raw = entry.model_dump_json().encode()
        state, out = processor.on_entry(raw)
        if state is not None:
            processor.save(state)
        published += [TierChanged.model_validate_json(v) for t, _, v in out if t == TOPIC_TIERS]
        assert processor.on_entry(raw) == (None, [])  # redelivered: nothing changes

    now = app.clock.now()
    for member in MEMBERS:
        recorded = account_tier_state(app, member)
        if recorded is None:
            continue
        followed = processor.state(member)
        assert (
            followed.tier,
            followed.period_end,
            followed.held_until,
            followed.override_until,
            followed.locked,
        ) == (
            recorded.tier,
            recorded.period_end,
            recorded.held_until,
            recorded.override_until,
            recorded.locked,
        )
        assert progress(prog, followed, now) == progress(prog, recorded, now)

    changes = [
        (e.member_id, e.details["previous"], e.details["tier"], e.position)
        for e in entries
        if e.entry_type == "tier_assigned" and e.details["tier"] != e.details["previous"]
    ]
    assert [(m.member_id, m.data.from_tier, m.data.to_tier, m.event_id) for m in published] == [
        (m, was, to, f"tier:{m}:{to}:p{p}") for m, was, to, p in changes
    ]
    assert tier_differences(app) == []
