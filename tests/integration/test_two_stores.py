"""One history, one ledger, on the real broker and PostgreSQL: the same inbound topics,
consumed by two fresh stores (one `loyalty serve` left alone, the other SIGKILLed several
times while it reads), give every member the same balances (available, pending, held),
lifetime points and tier.

The two consumers read the four inbound topics in whatever interleaving their fetches
happen to give, so a redemption is often read before the purchase funding it, and a
purchase after the member's later review or referral. The history mixes purchases,
reviews, enrolments, referrals with one referrer per referee (members referring each
other too), refunds (a third of the members), redemptions, some asking more than the
member has then (they wait, parked, and are funded by a later earn or cancellation, or
still wait at the end), and cancellations of them. Both stores must also pass `verify`,
which makes every entry again from the receipts.

LOYALTY_TWO_STORES_HISTORY narrows the history: `refunds` (no waiting redemptions and no
cancellations; the members who return things never redeem) or `narrow` (no refunds
either: redemptions funded with a wide margin). The default is `wide`, everything above.
LOYALTY_TWO_STORES_EVENTS sizes it (default 3,000 events over 150 members), and
LOYALTY_TWO_STORES_RUN names the run whose history to draw again (printed by every run).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas import TOPIC_ACTIVITIES, TOPIC_PURCHASES, TOPIC_REDEMPTIONS, TOPIC_REFERRALS
from services.ledger.adapters.kafka_ingest import tracking_key
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.cli import app
from tests.support.kafka import kafka_broker_for_tests
from tests.support.pipeline import (
    NOW,
    Pipeline,
    end_offsets,
    event,
    produce,
    wait_applied,
    wait_for,
)
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.integration]

EVENTS = int(os.environ.get("LOYALTY_TWO_STORES_EVENTS", "3000"))
MEMBERS = 150
HISTORY = os.environ.get("LOYALTY_TWO_STORES_HISTORY", "wide")
if HISTORY not in ("wide", "refunds", "narrow"):
    raise ValueError(f"LOYALTY_TWO_STORES_HISTORY must be wide, refunds or narrow: {HISTORY!r}")
REFUNDS = HISTORY in ("wide", "refunds")  # a third of the members return things
WIDE = HISTORY == "wide"  # redemptions that wait for points, and cancellations of them
SETTLED = NOW + timedelta(days=3)  # every pending purchase released, no deadline reached
KILLS = 4


@pytest.fixture
def broker() -> Iterator[str]:
    with kafka_broker_for_tests(private=True) as bootstrap:
        yield bootstrap


def _ts(days_ago: float) -> str:
    at = NOW - timedelta(days=days_ago)
    return at.isoformat().replace("+00:00", "Z")


def history(run: str, rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(topic, key, bytes) in event-time order per member; members interleaved."""
    members = [f"t{i}-{run}" for i in range(MEMBERS)]
    per_member = EVENTS // MEMBERS
    messages: list[tuple[float, str, str, bytes]] = []  # days ago, topic, key, value
    referred: set[str] = set()
    n = 0
    for i, member in enumerate(members):
        refunds = REFUNDS and i % 3 == 0  # a third return things
        days = 12.0
        orders: list[tuple[str, int]] = []
        earned: list[tuple[float, int]] = []  # (days ago, points at least)
        spent = 0
        redeemed: list[str] = []
        if i % 4 == 0:
            n += 1
            messages.append(
                (
                    days,
                    TOPIC_ACTIVITIES,
                    member,
                    event(f"{run}-{n}", "member.enrolled", member, _ts(days)),
                )
            )
        for _ in range(per_member):
            days -= rng.uniform(0.01, 0.15)
            n += 1
            eid = f"{run}-{n}"
            roll = rng.random()
            if roll < 0.55 or not orders:
                total = rng.randrange(100, 2500)
                order = f"o{n}"
                orders.append((order, total))
                earned.append((days, total // 100))
                raw = event(
                    eid,
                    "purchase.completed",
                    member,
                    _ts(days),
                    order_id=order,
                    currency="USD",
                    total_minor=total,
                )
                messages.append((days, TOPIC_PURCHASES, member, raw))
            elif roll < 0.7:
                raw = event(
                    eid,
                    "activity.completed",
                    member,
                    _ts(days),
                    activity="review",
                    reference=f"rv{n}",
                )
                messages.append((days, TOPIC_ACTIVITIES, member, raw))
            elif roll < 0.78:
                referee = members[rng.randrange(MEMBERS)]
                # One referrer per referee; circular pairs too (decided in event time).
                if referee == member or referee in referred:
                    continue
                referred.add(referee)
                raw = event(eid, "referral.qualified", member, _ts(days), referee_member_id=referee)
                messages.append((days, TOPIC_REFERRALS, member, raw))
            elif WIDE and roll < 0.84 and redeemed and rng.random() < 0.5:
                # A cancellation of one of the member's redemptions, dated after it.
                redemption_id = redeemed.pop(rng.randrange(len(redeemed)))
                raw = event(
                    eid, "redemption.cancelled", member, _ts(days), redemption_id=redemption_id
                )
                messages.append((days, TOPIC_REDEMPTIONS, member, raw))
            elif refunds and (roll < 0.84 or not WIDE):
                order, total = orders[rng.randrange(len(orders))]
                raw = event(
                    eid,
                    "purchase.refunded",
                    member,
                    _ts(days),
                    order_id=order,
                    refund_id=f"r{n}",
                    amount_minor=max(1, total // 3),
                )
                messages.append((days, TOPIC_PURCHASES, member, raw))
            else:
                # Funded by what was earned 2 days or more before (released by then):
                # with a wide margin by default, so that it applies in any order in the
                # end; WIDE: sometimes more than that, so that it waits (parked) and is
                # funded by a later earn or a cancellation, or still waits at the end.
                funded = sum(p for d, p in earned if d - days >= 2.0) - spent
                if WIDE:
                    points = min(40, max(1, funded // 2 + rng.randrange(-5, 15)))
                else:
                    points = min(20, funded // 3)
                    if points < 1:
                        continue
                spent += points
                redeemed.append(f"x{n}")
                raw = event(
                    eid,
                    "redemption.requested",
                    member,
                    _ts(days),
                    redemption_id=f"x{n}",
                    points=points,
                )
                messages.append((days, TOPIC_REDEMPTIONS, member, raw))
    messages.sort(key=lambda m: -m[0])  # produced in event-time order
    return [(topic, key, raw) for _, topic, key, raw in messages]


def program_file(tmp_path: Path) -> Path:
    """The coffee program, its parked events waiting long enough for a backfill."""
    path = tmp_path / "program.yaml"
    text = (EXAMPLES / "coffee.yaml").read_text()
    path.write_text(text + "arrival:\n  park_hours: 720\n")
    return path


def open_store(env: dict[str, str], program: Path) -> Ledger:
    store = {k: v for k, v in env.items() if k.startswith(("PERSISTENCE", "POSTGRES"))}
    return build_ledger(Settings(program=program, db=Path(env["LOYALTY_DB"])), env=store)


def _applied(ledger: Ledger, ends: dict[tuple[str, int], int]) -> int:
    recorder = ledger.app.process_recorder
    return sum((recorder.max_tracking_id(tracking_key(t, p)) or -1) + 1 for (t, p) in ends)


def _kill_mid_stream(
    pipeline: Pipeline, ledger: Ledger, ends: dict[tuple[str, int], int], rng: random.Random
) -> int:
    """SIGKILL `serve` up to KILLS times, each time soon after it has made progress and
    before it has read everything; returns the kills done."""
    total = sum(ends.values())
    kills = 0
    while kills < KILLS:
        before = _applied(ledger, ends)
        wait_for(lambda b=before: _applied(ledger, ends) > b, "serve to make progress", 120)
        time.sleep(rng.uniform(0.0, 0.4))
        if _applied(ledger, ends) >= total:
            break
        assert pipeline.process is not None
        pipeline.process.send_signal(signal.SIGKILL)
        pipeline.process.wait(timeout=30)
        kills += 1
        pipeline.start()
    return kills


def _statements(ledger: Ledger, run: str) -> dict[str, list[str]]:
    """Each member's entries, oldest first: type, effective time, points, note."""
    found = {}
    for i in range(MEMBERS):
        member = f"t{i}-{run}"
        rows = reversed(ledger.statement(member, limit=100_000))
        found[member] = [
            f"{r.seq} {r.entry_type} {r.effective_at.isoformat()} "
            f"{r.body.get('points', '')} {r.body.get('note', '')}"
            for r in rows
        ]
    return found


def _state(ledger: Ledger, run: str) -> dict[str, tuple[int, int, int, int, str | None]]:
    found = {}
    for i in range(MEMBERS):
        member = f"t{i}-{run}"
        account = ledger.app.find_account(member)
        if account is not None:
            b = account.balance
            found[member] = (b.available, b.pending, b.held, account.lifetime_earned, account.tier)
    return found


def test_two_stores_fed_the_same_topics_agree_one_of_them_killed_repeatedly(
    broker: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", broker])
    assert created.exit_code == 0, created.output
    # The history is drawn from `run`: LOYALTY_TWO_STORES_RUN replays a run's history.
    run = os.environ.get("LOYALTY_TWO_STORES_RUN") or uuid.uuid4().hex[:8]
    print(f"two stores: run {run} (LOYALTY_TWO_STORES_RUN={run} draws this history again)")
    rng = random.Random(run)
    messages = history(run, rng)
    asyncio.run(produce(broker, messages))
    ends = asyncio.run(end_offsets(broker))
    program = program_file(tmp_path)
    states = []
    statements: list[dict[str, list[str]]] = []
    kills = 0
    for name, kill in (("calm", False), ("killed", True)):
        env = {
            **postgres_server.new_database_env(),
            "LOYALTY_PROGRAM": str(program),
            "LOYALTY_DB": str(tmp_path / f"{name}.sqlite"),  # unused: PostgreSQL
        }
        pipeline = Pipeline(broker, env, f"{run}-{name}", tmp_path / f"{name}.log")
        pipeline.start()
        ledger = open_store(env, program)
        try:
            if kill:
                kills = _kill_mid_stream(pipeline, ledger, ends, rng)
            wait_applied(pipeline, ledger, ends)
            assert pipeline.stop() == 0
            ledger.projection.run()
            report = verify(ledger.app, ledger.view)
            assert report.ok, report.violations[:10]
            # Both stores at one instant: each ran its scheduler to its own wall clock, so
            # points pending for two days may be released in one and not yet in the other.
            ledger.app.advance_members([f"t{i}-{run}" for i in range(MEMBERS)], SETTLED)
            states.append(_state(ledger, run))
            ledger.projection.run()
            statements.append(_statements(ledger, run))
        finally:
            ledger.close()
            if pipeline.process is not None and pipeline.process.poll() is None:
                pipeline.process.kill()
                pipeline.process.wait(timeout=10)
    calm, killed = states
    members = calm.keys() | killed.keys()
    differ = {m: (calm.get(m), killed.get(m)) for m in members if calm.get(m) != killed.get(m)}
    print(
        f"{len(messages)} events, {len(calm)} members, {kills} kills of the second store: "
        f"{len(differ)} members differ (available, pending, held, lifetime, tier); "
        f"points held {sum(s[0] + s[1] + s[2] for s in calm.values())} "
        f"and {sum(s[0] + s[1] + s[2] for s in killed.values())}"
    )
    if differ:  # what a later session needs to replay it: the inbound events, both ledgers
        dump = tmp_path / "differ.txt"
        with dump.open("w") as out:
            for member in sorted(differ)[:3]:
                out.write(f"== {member}: calm {calm.get(member)}, killed {killed.get(member)}\n")
                out.writelines(
                    f"{topic} {raw.decode()}\n"
                    for topic, _, raw in messages
                    if member.encode() in raw
                )
                for name, found in zip(("calm", "killed"), statements, strict=True):
                    out.write(f"-- {name}\n")
                    out.writelines(f"{line}\n" for line in found.get(member, []))
        print(f"the differing members' events and entries: {dump}")
        print(dump.read_text()[:6000])
    assert not differ, f"{len(differ)} members differ, e.g. {sorted(differ.items())[:5]}"
