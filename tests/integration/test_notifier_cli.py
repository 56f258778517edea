"""`loyalty notify ...`: contacts, preferences, erase, scan, send and the log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas import TOPIC_LEDGER
from services.ledger.adapters.program_file import load_program
from services.ledger.bootstrap import EXAMPLES
from services.ledger.cli import app
from services.notifier.bootstrap import build_notifier, sqlite_url
from services.notifier.consumer import Record
from tests.support.notices import entry, lot
from tests.support.receivers import smtp_server

pytestmark = pytest.mark.integration

runner = CliRunner()
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def test_preferences_scan_send_and_log_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite_url(tmp_path / "n.sqlite")
    monkeypatch.setenv("LOYALTY_NOTIFIER_DB", db)
    monkeypatch.setenv("LOYALTY_PROGRAM", str(EXAMPLES / "coffee.yaml"))

    def ok(*args: str) -> str:
        result = runner.invoke(app, ["notify", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    ok("contact", "m-1", "--email", "one@example.com", "--name", "One")
    ok("opt-out", "m-1", "--channel", "email", "--kind", "monthly_statement")
    assert "opted out: monthly_statement on email" in ok("prefs", "m-1")
    bad = runner.invoke(app, ["notify", "opt-out", "m-1", "--kind", "nope"])
    assert bad.exit_code == 2
    assert "unknown notice kind 'nope'" in bad.stderr

    # A lot expiring at the end of November, fed as the consumer would.
    setup = build_notifier(load_program(EXAMPLES / "coffee.yaml"), db, [])
    expiring = lot(
        "L1", 30, 30, datetime(2026, 5, 4, tzinfo=UTC), datetime(2026, 12, 1, 5, tzinfo=UTC)
    )
    earned = entry("m-1", 2, "points_earned", datetime(2026, 10, 4, tzinfo=UTC), lots=(expiring,))
    setup.recorder.apply([Record(TOPIC_LEDGER, 0, 0, earned.model_dump_json().encode())])
    setup.close()

    with smtp_server() as (port, mailbox):
        monkeypatch.setenv("LOYALTY_NOTIFIER_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("LOYALTY_NOTIFIER_SMTP_PORT", str(port))
        assert "2 new notices" in ok("scan", "--now", NOW.isoformat())
        assert "2 deliveries handled" in ok("send", "--now", NOW.isoformat())
        subjects = sorted(str(m["Subject"]) for m in mailbox.messages)
    assert subjects == ["30 points expire after 2026-11-30"]
    log = ok("log", "m-1")
    assert "m-1|points_expiring|2026-11-30|30d  email sent tries=1" in log
    assert "m-1|monthly_statement|2026-10|  email suppressed" in log
    assert "error=opted out" in log
    ok("erase", "m-1")
    assert "m-1: email -, name -" in ok("prefs", "m-1")
