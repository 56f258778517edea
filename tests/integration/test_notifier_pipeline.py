"""The notifier as a real process on a real broker: ledger entries published by the relay
and tier changes on loyalty.tiers.v1 become emails on a real SMTP server. Killed with
SIGKILL mid-batch and restarted, it sends nothing twice (beyond a delivery it had in flight,
which it marks in doubt) and misses nothing."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from schemas import TOPIC_TIERS
from schemas.outbound import LedgerEntry, LotOut
from schemas.tiers import TierChanged
from services.ledger.adapters.kafka_relay import OutboxRelay
from services.ledger.adapters.program_file import load_program
from services.ledger.application.ledger import Inbound
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.cli import app
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin
from services.notifier.bootstrap import build_notifier, sqlite_url
from services.notifier.embedded import ledger_entries
from services.notifier.notices import (
    entry_notices,
    expiry_notices,
    statement_notices,
    summary,
    tier_at_risk_notices,
    tier_notices,
)
from services.notifier.sent_log import PENDING, SENDING
from tests.support.notices import tier_changed
from tests.support.pipeline import LOYALTY, buy_at, event, free_port, scrape, wait_for
from tests.support.receivers import Mailbox, smtp_server

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

MEMBERS = 30
DAY = timedelta(days=1)


def _program_file(tmp_path: Path) -> Path:
    """The coffee program with tiers, and reminder windows wide enough for any day."""
    data = yaml.safe_load((EXAMPLES / "coffee.yaml").read_text())
    data["tiers"] = [
        {"id": "bean", "name": "Bean", "threshold": 0},
        {"id": "gold", "name": "Gold", "threshold": 100},
    ]
    # No grace: the period ends at valid_until, which the tier changes below put 10 days out.
    data["tier_qualification"] = {"basis": "points", "window": "calendar_year", "grace_days": 0}
    data["notifications"] = {"expiry_reminder_days": [45, 7]}
    path = tmp_path / "program.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@dataclass
class World:
    program: Program
    program_path: Path
    members: list[str]
    entries: list[LedgerEntry]
    changes: list[TierChanged]


def _make_history(tmp_path: Path, run: str, bootstrap: str, now: datetime) -> World:
    """A real ledger's entries for MEMBERS members, published by the real relay, as of
    `now`: taken when the test starts, not when the module is imported, so that a suite
    running across a month's end does not put "last month" in the month before."""
    path = _program_file(tmp_path)
    program = load_program(path)
    members = [f"m{i}-{run}" for i in range(MEMBERS)]
    earn = datetime.fromisoformat(buy_at(170).replace("Z", "+00:00"))
    # In the program's time zone (monthly statements follow its months, not UTC's).
    local = now.astimezone(ZoneInfo(program.timezone))
    last_month = (local.replace(day=1) - timedelta(days=12)).replace(hour=15).astimezone(UTC)
    first: list[bytes] = []  # applied at the time of the purchases: their points are pending
    events: list[bytes] = []
    for i, member in enumerate(members):
        first += [
            event(f"{member}-enrol", "member.enrolled", member, _iso(earn - timedelta(hours=1))),
            event(
                f"{member}-buy",
                "purchase.completed",
                member,
                _iso(earn),
                order_id=f"{member}-o1",
                currency="USD",
                total_minor=6000,
            ),
        ]
        events += [
            event(
                f"{member}-review",
                "activity.completed",
                member,
                _iso(last_month),
                activity="review",
            ),
        ]
        if i % 2 == 0:
            events.append(
                event(
                    f"{member}-ref",
                    "referral.qualified",
                    member,
                    _iso(last_month + timedelta(hours=1)),
                    referee_member_id=members[i + 1],
                )
            )
    clock = FixedClock(earn + timedelta(hours=1))
    ledger = build_ledger(Settings(program=path, db=tmp_path / "ledger.sqlite"), clock=clock)
    try:
        for batch in (first, events):
            outcomes = ledger.app.apply_batch(
                [Inbound(e, Origin("file", file="test", line=n)) for n, e in enumerate(batch)]
            )
            assert {o.status for o in outcomes} == {"applied"}, [o.reason for o in outcomes]
            clock.set(now)
        ledger.tick(now)
        entries = [e for e in ledger_entries(ledger) if e.member_id in set(members)]

        async def publish() -> None:
            relay = OutboxRelay(ledger, bootstrap)
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
            await producer.start()
            try:
                await relay.publish_pending(producer)
                changes_out = [
                    producer.send_and_wait(
                        TOPIC_TIERS, c.model_dump_json().encode(), key=c.member_id.encode()
                    )
                    for c in changes
                ]
                await asyncio.gather(*changes_out)
            finally:
                await producer.stop()
                relay.close()

        changes = [
            tier_changed(m, "bean", "gold", "upgrade", now - DAY * 100, now + DAY * 10)
            for m in members
        ]
        asyncio.run(publish())
    finally:
        ledger.close()
    return World(program, path, members, entries, changes)


