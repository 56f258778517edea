"""Builds the notifier from settings (the one place that wires its classes together) and
runs it: consumer, scheduled scan and sender in one process until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.ledger.domain.program import Program
from services.notifier.channels import Channel
from services.notifier.consumer import KafkaNotices, NoticeRecorder
from services.notifier.contacts import MemberContacts
from services.notifier.database import Database
from services.notifier.scheduler import Scanner
from services.notifier.sender import Sender
from services.notifier.sent_log import SentLog
from services.notifier.snapshots import Snapshots


class NotifierSettings(BaseSettings):
    """Configuration from the environment (prefix LOYALTY_NOTIFIER_) or arguments."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_NOTIFIER_", extra="ignore")

    db: str = Field(
        default="sqlite:///var/notifier.sqlite",
        description="sqlite:///<file> (default) or postgresql://... (production)",
    )
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    mail_from: str = "Loyalty <loyalty@localhost>"
    webhook_url: str | None = None
    webhook_secret: str | None = None


def system_now() -> datetime:
    return datetime.now(UTC)


def channels_from(settings: NotifierSettings) -> list[Channel]:
    # Imported here: their clients (httpx, aiosmtplib) cost every `loyalty` command about
    # 0.2 s of start-up, and only the notifier's own commands send.
    from services.notifier.channels.smtp import SmtpChannel
    from services.notifier.channels.webhook import WebhookChannel

    found: list[Channel] = []
    if settings.smtp_host:
        found.append(
            SmtpChannel(
                settings.smtp_host,
                settings.smtp_port,
                settings.mail_from,
                username=settings.smtp_username,
                password=settings.smtp_password,
                start_tls=settings.smtp_starttls,
            )
        )
    if settings.webhook_url:
        if not settings.webhook_secret:
            raise ValueError(
                "a webhook URL needs a signing secret (LOYALTY_NOTIFIER_WEBHOOK_SECRET)"
            )
        found.append(WebhookChannel(settings.webhook_url, settings.webhook_secret.encode()))
    return found


@dataclass
class Notifier:
    db: Database
    program: Program
    sent_log: SentLog
    contacts: MemberContacts
    snapshots: Snapshots
    recorder: NoticeRecorder
    scanner: Scanner
    sender: Sender

    def close(self) -> None:
        self.db.close()


def build_notifier(
    program: Program,
    db_url: str,
    channels: Sequence[Channel],
    clock: Callable[[], datetime] = system_now,
) -> Notifier:
    db = Database(db_url)
    sent_log = SentLog(db)
    snapshots = Snapshots(db)
    contacts = MemberContacts(db)
    names = [c.name for c in channels]
    return Notifier(
        db,
        program,
        sent_log,
        contacts,
        snapshots,
        NoticeRecorder(sent_log, snapshots, program, names, clock),
        Scanner(sent_log, snapshots, program, names, clock),
        Sender(sent_log, contacts, snapshots, {c.name: c for c in channels}, program, clock),
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


async def serve(
    notifier: Notifier,
    bootstrap: str,
    *,
    scan_interval: float = 3600.0,
    send_interval: float = 1.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Graceful stop after the send in hand; a hard kill loses nothing (see sent_log)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    wake = notifier.sender.wake
    tasks = [
        asyncio.create_task(KafkaNotices(notifier.recorder, bootstrap).run(stop, wake)),
        asyncio.create_task(notifier.scanner.run(stop, scan_interval, wake)),
        asyncio.create_task(notifier.sender.run(stop, send_interval)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
