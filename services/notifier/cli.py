"""`loyalty notify ...`: run the notifier, scan, send, and manage members' contacts and
preferences (the same `MemberContacts` service an HTTP API can call)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.text import has_control, printable
from services.ledger.adapters.program_file import ProgramFileError, load_program
from services.ledger.bootstrap import Settings
from services.notifier.bootstrap import (
    Notifier,
    NotifierSettings,
    build_notifier,
    channels_from,
)
from services.notifier.contacts import PreferenceError

notify_app = typer.Typer(
    help="Notices to members: expiring points, tiers, rewards, referrals, statements.",
    no_args_is_help=True,
)

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--notifier-db",
        help="sqlite:///<file> or postgresql://...; env LOYALTY_NOTIFIER_DB "
        "(default sqlite:///var/notifier.sqlite).",
    ),
]
ProgramOpt = Annotated[
    Path | None, typer.Option("--program", help="Program file (YAML); env LOYALTY_PROGRAM.")
]
NowOpt = Annotated[
    datetime | None,
    typer.Option("--now", help="Instant to act at (RFC 3339, with zone); default: now."),
]


def _settings(db: str | None, **overrides: Any) -> NotifierSettings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if db is not None:
        values["db"] = db
    return NotifierSettings(**values)


@contextmanager
def _notifier(
    db: str | None, program: Path | None, *, channels: bool = False, now: datetime | None = None
) -> Iterator[Notifier]:
    settings = _settings(db)
    program_path = program or Settings().program
    try:
        loaded = load_program(program_path)
    except ProgramFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if now is not None and now.tzinfo is None:
        typer.echo("--now needs a time zone, e.g. 2026-11-20T10:00:00Z", err=True)
        raise typer.Exit(2)
    clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    notifier = build_notifier(
        loaded, settings.db, channels_from(settings) if channels else [], clock
    )
    try:
        yield notifier
    finally:
        notifier.close()


@notify_app.command("run")
def run(
    bootstrap: Annotated[
        str, typer.Option("--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS")
    ] = "127.0.0.1:9092",
    scan_interval: Annotated[float, typer.Option(help="Seconds between expiry scans.")] = 3600,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="LOYALTY_NOTIFIER_METRICS_PORT", help="Prometheus /metrics port (0: off)."
        ),
    ] = 9466,
    metrics_host: Annotated[
        str,
        typer.Option(
            envvar="LOYALTY_METRICS_HOST",
            help="Interface /metrics listens on (0.0.0.0 in a container, for Prometheus).",
        ),
    ] = "127.0.0.1",
    db: DbOpt = None,
    program: ProgramOpt = None,
) -> None:
    """Consume loyalty.ledger.v1 and loyalty.tiers.v1, scan, and send until SIGTERM.

    Channels come from the environment: LOYALTY_NOTIFIER_SMTP_HOST/_SMTP_PORT/_MAIL_FROM
    for email, LOYALTY_NOTIFIER_WEBHOOK_URL/_WEBHOOK_SECRET for signed webhooks."""
    from prometheus_client import start_http_server

    from services.ledger.adapters.kafka_clients import configure_logging
    from services.notifier.bootstrap import serve

    configure_logging()
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
    with _notifier(db, program, channels=True) as notifier:
        if not notifier.sender.channels:
            typer.echo("no channel configured (SMTP host or webhook URL)", err=True)
            raise typer.Exit(2)
        asyncio.run(serve(notifier, bootstrap, scan_interval=scan_interval))


@notify_app.command("scan")
def scan(db: DbOpt = None, program: ProgramOpt = None, now: NowOpt = None) -> None:
    """Record the expiry reminders, tier-at-risk notices and statements due now."""
    with _notifier(db, program, channels=True, now=now) as notifier:
        typer.echo(f"{notifier.scanner.scan()} new notices")


@notify_app.command("send")
def send(db: DbOpt = None, program: ProgramOpt = None, now: NowOpt = None) -> None:
    """Deliver every notice due now on the configured channels, then exit."""
    with _notifier(db, program, channels=True, now=now) as notifier:
        notifier.sender.recover()
        handled = asyncio.run(notifier.sender.drain())
        typer.echo(f"{handled} deliveries handled; {notifier.sent_log.counts()}")


@notify_app.command("log")
def log(
    member: Annotated[str | None, typer.Argument()] = None,
    state: Annotated[str | None, typer.Option(help="pending, sent, failed, dead, ...")] = None,
    db: DbOpt = None,
    program: ProgramOpt = None,
) -> None:
    """The sent-log: each notice, its channel, state, tries and cause."""
    with _notifier(db, program) as notifier:
        rows = notifier.sent_log.deliveries(member, state)
        for d in rows:
            n = d.notice
            when = d.sent_at.isoformat() if d.sent_at else d.next_attempt_at.isoformat()
            head = (
                f"{n.key}  {d.channel} {d.state} tries={d.attempts} at={when}"
                + (f" error={d.last_error}" if d.last_error else "")
                + (" in-doubt" if d.in_doubt else "")
            )
            # Each line neutralised on its own: stored text adds no line.
            typer.echo(f"{printable(head)}\n{printable(f'    cause: {n.cause}; data: {n.data}')}")
        typer.echo(f"{len(rows)} deliveries")


@notify_app.command("redrive")
def redrive(db: DbOpt = None, program: ProgramOpt = None) -> None:
    """Send dead notices again (their tries start over)."""
    with _notifier(db, program) as notifier:
        typer.echo(f"{notifier.sent_log.redrive(datetime.now(UTC))} dead deliveries queued again")


def _stored_text(value: str | None) -> str | None:
    """A contact detail the notifier stores holds no control character."""
    if value is not None and has_control(value):
        raise typer.BadParameter("no control characters (tab, line break, NUL, ...)")
    return value


@notify_app.command("contact")
def contact(
    member: str,
    email: Annotated[
        str | None, typer.Option(help="Email address (omit to clear).", callback=_stored_text)
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name used in greetings.", callback=_stored_text)
    ] = None,
    db: DbOpt = None,
    program: ProgramOpt = None,
) -> None:
    """Set a member's contact details (kept by the notifier, never in the ledger)."""
    with _notifier(db, program) as notifier:
        try:
            notifier.contacts.set_contact(member, email, name)
        except PreferenceError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        typer.echo(f"{member}: email {email or '-'}, name {name or '-'}")