def _expected(world: World, now: datetime) -> set[str]:
    """Every notice key the pure rules give for this history: what must arrive, once."""
    keys: set[str] = set()
    lots: dict[str, dict[str, LotOut]] = collections.defaultdict(dict)
    summaries = collections.defaultdict(list)
    for e in sorted(world.entries, key=lambda e: (e.member_id, e.seq)):
        keys |= {n.key for n in entry_notices(e, world.program)}
        lots[e.member_id].update({lot.lot_id: lot for lot in e.lots_after})
        summaries[e.member_id].append(summary(e))
    for change in world.changes:
        keys |= {n.key for n in tier_notices(change, world.program)}
        member = change.member_id
        found = [
            *expiry_notices(member, tuple(lots[member].values()), now, world.program),
            *tier_at_risk_notices(
                member, "gold", change.data.valid_until, summaries[member], now, world.program
            ),
            *statement_notices(member, summaries[member], now, world.program),
        ]
        keys |= {n.key for n in found}
    return keys


class NotifierProcess:
    def __init__(self, bootstrap: str, db: str, program: Path, smtp_port: int, log: Path):
        self.metrics_port = free_port()
        self.args = [
            str(LOYALTY), "notify", "run", "--bootstrap", bootstrap, "--notifier-db", db,
            "--program", str(program), "--metrics-port", str(self.metrics_port),
            "--scan-interval", "3600",
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "LOYALTY_NOTIFIER_SMTP_HOST": "127.0.0.1",
            "LOYALTY_NOTIFIER_SMTP_PORT": str(smtp_port),
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def smtp() -> Iterator[tuple[int, Mailbox]]:
    with smtp_server() as found:
        yield found


def test_killed_mid_batch_and_restarted_it_sends_nothing_twice_and_misses_nothing(
    kafka_bootstrap: str, tmp_path: Path, smtp: tuple[int, Mailbox]
) -> None:
    created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert created.exit_code == 0, created.output
    run = uuid.uuid4().hex[:8]
    world = _make_history(tmp_path, run, kafka_bootstrap, datetime.now(UTC).replace(microsecond=0))
    expected = _expected(world, datetime.now(UTC))
    kinds = {key.split("|")[1] for key in expected}
    assert kinds == {
        "points_available",
        "reward_unlocked",
        "referral_rewarded",
        "tier_reached",
        "tier_at_risk",
        "points_expiring",
        "monthly_statement",
    }
    db = sqlite_url(tmp_path / "notifier.sqlite")
    setup = build_notifier(world.program, db, [])
    for member in world.members:
        setup.contacts.set_contact(member, f"{member}@example.com")
    setup.close()

    port, mailbox = smtp
    ours = set(world.members)

    def received() -> list[str]:
        return [k for k in mailbox.notice_keys() if k.split("|")[0] in ours]

    notifier = NotifierProcess(kafka_bootstrap, db, world.program_path, port, tmp_path / "n.log")
    notifier.start()
    try:
        wait_for(lambda: len(received()) >= len(expected) // 4, "the first notices", 45)
        notifier.kill()
        at_kill = len(received())
        assert at_kill < len(expected), "killed too late to be mid-batch"
        notifier.start()
        wait_for(lambda: set(received()) >= expected, "every notice", 45)
        time.sleep(1.0)  # anything sent twice would arrive now
        metrics = scrape(notifier.metrics_port)
        assert notifier.stop() == 0
    finally:
        if notifier.process is not None and notifier.process.poll() is None:
            notifier.process.kill()
            notifier.process.wait(timeout=10)
        print(notifier.log.read_text(errors="replace")[-3000:])

    got = collections.Counter(received())
    assert set(got) == expected
    check = build_notifier(world.program, db, [])
    try:
        rows = [d for m in world.members for d in check.sent_log.deliveries(m)]
        in_doubt = {d.notice.key for d in rows if d.in_doubt}
        assert {d.state for d in rows} - {"sent"} <= {"suppressed"}
        assert not [d for d in rows if d.state in (PENDING, SENDING)]
    finally:
        check.close()
    twice = {key for key, count in got.items() if count > 1}
    # Only a delivery in flight at the kill may repeat, and it is recorded as in doubt.
    assert twice <= in_doubt
    assert len(twice) <= 1
    # The restarted process counted what it sent after the kill (our members and others').
    sent_after_restart = sum(
        v for k, v in metrics.items()
        if k.startswith("loyalty_notice_deliveries_total{") and 'outcome="sent"' in k
    )  # fmt: skip
    assert sent_after_restart >= len(expected) - at_kill
    assert "loyalty_notifier_queue_age_seconds" in metrics
    print(
        f"{len(expected)} notices, {at_kill} delivered before SIGKILL, "
        f"{len(twice)} repeated (in doubt: {sorted(in_doubt)})"
    )
