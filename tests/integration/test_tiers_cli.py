"""Tiers on the embedded default: the ledger decides them as `loyalty ingest` applies each
event, the balance shows progress, ops overrides are ledger entries, `loyalty tick` reviews,
and verify, `tiers rebuild` and `tiers history` agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.cli import app

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("LOYALTY_DB", str(db))
    monkeypatch.setenv("LOYALTY_PROGRAM", str(EXAMPLES / "coffee.yaml"))
    monkeypatch.setenv("LOYALTY_NOW", "2026-11-20T12:00:00Z")
    monkeypatch.delenv("PERSISTENCE_MODULE", raising=False)
    return db


def _purchases(path: Path, *orders: tuple[str, int, str]) -> Path:
    path.write_text(
        "\n".join(
            json.dumps(
                {
                    "event_id": f"buy-{order}",
                    "type": "purchase.completed",
                    "occurred_at": at,
                    "member_id": "m-1",
                    "data": {"order_id": order, "currency": "USD", "total_minor": cents},
                }
            )
            for order, cents, at in orders
        )
    )
    return path


def test_member_reaches_gold_earns_double_and_the_history_explains_it(
    env: Path, tmp_path: Path
) -> None:
    first = _purchases(
        tmp_path / "a.jsonl",
        ("o1", 3000, "2026-11-19T10:00:00Z"),  # Thursday: 30 points
        ("o2", 2500, "2026-11-19T11:00:00Z"),  # 55 earned this year: Gold (50)
    )
    result = runner.invoke(app, ["ingest", str(first)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["ingest", str(first)])
    assert "0 applied, 2 duplicates" in again.stdout

    second = _purchases(tmp_path / "b.jsonl", ("o3", 1000, "2026-11-20T11:00:00Z"))
    assert runner.invoke(app, ["ingest", str(second)]).exit_code == 0
    shown = json.loads(runner.invoke(app, ["balance", "m-1", "--json"]).stdout)
    assert shown["tier"] == "gold"
    assert shown["lifetime_earned"] == 30 + 25 + 20  # $10 at Gold x2
    assert shown["tier_progress"]["qualifying_value"] == 75
    assert shown["tier_progress"]["next_tier"] is None
    assert shown["tier_held_until"].startswith("2027-01-31")

    history = runner.invoke(app, ["tiers", "history", "m-1"]).stdout.splitlines()
    assert "- -> green by the ledger (entry): entry tier" in history[0]
    assert (
        "green -> gold by the ledger (upgrade): points earned in the window: 55 >= 50"
        in (history[2])
    )
    assert history[3].startswith("    caused by position ")
    assert "points_earned +25" in history[3]  # the second purchase reached it
    assert len(history) == 4

    assert runner.invoke(app, ["verify"]).exit_code == 0
    rebuilt = runner.invoke(app, ["tiers", "rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "m-1: gold (held until 2027-01-31T05:00:00+00:00)" in rebuilt.stdout
    assert "1 members in the ledger" in rebuilt.stdout


def test_locked_override_is_kept_until_it_ends_and_verify_agrees(env: Path, tmp_path: Path) -> None:
    events = _purchases(tmp_path / "a.jsonl", ("o1", 6000, "2026-11-19T10:00:00Z"))
    assert runner.invoke(app, ["ingest", str(events)]).exit_code == 0
    assigned = runner.invoke(
        app,
        [
            *("tier", "assign", "m-1", "green", "--reason", "fraud check"),
            *("--actor", "ops-7", "--until", "2026-12-15", "--lock"),
        ],
    )
    assert assigned.exit_code == 0, assigned.output
    more = _purchases(tmp_path / "b.jsonl", ("o2", 6000, "2026-11-20T10:00:00Z"))
    assert runner.invoke(app, ["ingest", str(more)]).exit_code == 0
    shown = json.loads(runner.invoke(app, ["balance", "m-1", "--json"]).stdout)
    assert shown["tier"] == "green"  # locked: no automatic upgrade
    assert runner.invoke(app, ["verify"]).exit_code == 0

    ticked = runner.invoke(app, ["tick", "--now", "2026-12-15T00:00:00Z"])
    assert ticked.exit_code == 0, ticked.output
    history = runner.invoke(app, ["tiers", "history", "m-1"]).stdout
    assert "gold -> green by ops (ops-7): fraud check; until 2026-12-15" in history
    assert "; locked" in history
    assert "green -> gold by the ledger (override_ended)" in history
    assert "caused by the override's end (no entry: time passed)" in history
    assert runner.invoke(app, ["verify"]).exit_code == 0

    ledger = build_ledger(Settings())
    try:
        account = ledger.app.find_account("m-1")
        assert account is not None
        assert account.tier == "gold"
        assert not account.tier_locked
    finally:
        ledger.close()
