"""The notifier against a real SMTP server (aiosmtpd) and a real HTTP receiver that checks
each webhook's HMAC signature: every kind, opt-outs, quiet hours, retries, dead-letter,
and no reminder for points spent after it was scheduled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from schemas import TOPIC_LEDGER, TOPIC_TIERS
from schemas.outbound import LedgerEntry
from services.ledger.domain.program import NoticeKind, Program
from services.notifier.bootstrap import Notifier, build_notifier, sqlite_url
from services.notifier.channels.smtp import SmtpChannel, message_id
from services.notifier.channels.webhook import WebhookChannel
from services.notifier.consumer import Record
from services.notifier.sent_log import DEAD, SENT, SUPPRESSED
from tests.support.notices import entry, lot, program, tier_changed
from tests.support.receivers import (
    Mailbox,
    WebhookReceiver,
    smtp_server,
    webhook_server,
)

pytestmark = pytest.mark.integration

SECRET = b"whsec-test"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # noon UTC, a Monday
DAY = timedelta(days=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    notifier: Notifier
    clock: Clock
    mailbox: Mailbox
    hooks: WebhookReceiver

    def feed(self, *entries: LedgerEntry) -> int:
        return self.notifier.recorder.apply(
            Record(TOPIC_LEDGER, 0, e.position or e.seq, e.model_dump_json().encode())
            for e in entries
        )

    def send(self) -> int:
        return asyncio.run(self.notifier.sender.drain())

    def states(self, member: str) -> dict[tuple[str, str], str]:
        return {
            (str(d.notice.kind), d.channel): d.state
            for d in self.notifier.sent_log.deliveries(member)
        }


def _rig(tmp_path: Path, p: Program, hooks: WebhookReceiver, smtp_port: int) -> Iterator[Rig]:
    clock = Clock(T0)
    with webhook_server(hooks) as url:
        notifier = build_notifier(
            p,
            sqlite_url(tmp_path / "notifier.sqlite"),
            [
                SmtpChannel("127.0.0.1", smtp_port, "Loyalty <loyalty@example.com>"),
                WebhookChannel(url, SECRET),
            ],
            clock,
        )
        try:
            yield Rig(notifier, clock, Mailbox(), hooks)
        finally:
            notifier.close()


@pytest.fixture
def smtp() -> Iterator[tuple[int, Mailbox]]:
    with smtp_server() as found:
        yield found


def make_rig(
    tmp_path: Path,
    smtp: tuple[int, Mailbox],
    p: Program | None = None,
    hooks: WebhookReceiver | None = None,
) -> Iterator[Rig]:
    for rig in _rig(tmp_path, p or program(), hooks or WebhookReceiver(SECRET), smtp[0]):
        rig.mailbox = smtp[1]
        yield rig


@pytest.fixture
def rig(tmp_path: Path, smtp: tuple[int, Mailbox]) -> Iterator[Rig]:
    yield from make_rig(tmp_path, smtp)


def delivered(kind: str, channel: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "loyalty_notice_deliveries_total", {"kind": kind, "channel": channel, "outcome": outcome}
    )
    return value or 0.0


def every_kind(rig: Rig, member: str = "m-a") -> None:
    """One cause of each of the seven kinds for `member`."""
    expiring = lot("L2", 40, 40, T0 - 170 * DAY, T0 + 5 * DAY)
    rig.feed(
        entry("m-a", 1, "enrolled", T0 - 40 * DAY, position=1),
        entry(
            member,
            2,
            "points_earned",
            T0 - 20 * DAY,
            available_delta=40,
            available_after=40,
            lots=(expiring,),
            details={"kind": "referral", "reference": "referee:m-z"},
            event_id="ref-1",
            position=2,
        ),
        entry(
            member,
            3,
            "pending_released",
            T0 - DAY,
            available_delta=20,
            available_after=60,
            details={"lot_id": "L3", "points": 20},
            position=3,
        ),
    )
    change = tier_changed(member, "base", "silver", "upgrade", T0 - 300 * DAY, T0 + 10 * DAY)
    rig.notifier.recorder.apply([Record(TOPIC_TIERS, 0, 0, change.model_dump_json().encode())])
    rig.notifier.scanner.scan()  # expiring in 5 days, silver at risk, February's statement


def test_every_kind_arrives_once_by_email_and_by_signed_webhook(rig: Rig) -> None:
    rig.notifier.contacts.set_contact("m-a", "ana@example.com", "Ana")
    every_kind(rig)
    assert rig.send() == 2 * len(NoticeKind)
    kinds = {k.value for k in NoticeKind}
    mails = rig.mailbox.messages
    assert {str(m["X-Loyalty-Notice-Kind"]) for m in mails} == kinds
    assert len(mails) == len(kinds)
    for mail in mails:
        assert mail["To"] == "ana@example.com"
        assert mail["Message-ID"] == message_id(str(mail["X-Loyalty-Notice-Key"]))
        text = mail.get_body(("plain",))
        html = mail.get_body(("html",))
        assert text is not None
        assert html is not None
        assert "Hello Ana" in text.get_content()
        assert "<p>Hello Ana,</p>" in html.get_content()
    by_kind = {str(m["X-Loyalty-Notice-Kind"]): m for m in mails}
    assert by_kind["points_expiring"]["Subject"] == "40 points expire after 2026-03-07"
    assert by_kind["tier_at_risk"]["Subject"] == "Keep Silver: 460 points to go by 2026-03-12"
    assert by_kind["reward_unlocked"]["Subject"] == "You can now get: Free coffee"
    assert by_kind["monthly_statement"]["Subject"] == "Your points in 2026-02"
    hooks = rig.hooks.received
    assert len(hooks) == len(kinds)
    assert all(h.signed for h in hooks)
    assert {h.body["kind"] for h in hooks} == kinds
    assert all(h.key == h.body["id"] for h in hooks)
    assert "ana@example.com" not in str([h.body for h in hooks])  # no contact details
    assert set(rig.states("m-a").values()) == {SENT}
    # The same causes again (a redelivered entry, a repeated scan) record and send nothing.
    every_kind(rig)
    assert rig.send() == 0
    assert len(rig.mailbox.messages) == len(kinds)
    assert len(rig.hooks.received) == len(kinds)


def test_opt_outs_per_channel_and_kind_and_members_without_an_address(rig: Rig) -> None:
    contacts = rig.notifier.contacts
    contacts.set_contact("m-a", "ana@example.com")
    contacts.opt_out("m-a", "email", "reward_unlocked")
    contacts.opt_out("m-a", "webhook", "*")
    before = delivered("reward_unlocked", "email", "suppressed")
    every_kind(rig)
    rig.feed(  # m-b has no email address: webhook only
        entry("m-b", 1, "points_earned", T0, available_delta=60, available_after=60, position=9)
    )
    rig.send()
    states = rig.states("m-a")
    assert states[("reward_unlocked", "email")] == SUPPRESSED
    assert states[("points_expiring", "email")] == SENT
    assert {s for (_, channel), s in states.items() if channel == "webhook"} == {SUPPRESSED}
    assert rig.hooks.notice_keys() == ["m-b|reward_unlocked|coffee|seq-1"]
    assert "reward_unlocked" not in {str(m["X-Loyalty-Notice-Kind"]) for m in rig.mailbox.messages}
    assert rig.states("m-b") == {
        ("reward_unlocked", "email"): SUPPRESSED,
        ("reward_unlocked", "webhook"): SENT,
    }
    assert delivered("reward_unlocked", "email", "suppressed") == before + 2
    # Opting in again does not resurrect what was suppressed, but new notices flow.
    assert contacts.opt_in("m-a", "webhook", "*") == 1
    rig.feed(entry("m-a", 4, "points_earned", T0, available_delta=70, available_after=130))
    rig.send()
    assert "m-a|reward_unlocked|lunch|seq-4" in rig.hooks.notice_keys()


def test_quiet_hours_hold_notices_until_they_end(tmp_path: Path, smtp: tuple[int, Mailbox]) -> None:
    p = program(
        timezone="Europe/Paris",
        notifications={"quiet_hours": {"start": "12:30", "end": "15:00"}},
    )
    for rig in make_rig(tmp_path, smtp, p):
        rig.notifier.contacts.set_contact("m-a", "ana@example.com")
        rig.clock.now = T0 + timedelta(minutes=45)  # 13:45 in Paris
        rig.feed(entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60))
        assert rig.send() == 0
        assert rig.mailbox.messages == []
        (waiting, _) = rig.notifier.sent_log.deliveries("m-a")
        assert waiting.next_attempt_at == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
        rig.clock.now = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
        assert rig.send() == 2
        assert len(rig.mailbox.messages) == 1
        assert len(rig.hooks.received) == 1


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    tmp_path: Path, smtp: tuple[int, Mailbox]
) -> None:
    hooks = WebhookReceiver(SECRET, fail_first=2)
    p = program(notifications={"retry_base_seconds": 60, "attempts": 4})
    for rig in make_rig(tmp_path, smtp, p, hooks):
        retried = delivered("reward_unlocked", "webhook", "retried")
        rig.feed(entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60))
        rig.send()
        (d,) = [x for x in rig.notifier.sent_log.deliveries("m-a") if x.channel == "webhook"]
        assert (d.state, d.attempts, d.next_attempt_at) == ("failed", 1, T0 + timedelta(minutes=1))
        rig.clock.now = T0 + timedelta(seconds=59)
        assert rig.send() == 0  # not yet due
        rig.clock.now = T0 + timedelta(minutes=1)
        rig.send()  # second try fails: the next waits twice as long
        (d,) = [x for x in rig.notifier.sent_log.deliveries("m-a") if x.channel == "webhook"]
        assert (d.attempts, d.next_attempt_at) == (2, T0 + timedelta(minutes=3))
        rig.clock.now = T0 + timedelta(minutes=3)
        rig.send()
        (d,) = [x for x in rig.notifier.sent_log.deliveries("m-a") if x.channel == "webhook"]
        assert (d.state, d.attempts) == (SENT, 3)
        assert hooks.requests == 3
        assert hooks.notice_keys() == ["m-a|reward_unlocked|coffee|seq-2"]
        assert delivered("reward_unlocked", "webhook", "retried") == retried + 2


def test_after_the_last_try_the_notice_is_dead_and_can_be_redriven(
    tmp_path: Path, smtp: tuple[int, Mailbox]
) -> None:
    hooks = WebhookReceiver(SECRET, fail_always=True)
    p = program(notifications={"retry_base_seconds": 1, "attempts": 3})
    for rig in make_rig(tmp_path, smtp, p, hooks):
        rig.feed(entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60))
        for second in (0, 1, 3, 10):
            rig.clock.now = T0 + timedelta(seconds=second)
            rig.send()
        (d,) = rig.notifier.sent_log.deliveries("m-a", DEAD)
        assert (d.channel, d.attempts, d.last_error) == ("webhook", 3, "webhook: HTTP 500")
        assert hooks.requests == 3
        hooks.fail_always = False
        assert rig.notifier.sent_log.redrive(rig.clock.now) == 1
        rig.send()
        assert hooks.notice_keys() == ["m-a|reward_unlocked|coffee|seq-2"]


def test_an_smtp_server_that_is_down_is_retried(tmp_path: Path) -> None:
    with smtp_server() as (port, mailbox):
        pass  # stopped: nothing listens on the port now
    for rig in make_rig(tmp_path, (port, mailbox)):
        rig.notifier.contacts.set_contact("m-a", "ana@example.com")
        rig.feed(entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60))
        rig.send()
        assert rig.states("m-a")[("reward_unlocked", "email")] == "failed"


def test_no_reminder_for_points_spent_after_it_was_scheduled(rig: Rig) -> None:
    rig.notifier.contacts.set_contact("m-a", "ana@example.com")
    earned = lot("L2", 40, 40, T0 - 170 * DAY, T0 + 5 * DAY)
    other = lot("L3", 10, 10, T0 - 160 * DAY, T0 + 6 * DAY)
    rig.feed(entry("m-a", 2, "points_earned", T0 - 170 * DAY, lots=(earned,), position=2))
    rig.feed(entry("m-a", 3, "points_earned", T0 - 160 * DAY, lots=(other,), position=3))
    assert rig.notifier.scanner.scan() == 2  # two reminders recorded, not yet sent
    spent = lot("L2", 40, 0, T0 - 170 * DAY, T0 + 5 * DAY)
    partly = lot("L3", 10, 4, T0 - 160 * DAY, T0 + 6 * DAY)
    rig.feed(entry("m-a", 4, "points_redeemed", T0, lots=(spent, partly), position=4))
    rig.send()
    states = rig.states("m-a")
    assert states[("points_expiring", "email")] == SENT
    mails = rig.mailbox.messages
    assert [m["Subject"] for m in mails] == ["4 points expire after 2026-03-08"]
    suppressed = rig.notifier.sent_log.deliveries("m-a", SUPPRESSED)
    assert {(d.notice.subject, d.last_error) for d in suppressed} == {
        ("2026-03-07", "points no longer unspent")
    }


def test_erasing_a_member_removes_contacts_and_suppresses_what_was_not_sent(rig: Rig) -> None:
    contacts = rig.notifier.contacts
    contacts.set_contact("m-a", "ana@example.com", "Ana")
    contacts.opt_out("m-a", "email", "monthly_statement")
    rig.feed(entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60))
    contacts.erase("m-a")
    assert contacts.contact("m-a") is None
    assert contacts.opt_outs("m-a") == []
    assert rig.notifier.snapshots.entries("m-a") == []
    rig.send()
    assert rig.mailbox.messages == []
    assert rig.hooks.received == []
    assert set(rig.states("m-a").values()) == {SUPPRESSED}


class _Broken:
    """A channel with a bug: it raises something other than DeliveryError."""

    name = "broken"

    def unreachable(self, contact: object) -> str | None:
        return None

    async def send(self, notice: object, rendered: object, contact: object) -> None:
        raise RuntimeError("boom")

    async def close(self) -> None:
        return None


def test_a_channel_bug_fails_its_rows_without_stopping_the_others(
    tmp_path: Path, smtp: tuple[int, Mailbox]
) -> None:
    p = program(notifications={"attempts": 2, "retry_base_seconds": 1})
    clock = Clock(T0)
    notifier = build_notifier(
        p,
        sqlite_url(tmp_path / "n.sqlite"),
        [_Broken(), SmtpChannel("127.0.0.1", smtp[0], "loyalty@example.com")],
        clock,
    )
    try:
        notifier.contacts.set_contact("m-a", "ana@example.com")
        crossing = entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60)
        notifier.recorder.apply([Record(TOPIC_LEDGER, 0, 2, crossing.model_dump_json().encode())])
        asyncio.run(notifier.sender.drain())
        clock.now = T0 + timedelta(seconds=5)
        asyncio.run(notifier.sender.drain())
        states = {(d.channel, d.state, d.attempts) for d in notifier.sent_log.deliveries("m-a")}
        assert states == {("broken", DEAD, 2), ("email", SENT, 1)}
        assert len(smtp[1].messages) == 1
    finally:
        notifier.close()
