"""Tiers on a real broker: `loyalty serve` and `loyalty tiers serve` as real processes.

Purchases push a member over the threshold -> the ledger records the upgrade inline and the
next purchase earns with the tier's multiplier, whatever the tiers projection does. The
projection follows loyalty.ledger.v1: its table, the tier.changed messages on
loyalty.tiers.v1 and the statuses on loyalty.tier-status.v1 match the ledger's tier_assigned
entries. It is killed mid-stream (SIGKILL) and restarted: every change is published with
the same event id however often, and `loyalty tiers rebuild --bootstrap` finds no difference.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas import (
    TOPIC_ACTIVITIES,
    TOPIC_BALANCES,
    TOPIC_DEADLETTER,
    TOPIC_PURCHASES,
    TOPIC_TIER_STATUS,
    TOPIC_TIERS,
)
from schemas.outbound import LedgerEntry, MemberBalance, TierStatus
from schemas.tiers import TierChanged
from services.ledger.bootstrap import EXAMPLES
from services.ledger.cli import app
from tests.support.pipeline import (
    LOYALTY,
    Pipeline,
    at_days_ago,
    buy_at,
    event,
    produce,
    read_all,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


class TiersProcess:
    def __init__(self, bootstrap: str, app_id: str, data_dir: Path, log: Path) -> None:
        self.args = [
            str(LOYALTY),
            "tiers",
            "serve",
            "--bootstrap",
            bootstrap,
            "--app-id",
            app_id,
            "--data-dir",
            str(data_dir),
            "--count-interval",
            "2",
        ]
        self.log = log
        self.app_id = app_id
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
            "LOYALTY_TIERS_METRICS_PORT": "0",
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.log.parent
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def running(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[Pipeline, TiersProcess]]:
    created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert created.exit_code == 0, created.output
    run_id = uuid.uuid4().hex[:8]
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "ledger.sqlite"),
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_DB": str(tmp_path / "ledger.sqlite"),
    }
    ledger = Pipeline(kafka_bootstrap, env, run_id, tmp_path / "serve.log")
    tiers = TiersProcess(
        kafka_bootstrap, f"tiers-{run_id}", tmp_path / "tiers-data", tmp_path / "tiers.log"
    )
    ledger.start()
    tiers.start()
    yield ledger, tiers
    tiers.stop()
    if ledger.process is not None and ledger.process.poll() is None:
        ledger.stop()
    print(ledger.log.read_text(errors="replace")[-2000:])  # shown when a test fails
    print(tiers.log.read_text(errors="replace")[-4000:])


def entries_of(pipeline: Pipeline, members: list[str]) -> dict[str, list[LedgerEntry]]:
    """Each member's statement, oldest first, read through one ledger connection."""
    ledger = pipeline.ledger()
    try:
        return {
            m: [
                LedgerEntry.model_validate(r.body) for r in reversed(ledger.statement(m, limit=200))
            ]
            for m in members
        }
    finally:
        ledger.close()


def entries(pipeline: Pipeline, member: str) -> list[LedgerEntry]:
    return entries_of(pipeline, [member])[member]


def tier_entries_of(pipeline: Pipeline, members: list[str]) -> dict[str, list[LedgerEntry]]:
    """Each member's tier_assigned entries, oldest first."""
    return {
        m: [e for e in found if e.entry_type == "tier_assigned"]
        for m, found in entries_of(pipeline, members).items()
    }


def tiers_of_all(pipeline: Pipeline, members: list[str]) -> dict[str, list[str | None]]:
    return {
        m: [str(e.details["tier"]) for e in found]
        for m, found in tier_entries_of(pipeline, members).items()
    }


def tiers_of(pipeline: Pipeline, member: str) -> list[str | None]:
    return tiers_of_all(pipeline, [member])[member]


def published_changes(bootstrap: str, members: list[str]) -> list[TierChanged]:
    """The tier.changed messages on loyalty.tiers.v1 for these members, as read."""
    return [
        change
        for r in asyncio.run(read_all(bootstrap, TOPIC_TIERS))
        if (change := TierChanged.model_validate_json(r.value)).member_id in members
    ]


