"""Ops tools from the command line: audit, what-if (and --apply once), replay from Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from services.ledger.bootstrap import EXAMPLES
from services.ledger.cli import app

runner = CliRunner()
EVENTS = EXAMPLES / "what-if-events.jsonl"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("LOYALTY_DB", str(db))
    monkeypatch.setenv("LOYALTY_PROGRAM", str(EXAMPLES / "coffee.yaml"))
    monkeypatch.setenv("LOYALTY_NOW", "2026-11-20T12:00:00Z")
    monkeypatch.delenv("PERSISTENCE_MODULE", raising=False)
    return db


def test_audit_explains_every_entry_with_its_source(env: Path) -> None:
    assert runner.invoke(app, ["ingest", str(EVENTS)]).exit_code == 0
    result = runner.invoke(app, ["audit", "m-ana"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "source event:" in out
    assert '"order_id": "2001"' in out
    assert "lot L4 (order 2001)" in out  # L2: the signup (#3 after the entry tier, #2)
    assert "entries add up to 8; the balance holds 8: explained" in out
    data = json.loads(runner.invoke(app, ["audit", "m-ana", "--json"]).stdout)
    assert data["explained"] is True
    assert data["entries"][0]["entry_type"] == "enrolled"
    assert runner.invoke(app, ["audit", "m-nobody"]).exit_code == 1


def test_what_if_with_the_program_in_force_finds_no_difference(env: Path) -> None:
    """Every event applied as of its own time, tiers decided inline: replaying the history
    under the same program gives the same points, so nothing would be posted."""
    assert runner.invoke(app, ["ingest", str(EVENTS)]).exit_code == 0
    same = str(EXAMPLES / "coffee.yaml")
    shown = runner.invoke(app, ["what-if", "--program", same, "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert len(report["members"]) == 3
    assert {m["difference"] for m in report["members"]} == {0}


def test_what_if_shows_the_difference_and_apply_posts_it_once(env: Path) -> None:
    assert runner.invoke(app, ["ingest", str(EVENTS)]).exit_code == 0
    other = str(EXAMPLES / "coffee-v2.yaml")
    shown = runner.invoke(app, ["what-if", "--program", other])
    assert shown.exit_code == 0, shown.output
    assert "m-ana                   8          41         +33" in shown.stdout
    assert "total difference +85 points over 3 members" in shown.stdout
    applied = runner.invoke(app, ["what-if", "--program", other, "--apply", "--actor", "ops-7"])
    assert "posted 3 adjustments" in applied.stdout
    again = json.loads(
        runner.invoke(app, ["what-if", "--program", other, "--apply", "--json"]).stdout
    )
    assert again["posted"] == []
    assert {m["difference"] for m in again["members"]} == {0}
    balance = json.loads(runner.invoke(app, ["balance", "m-ana", "--json"]).stdout)
    assert balance["available"] == 41
    assert runner.invoke(app, ["verify"]).exit_code == 0


@pytest.mark.kafka
@pytest.mark.integration
def test_replay_applies_a_range_once_and_reports_what_it_skipped(
    env: Path, kafka_bootstrap: str
) -> None:
    assert runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap]).exit_code == 0
    member = f"m-{uuid.uuid4().hex[:8]}"
    good = [
        json.dumps(
            {
                "event_id": f"{member}-{i}",
                "type": "purchase.completed",
                "occurred_at": "2026-11-09T15:00:00Z",  # a Monday
                "member_id": member,
                "data": {"order_id": f"{member}-o{i}", "currency": "USD", "total_minor": 1000},
            }
        ).encode()
        for i in range(2)
    ]

    async def produce() -> list[tuple[int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            sent = []
            for value in (good[0], b"not json", good[1]):
                meta = await producer.send_and_wait(
                    "loyalty.purchases.v1", value, key=member.encode()
                )
                sent.append((meta.partition, meta.offset))
            return sent
        finally:
            await producer.stop()

    sent = asyncio.run(produce())
    (partition,) = {p for p, _ in sent}
    first, last = sent[0][1], sent[-1][1]
    args = [
        "replay",
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        "loyalty.purchases.v1",
        "--from-offset",
        str(first),
        "--to-offset",
        str(last),
        "--partition",
        str(partition),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 applied, 0 skipped (already applied), 1 dead-lettered (not_json 1)" in result.stdout
    again = runner.invoke(app, args)
    assert "0 applied, 2 skipped (already applied), 1 dead-lettered" in again.stdout
    balance = json.loads(runner.invoke(app, ["balance", member, "--json"]).stdout)
    assert (balance["available"], balance["pending"]) == (20, 0)  # past the return window
    rejections = runner.invoke(app, ["rejections"]).stdout
    assert rejections.count("not_json") == 1