ChannelOpt = Annotated[str, typer.Option(help="email, webhook or * (every channel).")]
KindOpt = Annotated[str, typer.Option(help="A notice kind, or * (every kind).")]


@notify_app.command("opt-out")
def opt_out(member: str, channel: ChannelOpt = "*", kind: KindOpt = "*", db: DbOpt = None) -> None:
    """Stop a kind of notice (or all) on a channel (or all) for a member."""
    with _notifier(db, None) as notifier:
        try:
            notifier.contacts.opt_out(member, channel, kind)
        except PreferenceError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        typer.echo(f"{member}: opted out of {kind} on {channel}")


@notify_app.command("opt-in")
def opt_in(member: str, channel: ChannelOpt = "*", kind: KindOpt = "*", db: DbOpt = None) -> None:
    """Remove an opt-out (the same channel and kind it was given with)."""
    with _notifier(db, None) as notifier:
        try:
            removed = notifier.contacts.opt_in(member, channel, kind)
        except PreferenceError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        typer.echo(f"{member}: {removed} opt-out removed")


@notify_app.command("prefs")
def prefs(member: str, db: DbOpt = None) -> None:
    """A member's contact details and opt-outs."""
    with _notifier(db, None) as notifier:
        found = notifier.contacts.contact(member)
        typer.echo(
            printable(
                f"{member}: email {found.email if found and found.email else '-'},"
                f" name {found.name if found and found.name else '-'}"
            )
        )
        for channel, kind in notifier.contacts.opt_outs(member):
            typer.echo(f"  opted out: {kind} on {channel}")


@notify_app.command("erase")
def erase(member: str, db: DbOpt = None) -> None:
    """Erase a member's contact details, preferences and the notifier's copy of their
    history; undelivered notices are suppressed."""
    with _notifier(db, None) as notifier:
        notifier.contacts.erase(member)
        typer.echo(f"{member}: erased")