def latest_statuses(bootstrap: str, members: list[str]) -> dict[str, TierStatus]:
    """The last status per member on the compacted loyalty.tier-status.v1."""
    found: dict[str, TierStatus] = {}
    for r in asyncio.run(read_all(bootstrap, TOPIC_TIER_STATUS)):
        status = TierStatus.model_validate_json(r.value)
        assert r.key == status.member_id.encode()
        if status.member_id in members:
            found[status.member_id] = status
    return found


def expected_changes(pipeline: Pipeline, members: list[str]) -> set[tuple[str, str | None, str]]:
    """(event id, from, to) of every tier change the ledger recorded for these members."""
    return {
        (
            f"tier:{m}:{e.details['tier']}:p{e.position}",
            e.details["previous"] if isinstance(e.details["previous"], str) else None,
            str(e.details["tier"]),
        )
        for m, found in tier_entries_of(pipeline, members).items()
        for e in found
        if e.details["tier"] != e.details["previous"]
    }


def purchase(pipeline: Pipeline, member: str, n: int, cents: int, days_ago: float) -> bytes:
    run = pipeline.run_id
    return event(
        f"{run}-{member}-buy-{n}",
        "purchase.completed",
        member,
        buy_at(days_ago),
        order_id=f"{run}-{member}-o{n}",
        currency="USD",
        total_minor=cents,
    )


