"""Live tier state (redeliveries, timer ticks, restarts from the stored table) equals a
recomputation from the full history, for random histories and programs."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.domain.program import Program
from services.ledger.domain.tier_policy import (
    Fact,
    TierDecision,
    TierState,
    advance,
    apply,
    recompute,
)
from services.tiers.codec import decode_state, encode_state

M = "m-1"
START = datetime(2026, 1, 1, tzinfo=UTC)


def program(basis: str, window: str, grace: int, downgrade: str) -> Program:
    return Program.model_validate(
        {
            "id": "shop",
            "name": "Shop",
            "currencies": {"USD": {"minor_units": 2, "points_per_unit": "1"}},
            "tiers": [
                {"id": "bronze", "name": "Bronze", "threshold": 0},
                {"id": "silver", "name": "Silver", "threshold": 500},
                {"id": "gold", "name": "Gold", "threshold": 2000},
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
    st.sampled_from(["rolling_months", "calendar_year", "rolling_12_months"]),
    st.sampled_from([0, 10, 45]),
    st.sampled_from(["to_qualified", "one_level"]),
)

step = st.tuples(
    st.integers(0, 120),  # days since the previous entry
    st.sampled_from(["earn", "earn", "earn", "reverse", "override", "other"]),
    st.integers(1, 1500),  # points / spend
    st.sampled_from(["bronze", "silver", "gold"]),
    st.booleans(),  # override locked
    st.one_of(st.none(), st.integers(1, 300)),  # override lasts (days)
    st.booleans(),  # deliver twice
    st.one_of(st.none(), st.integers(0, 120)),  # a timer tick before the next entry (days)
    st.booleans(),  # restart: reload the state from its stored form
)


def history(steps: list[tuple[int, str, int, str, bool, int | None, bool, int | None, bool]]):  # type: ignore[no-untyped-def]
    when = START
    refunded: dict[str, int] = {}
    facts: list[tuple[Fact, bool, int | None, bool]] = []
    for position, (gap, kind, amount, tier, locked, lasts, twice, tick, restart) in enumerate(
        steps, start=1
    ):
        when += timedelta(days=gap, hours=position % 7)
        order = f"o{position % 3}"
        if kind == "earn":
            fact = Fact(
                position, M, when, "earn", points=amount, spend_minor=amount, order_id=order
            )
        elif kind == "reverse":
            refunded[order] = refunded.get(order, 0) + amount
            fact = Fact(
                position, M, when, "reverse", amount, spend_minor=refunded[order], order_id=order
            )
        elif kind == "override":
            until = when + timedelta(days=lasts) if lasts is not None else None
            fact = Fact(position, M, when, "override", tier=tier, until=until, locked=locked)
        else:
            fact = Fact(position, M, when)
        facts.append((fact, twice, tick, restart))
    return facts


@settings(max_examples=150, deadline=None)
@given(prog=programs, steps=st.lists(step, min_size=1, max_size=30), tail=st.integers(0, 800))
def test_live_state_equals_recomputation_from_the_full_history(
    prog: Program,
    steps: list[tuple[int, str, int, str, bool, int | None, bool, int | None, bool]],
    tail: int,
) -> None:
    facts = history(steps)
    now = facts[-1][0].at + timedelta(days=tail)
    state = TierState(M)
    live: list[TierDecision] = []
    for i, (fact, twice, tick, restart) in enumerate(facts):
        for _ in range(2 if twice else 1):
            state, made = apply(prog, state, fact)
            live += made
        if restart:
            state = decode_state(json.loads(json.dumps(encode_state(state))))
        if tick is not None:
            following = facts[i + 1][0].at if i + 1 < len(facts) else now
            instant = fact.at + timedelta(days=tick)
            if instant <= following:
                state, made = advance(prog, state, instant)
                live += made
                state, again = advance(prog, state, instant)  # a timer firing twice
                assert again == []
    state, made = advance(prog, state, now)
    live += made

    rebuilt, decisions = recompute(prog, M, [f for f, *_ in facts], now)
    assert live == decisions
    assert rebuilt == state
    ids = [d.event_id for d in live]
    assert len(ids) == len(set(ids)), "two decisions share an event id"
    if not any(f.kind == "override" for f, *_ in facts):  # overrides are ledger entries
        for before, after in itertools.pairwise(live):
            assert after.from_tier == before.to_tier  # a chain: nothing missing in between


def _decided(decisions: list[TierDecision]) -> list[tuple[object, ...]]:
    """A decision without the position that caused it (positions shift when entries are
    inserted)."""
    return [
        (d.from_tier, d.to_tier, d.reason, d.qualifying_value, d.effective_from, d.valid_until)
        for d in decisions
    ]


@settings(max_examples=150, deadline=None)
@given(
    prog=programs,
    steps=st.lists(step, min_size=1, max_size=30),
    inserted=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 1000)), max_size=10),
    tail=st.integers(0, 800),
)
def test_entries_that_are_not_qualifying_activity_change_no_decision(
    prog: Program,
    steps: list[tuple[int, str, int, str, bool, int | None, bool, int | None, bool]],
    inserted: list[tuple[int, int]],
    tail: int,
) -> None:
    """Releases, expiries, redemptions (facts of kind "other") land anywhere in the ledger,
    dated anywhere up to the next entry's date, as the scheduler records them late: the
    member's tier decisions stay the same."""
    facts = [f for f, *_ in history(steps) if f.kind != "other"]
    if not facts:
        return
    now = facts[-1].at + timedelta(days=tail)
    mixed: list[Fact] = []
    for i, fact in enumerate(facts):
        mixed.append(fact)
        following = facts[i + 1].at if i + 1 < len(facts) else now
        for after, permille in inserted:
            if after % len(facts) == i:
                mixed.append(Fact(0, M, fact.at + (following - fact.at) * permille / 1000))
    renumbered = [replace(f, position=n) for n, f in enumerate(mixed, start=1)]
    _, plain = recompute(prog, M, facts, now)
    _, with_others = recompute(prog, M, renumbered, now)
    assert _decided(with_others) == _decided(plain)
