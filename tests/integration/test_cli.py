"""The `loyalty` command line as an operator uses it, on the embedded default (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
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


def _line(event_id: str, member: str, cents: int, order: str) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "type": "purchase.completed",
            "occurred_at": "2026-11-16T15:00:00Z",
            "member_id": member,
            "data": {"order_id": order, "currency": "USD", "total_minor": cents},
        }
    )


def test_ingest_reports_each_rejected_line_and_applies_the_rest(env: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            [
                _line("e-1", "m-1", 1255, "o-1"),
                "not json at all",
                _line("e-2", "m-1", 2000, "o-2").replace('"USD"', '"usd"'),
                "",
                _line("e-1", "m-1", 1255, "o-1"),
                _line("e-3", "m-2", 500, "o-3").replace('"USD"', '"EUR"'),
                _line("e-4", "m-2", 700, "o-4"),
            ]
        )
        + "\n"
    )
    result = runner.invoke(app, ["ingest", str(events)])
    assert result.exit_code == 1
    assert "2 applied, 1 duplicates, 3 rejected" in result.stdout
    assert "line 2: rejected (not_json)" in result.stderr
    assert "line 3: rejected (schema)" in result.stderr
    assert "data.currency" in result.stderr
    assert "line 6: rejected (unsupported_currency)" in result.stderr

    balance = runner.invoke(app, ["balance", "m-1", "--json"])
    assert balance.exit_code == 0, balance.stderr
    assert json.loads(balance.stdout)["available"] == 12  # released: the window has passed

    statement = runner.invoke(app, ["statement", "m-1"])
    assert statement.exit_code == 0
    assert "points_earned" in statement.stdout
    assert "event e-1 via file file=events.jsonl line=1" in statement.stdout

    rejections = runner.invoke(app, ["rejections"])
    assert "3 rejections" in rejections.stdout

    verify = runner.invoke(app, ["verify"])
    assert verify.exit_code == 0, verify.stderr
    assert "all invariants hold" in verify.stdout


def test_verify_exits_non_zero_on_a_violation(env: Path, tmp_path: Path) -> None:
    import sqlite3

    events = tmp_path / "events.jsonl"
    events.write_text(_line("e-1", "m-1", 1255, "o-1") + "\n")
    assert runner.invoke(app, ["ingest", str(events)]).exit_code == 0
    with sqlite3.connect(env) as conn:
        conn.execute("UPDATE view_balances SET available = available + 100")
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 1
    assert "VIOLATION m-1: projection shows" in result.stderr
    rebuilt = runner.invoke(app, ["rebuild"])
    assert rebuilt.exit_code == 0
    assert runner.invoke(app, ["verify"]).exit_code == 0


def test_adjust_needs_a_reason_and_records_the_actor(env: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(_line("e-1", "m-1", 1255, "o-1") + "\n")
    runner.invoke(app, ["ingest", str(events)])
    missing = runner.invoke(app, ["adjust", "m-1", "5", "--actor", "ops-1"])
    assert missing.exit_code != 0
    declined = runner.invoke(
        app, ["adjust", "m-1", "--reason", "fraud", "--actor", "a", "--", "-500"]
    )
    assert declined.exit_code == 1
    assert "insufficient_points" in declined.stderr
    ok = runner.invoke(app, ["adjust", "m-1", "8", "--reason", "goodwill", "--actor", "ops-1"])
    assert ok.exit_code == 0, ok.stderr
    statement = runner.invoke(app, ["statement", "m-1", "--json", "--limit", "1"])
    entry = json.loads(statement.stdout)
    assert entry["entry_type"] == "points_adjusted"
    assert entry["provenance"]["origin"]["actor"] == "ops-1"
    assert entry["details"]["reason"] == "goodwill"


def test_balance_as_of_a_past_date_is_the_balance_then(env: Path) -> None:
    """m-ana in what-if-events.jsonl, all ingested on 2026-11-20 (LOYALTY_NOW), each event
    as of its own time (purchases pending for the coffee program's 2 days):

    seq effective         entry                        available  pending  lifetime
    1   11-02 13:00       enrolled                          0        0         0
    2   11-02 13:00       tier green (entry tier)           0        0         0
    3   11-02 13:00       signup +10                       10        0        10
    4   11-02 14:00       purchase +12, pending            10       12        22
    5   11-03 14:00       purchase +16 (double Tuesday)    10       28        38
    6   11-04 09:00       review +5                        15       28        43
    7   11-04 14:00       12 released                      27       16        43
    8   11-05 14:00       16 released                      43        0        43
    9   11-10 14:00       pastry -35                        8        0        43
    """
    assert runner.invoke(app, ["ingest", str(EVENTS)]).exit_code == 0

    def balance(*options: str) -> dict[str, Any]:
        result = runner.invoke(app, ["balance", "m-ana", "--json", *options])
        assert result.exit_code == 0, result.output
        shown: dict[str, Any] = json.loads(result.stdout)
        return shown

    before = balance("--as-of", "2026-11-01T00:00:00Z")
    assert (before["available"], before["lifetime_earned"], before["tier"]) == (0, 0, None)
    assert (before["as_of_position"], before["tier_progress"]) == (0, None)
    # By 11-02 13:30: the enrolment, the entry tier and the signup bonus (#1-#3).
    first = balance("--now", "2026-11-02T13:30:00Z")
    assert (first["available"], first["lifetime_earned"], first["tier"]) == (10, 10, "green")
    assert first["tier_progress"]["qualifying_value"] == 10
    assert first["as_of"] == "2026-11-02T13:30:00+00:00"
    tuesday = balance("--as-of", "2026-11-03T23:59:59-05:00")  # 11-04 04:59 UTC
    assert (tuesday["available"], tuesday["pending"], tuesday["lifetime_earned"]) == (10, 28, 38)
    released = balance("--as-of", "2026-11-04T14:00:00Z")
    assert (released["available"], released["pending"]) == (27, 16)
    before_pastry = balance("--as-of", "2026-11-10T13:59:59Z")
    assert (before_pastry["available"], before_pastry["lifetime_earned"]) == (43, 43)
    after_pastry = balance("--as-of", "2026-11-10T14:00:00Z")
    assert (after_pastry["available"], after_pastry["lifetime_earned"]) == (8, 43)
    now = balance()
    assert (now["available"], now["lifetime_earned"], now["tier"]) == (8, 43, "green")
    assert now["as_of_position"] == after_pastry["as_of_position"]

    text = runner.invoke(app, ["balance", "m-ana", "--as-of", "2026-11-02T13:30:00Z"])
    assert text.stdout.startswith("m-ana: 10 available, 0 pending, 0 held; lifetime 10;")
    assert "(as of 2026-11-02T13:30:00+00:00, ledger position " in text.stdout
    naive = runner.invoke(app, ["balance", "m-ana", "--as-of", "2026-11-02T13:30:00"])
    assert naive.exit_code == 2
    assert "needs a time zone" in naive.stderr
    far = runner.invoke(app, ["balance", "m-ana", "--as-of", "9999-12-31T23:00:00-05:00"])
    assert far.exit_code == 2
    assert "as_of must be in the years" in far.stderr


def test_program_validate_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nname: X\ncurrencies: {USD: {minor_units: 2, points_per_unit: 0}}\n")
    result = runner.invoke(app, ["program", "validate", str(bad)])
    assert result.exit_code == 1
    assert "currencies.USD.points_per_unit" in result.stderr
    good = runner.invoke(app, ["program", "validate", str(EXAMPLES / "retailer.yaml")])
    assert good.exit_code == 0
    assert "version northwind@" in good.stdout


def test_demo_explains_every_point(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--db", str(tmp_path / "demo.sqlite")])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "double-tuesday x2" in out
    assert "applied, duplicate" in out
    assert "redemption_cancelled" in out
    assert "points_reversed" in out
    assert "points_expired" in out
    assert "expiring 39 in 30d" in out
    assert "green -> gold by the ledger (upgrade)" in out  # Ana reaches Gold, then earns double
    assert "tier gold x2" in out
    assert "caused by position" in out
    assert "gold kept by the ledger (kept): the period ending 2027-01-01 qualified" in out
    assert "gold -> green by the ledger (downgrade)" in out
    assert "all invariants hold" in out


def test_the_cli_works_the_same_on_sqlite_and_postgresql(
    store_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in store_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOYALTY_DB", store_env.get("SQLITE_DBNAME", str(tmp_path / "x.sqlite")))
    monkeypatch.setenv("LOYALTY_PROGRAM", str(EXAMPLES / "coffee.yaml"))
    monkeypatch.setenv("LOYALTY_NOW", "2026-11-20T12:00:00Z")
    events = tmp_path / "events.jsonl"
    events.write_text(_line("e-1", "m-1", 1255, "o-1") + "\n" + _line("e-2", "m-1", 800, "o-2"))
    assert runner.invoke(app, ["ingest", str(events)]).exit_code == 0
    again = runner.invoke(app, ["ingest", str(events)])
    assert "0 applied, 2 duplicates, 0 rejected" in again.stdout
    balance = runner.invoke(app, ["balance", "m-1", "--json"])
    assert json.loads(balance.stdout)["available"] == 20
    assert runner.invoke(app, ["verify"]).exit_code == 0


def test_a_redemption_read_before_the_member_exists_waits_and_applies_when_they_join(
    env: Path, tmp_path: Path
) -> None:
    def event(event_id: str, kind: str, **data: object) -> str:
        return json.dumps(
            {
                "event_id": event_id,
                "type": kind,
                "occurred_at": "2026-11-16T15:00:00Z",
                "member_id": "m-7",
                "data": data,
            }
        )

    early = tmp_path / "early.jsonl"
    early.write_text(event("red-1", "redemption.requested", redemption_id="r1", points=4) + "\n")
    waiting = runner.invoke(app, ["ingest", str(early)])
    assert waiting.exit_code == 0, waiting.output  # not declined: it waits for the member
    assert "1 parked" in waiting.stdout
    listed = runner.invoke(app, ["rejections", "--parked"])
    assert "red-1: waits (unknown_member" in listed.stdout
    assert "1 parked" in listed.stdout
    joined = tmp_path / "joined.jsonl"
    joined.write_text(event("join-1", "member.enrolled") + "\n")
    assert runner.invoke(app, ["ingest", str(joined)]).exit_code == 0
    balance = runner.invoke(app, ["balance", "m-7", "--json"])
    assert json.loads(balance.stdout)["available"] == 6  # signup 10 - 4, no redrive needed
    assert "0 parked" in runner.invoke(app, ["rejections", "--parked"]).stdout
    assert "0 rejections" in runner.invoke(app, ["rejections"]).stdout
    again = runner.invoke(app, ["ingest", str(early)])  # re-sent: the applied outcome
    assert "0 applied, 1 duplicates" in again.stdout
