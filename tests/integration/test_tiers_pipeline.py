"""Tiers on a real broker: `loyalty serve` and `loyalty tiers serve` as real processes.

Purchases push a member over the threshold -> the tiers service publishes tier.changed ->
the ledger records it -> the next purchase earns with the tier's multiplier. Then the tiers
process is killed mid-stream and restarted: the ledger ends with every change exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas import TOPIC_ACTIVITIES, TOPIC_BALANCES, TOPIC_PURCHASES, TOPIC_TIERS
from schemas.outbound import LedgerEntry, MemberBalance
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
            "--review-interval",
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


def tier_entries_of(
    pipeline: Pipeline, members: list[str]
) -> dict[str, list[tuple[str | None, str]]]:
    """(tier, event id) of each member's tier_assigned entries, oldest first."""
    return {
        m: [
            (str(e.details.get("tier")), e.provenance.event_id or "")
            for e in found
            if e.entry_type == "tier_assigned"
        ]
        for m, found in entries_of(pipeline, members).items()
    }


def tier_entries(pipeline: Pipeline, member: str) -> list[tuple[str | None, str]]:
    return tier_entries_of(pipeline, [member])[member]


def tiers_of(pipeline: Pipeline, member: str) -> list[str | None]:
    return [tier for tier, _ in tier_entries(pipeline, member)]


def tiers_of_all(pipeline: Pipeline, members: list[str]) -> dict[str, list[str | None]]:
    return {m: [t for t, _ in found] for m, found in tier_entries_of(pipeline, members).items()}


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


def test_upgrade_flows_back_into_the_ledger_and_survives_a_killed_tiers_process(
    running: tuple[Pipeline, TiersProcess], kafka_bootstrap: str
) -> None:
    pipeline, tiers = running
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
    # The next purchase earns with Gold's multiplier, and says so on the entry.
    asyncio.run(
        produce(kafka_bootstrap, [(TOPIC_PURCHASES, ana, purchase(pipeline, ana, 3, 1000, 1))])
    )

    def third_earn() -> LedgerEntry | None:
        return next(
            (e for e in entries(pipeline, ana) if e.provenance.event_id == f"{run}-{ana}-buy-3"),
            None,
        )

    run = pipeline.run_id
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
    assert balance.tier_held_until is not None
    assert balance.tier_progress is not None
    assert balance.tier_progress.qualifying_value == 85  # 10 + 30 + 25 + 20

    # Many members at once; the tiers process is killed in the middle and restarted.
    members = [pipeline.member(f"m{i}") for i in range(12)]
    firsts = [(TOPIC_PURCHASES, m, purchase(pipeline, m, 1, 3000, 2)) for m in members]
    seconds = [(TOPIC_PURCHASES, m, purchase(pipeline, m, 2, 3000, 2)) for m in members]
    asyncio.run(produce(kafka_bootstrap, firsts))  # 30 points each: green
    wait_for(lambda: any(tier_entries_of(pipeline, members).values()), "the first tier entries")
    tiers.kill()
    assert not all(t == ["green", "gold"] for t in tiers_of_all(pipeline, members).values())
    asyncio.run(produce(kafka_bootstrap, seconds))  # 60 points each: gold
    tiers.start()
    # A restarted worker first waits out the killed one's session (10 s), then restores its
    # table from the changelog; on a slow machine that has taken most of a minute.
    seen: dict[str, list[str | None]] = {}

    def all_green_then_gold() -> bool:
        seen.update(tiers_of_all(pipeline, members))
        wrong = {m: t for m, t in seen.items() if t != ["green", "gold"][: len(t)]}
        assert not wrong, f"tier entries repeated or out of order: {wrong}"
        return all(t == ["green", "gold"] for t in seen.values())

    try:
        wait_for(all_green_then_gold, "every member's green and gold exactly once", timeout=180)
    finally:
        print("tiers per member:", seen)  # shown when the wait fails
    for member, found in tier_entries_of(pipeline, [ana, *members]).items():
        ids = [i for _, i in found]
        assert len(ids) == len(set(ids)), member
    published = [
        TierChanged.model_validate_json(r.value)
        for r in asyncio.run(read_all(kafka_bootstrap, TOPIC_TIERS))
    ]
    ours = {m.event_id for m in published if m.member_id in members}
    assert len(ours) == 2 * len(members)  # redelivered messages carry the same event id

    # The live table equals a recomputation from the ledger, and verify finds no difference.
    # (Only this run's members: the shared broker's topics hold earlier tests' events too.)
    cli = CliRunner()
    db = ["--db", pipeline.env["LOYALTY_DB"], "--program", str(EXAMPLES / "coffee.yaml")]
    only = [arg for m in [ana, *members] for arg in ("--member", m)]
    rebuilt = cli.invoke(
        app,
        ["tiers", "rebuild", *db, *only, "--bootstrap", kafka_bootstrap, "--app-id", tiers.app_id],
    )
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"{ana}: gold" in rebuilt.output
    assert "0 differ from the live table" in rebuilt.output
    verified = cli.invoke(app, ["verify", *db])
    differing = [line for line in verified.output.splitlines() if pipeline.run_id in line]
    assert differing == []