def test_the_ledger_decides_and_the_projection_follows_through_a_killed_worker(
    running: tuple[Pipeline, TiersProcess], kafka_bootstrap: str
) -> None:
    pipeline, tiers = running
    run = pipeline.run_id
    ana = pipeline.member("ana")
    # Signup 10 + $30 + $25 = 65 points earned this year: Gold (50) on the second purchase.
    asyncio.run(
        produce(
            kafka_bootstrap,
            [
                (
                    TOPIC_ACTIVITIES,
                    ana,
                    event(f"{ana}-enrol", "member.enrolled", ana, at_days_ago(3)),
                ),
                (TOPIC_PURCHASES, ana, purchase(pipeline, ana, 1, 3000, 2)),
                (TOPIC_PURCHASES, ana, purchase(pipeline, ana, 2, 2500, 2)),
            ],
        )
    )
    wait_for(lambda: tiers_of(pipeline, ana) == ["green", "gold"], "green, then gold")
    gold = tier_entries_of(pipeline, [ana])[ana][1]
    assert (gold.details["cause"], gold.provenance.event_id) == ("upgrade", f"{run}-{ana}-buy-2")
    # The next purchase earns with Gold's multiplier, and says so on the entry.
    asyncio.run(
        produce(kafka_bootstrap, [(TOPIC_PURCHASES, ana, purchase(pipeline, ana, 3, 1000, 1))])
    )

    def third_earn() -> LedgerEntry | None:
        return next(
            (e for e in entries(pipeline, ana) if e.provenance.event_id == f"{run}-{ana}-buy-3"),
            None,
        )

    wait_for(lambda: third_earn() is not None, "the third purchase to be applied")
    earn = third_earn()
    assert earn is not None
    assert earn.details["points"] == 20  # $10 at 1 pt/USD, Gold x2
    assert earn.provenance.tier == "gold"
    assert "tier:gold" in str(earn.provenance.rule_id)

    # loyalty.balances.v1 shows the tier, how long it is held and the progress.
    def balance_of_ana() -> MemberBalance | None:
        records = asyncio.run(read_all(kafka_bootstrap, TOPIC_BALANCES))
        found = [
            MemberBalance.model_validate_json(r.value) for r in records if r.key == ana.encode()
        ]
        return found[-1] if found else None

    wait_for(lambda: (b := balance_of_ana()) is not None and b.lifetime_earned == 85, "balance")
    balance = balance_of_ana()
    assert balance is not None
    assert balance.tier == "gold"
    assert balance.tier_held_until == datetime.fromisoformat(str(gold.details["held_until"]))
    assert balance.tier_progress is not None
    assert balance.tier_progress.qualifying_value == 85  # 10 + 30 + 25 + 20

    # The projection publishes the ledger's changes, and Ana's status with her progress.
    def changes_of(members: list[str]) -> set[tuple[str, str | None, str]]:
        return {
            (c.event_id, c.data.from_tier, c.data.to_tier)
            for c in published_changes(kafka_bootstrap, members)
        }

    wait_for(
        lambda: changes_of([ana]) == expected_changes(pipeline, [ana]),
        "the projection's tier.changed for Ana",
    )
    upgrade = next(c for c in published_changes(kafka_bootstrap, [ana]) if c.data.to_tier == "gold")
    # 65 with the signup counted; 55 when the purchases (another topic) were read before the
    # enrolment: the upgrade comes at the second purchase either way, and so does every point.
    assert (upgrade.data.reason, upgrade.data.qualifying_value) in {
        ("upgrade", 65),
        ("upgrade", 55),
    }
    assert upgrade.data.caused_by_position is not None
    wait_for(
        lambda: (
            (s := latest_statuses(kafka_bootstrap, [ana]).get(ana)) is not None
            and s.qualifying_value == 85
        ),
        "Ana's tier status",
    )
    status = latest_statuses(kafka_bootstrap, [ana])[ana]
    assert (status.tier, status.held_until) == ("gold", balance.tier_held_until)
    assert (status.next_tier, status.next_threshold) == (None, None)

    # Many members at once; the projection is killed in the middle and restarted. The
    # ledger decides every member's tiers meanwhile, without it.
    members = [pipeline.member(f"m{i}") for i in range(12)]
    firsts = [(TOPIC_PURCHASES, m, purchase(pipeline, m, 1, 3000, 2)) for m in members]
    seconds = [(TOPIC_PURCHASES, m, purchase(pipeline, m, 2, 3000, 2)) for m in members]
    asyncio.run(produce(kafka_bootstrap, firsts))  # 30 points each: green
    wait_for(lambda: published_changes(kafka_bootstrap, members), "the first tier.changed")
    tiers.kill()
    asyncio.run(produce(kafka_bootstrap, seconds))  # 60 points each: gold
    wait_for(
        lambda: all(t == ["green", "gold"] for t in tiers_of_all(pipeline, members).values()),
        "every member's green and gold in the ledger, the projection down",
    )
    assert len(published_changes(kafka_bootstrap, members)) < 2 * len(members)
    tiers.start()
    # A restarted worker first waits out the killed one's session (10 s), then restores its
    # table from the changelog; on a slow machine that has taken most of a minute.
    expected = expected_changes(pipeline, members)
    assert len(expected) == 2 * len(members)
    seen: set[tuple[str, str | None, str]] = set()

    def all_published() -> bool:
        seen.update(changes_of(members))
        assert seen <= expected, f"changes the ledger did not record: {seen - expected}"
        return seen == expected

    try:
        wait_for(all_published, "every member's green and gold published", timeout=180)
    finally:
        print("published:", sorted(seen))  # shown when the wait fails
    held = {
        m: found[-1].details["held_until"]
        for m, found in tier_entries_of(pipeline, members).items()
    }

    def statuses_shown() -> dict[str, tuple[str | None, str | None]]:
        return {
            m: (s.tier, s.held_until.isoformat() if s.held_until else None)
            for m, s in latest_statuses(kafka_bootstrap, members).items()
        }

    wait_for(
        lambda: statuses_shown() == {m: ("gold", until) for m, until in held.items()},
        "every member's status: gold, held as the ledger holds it",
    )
    # The ledger never consumed the projection's tier.changed (nothing dead-lettered).
    ours = {m.encode() for m in [ana, *members]}
    dead = [r for r in asyncio.run(read_all(kafka_bootstrap, TOPIC_DEADLETTER)) if r.key in ours]
    assert dead == []

    # The live table equals the ledger's tiers, and verify finds no difference.
    # (Only this run's members: the shared broker's topics hold earlier tests' events too.)
    cli = CliRunner()
    db = ["--db", pipeline.env["LOYALTY_DB"], "--program", str(EXAMPLES / "coffee.yaml")]
    only = [arg for m in [ana, *members] for arg in ("--member", m)]
    rebuilt = cli.invoke(
        app,
        ["tiers", "rebuild", *db, *only, "--bootstrap", kafka_bootstrap, "--app-id", tiers.app_id],
    )
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"{ana}: gold (held until " in rebuilt.output
    assert "13 members in the ledger, 0 differ from the live table" in rebuilt.output
    verified = cli.invoke(app, ["verify", *db])
    differing = [line for line in verified.output.splitlines() if pipeline.run_id in line]
    assert differing == []
