"""The `loyalty` command line: ingest, balances, statements, verify, operations and the demo."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.outbound import TierProgressOut
from schemas.text import has_control, printable
from services.ledger.adapters.program_file import ProgramFileError, load_program
from services.ledger.application.service import Ledger, MemberBalanceView
from services.ledger.application.verify import verify
from services.ledger.application.views import EntryRow
from services.ledger.bootstrap import Settings, build_ledger
from services.ledger.domain.errors import Declined

app = typer.Typer(
    help="Loyalty points ledger: every point explained, never counted twice.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
program_app = typer.Typer(help="Program files: validate and show.", no_args_is_help=True)
tier_app = typer.Typer(help="Member tiers: ops overrides.", no_args_is_help=True)
tiers_app = typer.Typer(
    help="The tiers projection: run it, compare it with the ledger, explain a history.",
    no_args_is_help=True,
)
topics_app = typer.Typer(help="Kafka topics of the contract.", no_args_is_help=True)
app.add_typer(program_app, name="program")
app.add_typer(tier_app, name="tier")
app.add_typer(tiers_app, name="tiers")
app.add_typer(topics_app, name="topics")

BootstrapOpt = Annotated[
    str,
    typer.Option("--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."),
]

ProgramOpt = Annotated[
    Path | None,
    typer.Option("--program", help="Program file (YAML); env LOYALTY_PROGRAM."),
]
DbOpt = Annotated[
    Path | None, typer.Option("--db", help="SQLite file of the ledger; env LOYALTY_DB.")
]
NowOpt = Annotated[
    datetime | None,
    typer.Option("--now", help="Instant to act at (RFC 3339, with zone); default: now."),
]
AsOfOpt = Annotated[
    datetime | None,
    typer.Option(
        "--as-of",
        "--now",
        help="The balance as the ledger stood at this instant (RFC 3339, with zone; a later "
        "one counts what will be due by then); default: now.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
MetricsHostOpt = Annotated[
    str,
    typer.Option(
        envvar="LOYALTY_METRICS_HOST",
        help="Interface /metrics listens on (0.0.0.0 in a container, for Prometheus).",
    ),
]


def _settings(program: Path | None, db: Path | None) -> Settings:
    overrides: dict[str, Any] = {}
    if program is not None:
        overrides["program"] = program
    if db is not None:
        overrides["db"] = db
    return Settings(**overrides)


@contextmanager
def _ledger(program: Path | None, db: Path | None) -> Iterator[Ledger]:
    try:
        ledger = build_ledger(_settings(program, db))
    except ProgramFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        ledger.catch_up()
        yield ledger
    finally:
        ledger.close()


def _aware(now: datetime | None, option: str = "--now") -> datetime | None:
    if now is not None and now.tzinfo is None:
        typer.echo(f"{option} needs a time zone, e.g. 2026-11-20T10:00:00Z", err=True)
        raise typer.Exit(2)
    return now


@app.command()
def ingest(
    events: Annotated[Path, typer.Argument(help="JSON-lines file of inbound events.")],
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Apply a JSON-lines file of events (same validation and rules as Kafka ingest), each
    as of its own time: a history imported in order gives the ledger live processing gave."""
    if not events.is_file():
        typer.echo(f"no such file: {events}", err=True)
        raise typer.Exit(2)
    with _ledger(program, db) as ledger:
        report = ledger.ingest_lines(events)
    for line, outcome in report.rejected:
        typer.echo(f"line {line}: rejected ({outcome.reason}): {outcome.detail}", err=True)
    for line, outcome in report.parked:
        typer.echo(
            f"line {line}: parked, waiting ({outcome.reason}): {outcome.detail}; retried as the "
            "member's account changes (loyalty rejections --parked)",
            err=True,
        )
    typer.echo(
        f"{report.applied} applied, {report.duplicates} duplicates, {len(report.rejected)} rejected"
        + (f", {len(report.parked)} parked" if report.parked else "")
    )
    if report.rejected:
        raise typer.Exit(1)


def _format_balance(b: MemberBalanceView) -> str:
    expiring = ", ".join(f"{v} in {k}d" for k, v in b.expiring.items())
    return (
        f"{b.member_id}: {b.available} available, {b.pending} pending, {b.held} held; "
        f"lifetime {b.lifetime_earned}; tier {b.tier or '-'}; expiring {expiring} "
        f"(as of {b.as_of.isoformat()}, ledger position {b.as_of_position})"
    )


def _format_tier(held_until: datetime | None, progress: TierProgressOut | None) -> str:
    if progress is None:
        return ""
    held = f"held until {held_until.date().isoformat()}; " if held_until else ""
    toward = (
        f"{progress.qualifying_value} of {progress.next_threshold} {progress.basis} "
        f"for {progress.next_tier}"
        if progress.next_tier
        else f"{progress.qualifying_value} {progress.basis}, top tier"
    )
    return f"  tier {held}{toward} by {progress.period_end.date().isoformat()}"


def _balance_json(b: MemberBalanceView) -> dict[str, Any]:
    return {
        "member_id": b.member_id,
        "available": b.available,
        "pending": b.pending,
        "held": b.held,
        "lifetime_earned": b.lifetime_earned,
        "tier": b.tier,
        "expiring": {f"{k}d": v for k, v in b.expiring.items()},
        "as_of": b.as_of.isoformat(),
        "as_of_position": b.as_of_position,
    }


@app.command()
def balance(
    member: str,
    program: ProgramOpt = None,
    db: DbOpt = None,
    as_of: AsOfOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A member's balance (points already due to expire are never shown as available).

    With --as-of (or --now) a past instant, the balance as the ledger stood then: the
    entries in recorded order up to the first one effective after it (docs/architecture.md).
    """
    from services.tiers.rebuild import balance_tier_fields

    at = _aware(as_of, "--as-of")
    with _ledger(program, db) as ledger:
        try:
            found = ledger.balance(member, at)
        except Declined as exc:
            typer.echo(exc.detail, err=True)
            raise typer.Exit(2) from None
        if found is None:
            typer.echo(f"{member} is not a member", err=True)
            raise typer.Exit(1)
        through = None if at is None else found.entries  # as of then: its entries so far
        held_until, progress = balance_tier_fields(ledger.app, member, found.as_of, through)
    if as_json:
        shown = _balance_json(found)
        shown["tier_held_until"] = held_until.isoformat() if held_until else None
        shown["tier_progress"] = progress.model_dump(mode="json") if progress else None
        typer.echo(json.dumps(shown))
    else:
        typer.echo(_format_balance(found) + _format_tier(held_until, progress))


def _stored_text(value: str) -> str:
    """Text the ledger records (a reason, an actor) holds no control character."""
    if has_control(value):
        raise typer.BadParameter("no control characters (tab, line break, NUL, ...)")
    return value


def _format_entry(row: EntryRow) -> str:
    body = row.body
    prov = body["provenance"]
    origin = prov["origin"]
    where = origin["channel"]
    for key in ("topic", "partition", "offset", "file", "line", "request_id", "actor"):
        if origin.get(key) is not None:
            where += f" {key}={origin[key]}"
    bal = body["balance_after"]
    source = f"event {prov['event_id']}" if prov.get("event_id") else "no event"
    lots = " ".join(f"{m['lot_id']}{m['amount']:+d}" for m in body["moves"])
    # Each line neutralised on its own: stored text (a note made from a void reason, an
    # actor, a request id) never adds a line or moves the cursor.
    first = (
        f"#{row.seq:<3} {row.effective_at.date().isoformat()} {row.entry_type:<20} "
        f"{body['points']:>+6}  avail {bal['available']:>5} pend {bal['pending']:>4}  "
        f"{body['note']}"
    )
    second = (
        f"      {source} via {where}; rule {prov.get('rule_id') or '-'}; "
        f"program {prov.get('program_version') or '-'}; tier {prov.get('tier') or '-'}"
        + (f"; lots {lots}" if lots else "")
    )
    return f"{printable(first)}\n{printable(second)}"


@app.command()
def statement(
    member: str,
    program: ProgramOpt = None,
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    before: Annotated[int | None, typer.Option(help="Page: entries before this seq.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every entry of a member's account, newest first, with where each point came from."""
    with _ledger(program, db) as ledger:
        rows = ledger.statement(member, before_seq=before, limit=limit)
    if not rows:
        typer.echo(f"{member} has no entries", err=True)
        raise typer.Exit(1)
    for row in rows:
        typer.echo(json.dumps(row.body) if as_json else _format_entry(row))


@app.command()
def lots(member: str, program: ProgramOpt = None, db: DbOpt = None) -> None:
    """A member's lots: what each earn left, and when it is released and expires."""
    with _ledger(program, db) as ledger:
        found = ledger.lots(member)
    for lot in found:
        typer.echo(
            f"{lot.lot_id:<6} {lot.source:<28} {lot.remaining:>6}/{lot.amount:<6} {lot.status:<9} "
            f"earned {lot.earned_at.date()} "
            f"release {lot.release_at.isoformat() if lot.release_at else '-'} "
            f"expires {lot.expires_at.isoformat() if lot.expires_at else 'never'}"
        )


@contextmanager
def _progress_bar() -> Iterator[Any]:
    """A rich progress bar (on stderr) fed by (stage, done, total), only when stdout is a
    terminal; otherwise a callback that does nothing."""
    import sys

    if not sys.stdout.isatty():
        from services.ledger.application.what_if import _nothing

        yield _nothing
        return
    from rich.console import Console
    from rich.progress import Progress

    tasks: dict[str, Any] = {}
    with Progress(console=Console(stderr=True), transient=True) as bar:

        def show(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield show


@app.command(name="verify")
def verify_cmd(program: ProgramOpt = None, db: DbOpt = None) -> None:
    """Check every invariant against the store, and make every entry again from the
    receipts and operations (replay) to compare; exit 1 on any violation."""
    from services.tiers.rebuild import tier_differences

    with _ledger(program, db) as ledger:
        report = verify(ledger.app, ledger.view)
        report.violations += tier_differences(ledger.app)
    for violation in report.violations:
        typer.echo(f"VIOLATION {violation}", err=True)
    typer.echo(
        f"{report.members} members, {report.entries} entries, {report.receipts} receipts "
        f"({report.replayed_events} events and {report.replayed_operations} operations "
        "replayed, every entry made again): "
        + ("all invariants hold" if report.ok else f"{len(report.violations)} violations")
    )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def tick(program: ProgramOpt = None, db: DbOpt = None, now: NowOpt = None) -> None:
    """Do the time-driven work due now (idempotent for an instant): release pending points,
    expire lots and holds, tier period-end reviews, and decline parked events past their
    deadline."""
    with _ledger(program, db) as ledger:
        made = ledger.tick(_aware(now))
    typer.echo(f"{made} entries")


@app.command()
def adjust(
    member: str,
    points: Annotated[int, typer.Argument(help="Signed points: 50, or -- -20 to remove.")],
    reason: Annotated[
        str, typer.Option(help="Why (required, recorded on the entry).", callback=_stored_text)
    ],
    actor: Annotated[
        str, typer.Option(help="Operator id (recorded on the entry).", callback=_stored_text)
    ],
    allow_negative: bool = False,
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Add or remove points by hand, with a reason and the operator's id."""
    with _ledger(program, db) as ledger:
        try:
            entries = ledger.app.adjust(
                member, points, reason=reason, actor=actor, allow_negative=allow_negative
            )
        except Declined as exc:
            typer.echo(f"declined ({exc.reason}): {exc.detail}", err=True)
            raise typer.Exit(1) from None
        ledger.catch_up()
    typer.echo(f"recorded {', '.join(entries)}")


@tier_app.command("assign")
def tier_assign(
    member: str,
    tier: str,
    reason: Annotated[str, typer.Option(callback=_stored_text)],
    actor: Annotated[str, typer.Option(callback=_stored_text)],
    until: Annotated[
        datetime | None,
        typer.Option(help="When the override ends (ISO date or instant, UTC if naive)."),
    ] = None,
    lock: Annotated[
        bool,
        typer.Option(
            "--lock/--no-lock",
            help="Locked: automatic tier changes wait until --until (forever without it).",
        ),
    ] = False,
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Override a member's tier (ops); the tiers service normally sets it from activity."""
    ends = until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until
    with _ledger(program, db) as ledger:
        try:
            entries = ledger.app.assign_tier(
                member, tier, reason=reason, actor=actor, until=ends, locked=lock
            )
        except Declined as exc:
            typer.echo(f"declined ({exc.reason}): {exc.detail}", err=True)
            raise typer.Exit(1) from None
        ledger.catch_up()
    typer.echo(f"recorded {', '.join(entries)}")


@app.command()
def rebuild(program: ProgramOpt = None, db: DbOpt = None) -> None:
    """Rebuild the projections from zero in a fresh table set, then switch to it.

    Running services keep serving the old tables meanwhile and switch on their next tick.
    """
    with _ledger(program, db) as ledger:
        before = ledger.view.tracking_key.removesuffix("ledger")
        prefix, count = ledger.rebuild()
    typer.echo(f"rebuilt from {count} entries into {prefix}*; switched from {before}*")


@app.command()
def rejections(
    program: ProgramOpt = None,
    db: DbOpt = None,
    parked: Annotated[
        bool,
        typer.Option(
            "--parked",
            help="Events waiting for what they depend on (retried as the member's account "
            "changes, declined at their deadline) instead of the rejections.",
        ),
    ] = False,
) -> None:
    """Inbound events the ledger did not apply, with the reason and where they came from."""
    if parked:
        with _ledger(program, db) as ledger:
            waiting = ledger.app.parked()
        for member_id, item in waiting:
            typer.echo(
                printable(
                    f"{item.occurred_at.isoformat()} {member_id} {item.event_type} "
                    f"{item.event_id}: waits ({item.reason}: {item.detail}) until "
                    f"{item.deadline.isoformat()}"
                )
            )
        typer.echo(f"{len(waiting)} parked")
        return
    with _ledger(program, db) as ledger:
        found = ledger.app.rejections()
    for r in found:
        tries = "; ".join(
            f"re-driven {at.isoformat()} by {who}: {what}" for at, what, who in r.redriven
        )
        typer.echo(
            printable(
                f"{r.rejected_at.isoformat()} {r.origin.key()} {r.reason}: {r.detail}"
                + (f" (event {r.event_id})" if r.event_id else "")
                + (f" [{tries}]" if tries else "")
            )
        )
    typer.echo(f"{len(found)} rejections")


@app.command("redrive")
def redrive(
    actor: Annotated[
        str, typer.Option(help="Who re-drives (recorded on every attempt).", callback=_stored_text)
    ],
    reason: Annotated[
        list[str] | None, typer.Option(help="Only rejections with this reason (repeatable).")
    ] = None,
    event_id: Annotated[
        list[str] | None, typer.Option(help="Only these events (repeatable).")
    ] = None,
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Apply declined events again, e.g. redemptions that arrived before the purchase that
    funds them. Each is applied at most once; invalid input is never re-driven."""
    with _ledger(program, db) as ledger:
        results = ledger.app.redrive(actor=actor, reasons=reason or (), event_ids=event_id or ())
        ledger.catch_up()
    for r in results:
        typer.echo(printable(f"{r.event_id or r.rejection_id}: {r.outcome} ({r.detail})"))
    applied = sum(1 for r in results if r.outcome == "applied")
    typer.echo(f"{len(results)} re-driven: {applied} applied, {len(results) - applied} not")


@program_app.command("validate")
def program_validate(path: Path) -> None:
    """Validate a program file and print its version."""
    try:
        loaded = load_program(path)
    except ProgramFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{path}: valid, version {loaded.version}")


@program_app.command("show")
def program_show(path: Annotated[Path | None, typer.Argument()] = None) -> None:
    """Print the program (validated, with defaults filled in) as JSON."""
    settings = _settings(path, None)
    try:
        loaded = load_program(settings.program)
    except ProgramFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"version": loaded.version, **loaded.model_dump(mode="json")}, indent=2))


@app.command()
def demo(
    db: Annotated[
        Path | None, typer.Option(help="Keep the demo ledger in this SQLite file.")
    ] = None,
) -> None:
    """Run a coffee-chain program end to end and explain every member's points."""
    from services.ledger.demo import run_demo

    if db is None:
        with tempfile.TemporaryDirectory(prefix="loyalty-demo-") as tmp:
            run_demo(Path(tmp) / "demo.sqlite", typer.echo, _format_balance, _format_entry)
    else:
        run_demo(db, typer.echo, _format_balance, _format_entry)


@app.command()
def serve(
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    ingest: Annotated[bool, typer.Option(help="Consume the inbound topics.")] = True,
    relay: Annotated[bool, typer.Option(help="Publish entries, balances, dead letters.")] = True,
    group_id: Annotated[str, typer.Option(help="Consumer group of the ingest.")] = "loyalty-ledger",
    max_batch: Annotated[
        int,
        typer.Option(
            envvar="LOYALTY_MAX_BATCH", min=1, max=100_000, help="Records fetched per poll."
        ),
    ] = 2000,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="LOYALTY_METRICS_PORT", help="Serve Prometheus /metrics here (0: off)."
        ),
    ] = 9464,
    metrics_host: MetricsHostOpt = "127.0.0.1",
    project: Annotated[
        bool | None,
        typer.Option(
            "--project/--no-project",
            help="Ingest updates the views after each batch (default: only without --relay). "
            "--no-ingest and --no-relay --no-project split the work over two processes.",
        ),
    ] = None,
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Run Kafka ingest and the outbox relay until SIGTERM/SIGINT (graceful)."""
    import asyncio

    from services.ledger.adapters.kafka_clients import configure_logging
    from services.ledger.adapters.kafka_runner import serve as run_serve
    from services.ledger.adapters.metrics import serve_metrics

    configure_logging()
    if metrics_port:
        serve_metrics(metrics_port, metrics_host)
    with _ledger(program, db) as ledger:
        asyncio.run(
            run_serve(
                ledger,
                bootstrap,
                ingest=ingest,
                relay=relay,
                group_id=group_id,
                max_batch=max_batch,
                project=project,
            )
        )


@app.command()
def audit(
    member: str,
    program: ProgramOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The member's every entry, oldest first, with provenance, source event and lots touched."""
    from services.ledger.application.audit import audit as run_audit

    with _ledger(program, db) as ledger:
        found = run_audit(ledger, member)
    if found is None:
        typer.echo(f"{member} is not a member", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(audit_json(found), indent=2))
        return
    typer.echo(_format_balance(found.balance))
    for line in found.lines:
        e = line.entry
        typer.echo(
            _format_entry(
                EntryRow(
                    e.position or 0,
                    member,
                    e.seq,
                    e.entry_type,
                    e.effective_at,
                    e.model_dump(mode="json"),
                )
            )
        )
        if line.source_event is not None:
            typer.echo(f"      source event: {json.dumps(line.source_event, sort_keys=True)}")
        for lot in e.lots_after:
            expires = lot.expires_at.isoformat() if lot.expires_at else "never"
            typer.echo(
                printable(
                    f"      lot {lot.lot_id} ({lot.source}): {lot.remaining}/{lot.amount} "
                    f"{lot.status}, expires {expires}"
                )
            )
    verdict = "explained" if found.explained else "NOT explained"
    typer.echo(
        f"entries add up to {found.entries_total}; the balance holds {found.recorded_total}: "
        f"{verdict}"
    )
    if not found.explained:
        raise typer.Exit(1)


def audit_json(found: Any) -> dict[str, Any]:
    return {
        "member_id": found.member_id,
        "balance": _balance_json(found.balance),
        "entries": [
            {**line.entry.model_dump(mode="json"), "source_event": line.source_event}
            for line in found.lines
        ],
        "entries_total": found.entries_total,
        "recorded_total": found.recorded_total,
        "explained": found.explained,
    }


@app.command(name="what-if")
def what_if_cmd(
    new_program: Annotated[
        Path, typer.Option("--program", help="The other program version (YAML).")
    ],
    member: Annotated[str | None, typer.Option(help="Only this member.")] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Post the differences as adjustments (once).")
    ] = False,
    actor: Annotated[
        str, typer.Option(help="Operator id recorded on adjustments.", callback=_stored_text)
    ] = "what-if",
    ledger_program: Annotated[
        Path | None,
        typer.Option("--ledger-program", help="The ledger's own program; env LOYALTY_PROGRAM."),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute members' histories under another program and show what they would have.

    Tiers are decided again under the other program (its thresholds, window and grace):
    the replay runs the same account code, which decides them inline; only ops overrides
    are replayed as recorded."""
    from services.ledger.application.what_if import what_if

    try:
        other = load_program(new_program)
    except ProgramFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    with _ledger(ledger_program, db) as ledger, _progress_bar() as progress:
        report = what_if(ledger, other, member=member, apply=apply, actor=actor, progress=progress)
    if as_json:
        typer.echo(json.dumps(what_if_json(report), indent=2))
        return
    for line in format_what_if(report):
        typer.echo(line)


def what_if_json(report: Any) -> dict[str, Any]:
    from services.ledger.api.convert import what_if_report

    return what_if_report(report).model_dump(mode="json")


def format_what_if(report: Any) -> list[str]:
    lines = [
        f"what-if run {report.run_id}: program {report.program_version} instead of "
        f"{report.current_version}, ledger position {report.position}, "
        f"as of {report.as_of.isoformat()}",
        f"replayed {report.replayed_events} events and {report.replayed_operations} "
        f"operations; {len(report.skipped)} skipped",
        f"tiers {'decided again under it' if report.tiers_recomputed else 'none (no tiers)'}: "
        f"{report.tier_changes} tier changes",
        *(f"  skipped {s}" for s in report.skipped),
        f"{'member':<16} {'now':>8} {'would have':>11} {'difference':>11} "
        f"{'lifetime now':>13} {'would have':>11}",
    ]
    for d in report.members:
        lines.append(
            f"{d.member_id:<16} {d.actual:>8} {d.would_have:>11} {d.difference:>+11} "
            f"{d.actual_lifetime:>13} {d.would_have_lifetime:>11}"
        )
    total = sum(d.difference for d in report.members)
    lines.append(f"total difference {total:+d} points over {len(report.members)} members")
    if report.posted:
        lines.append(f"posted {len(report.posted)} adjustments: {', '.join(report.posted)}")
    return lines


@app.command()
def replay(
    topic: Annotated[str, typer.Option(help="Inbound topic to re-read.")],
    from_offset: Annotated[int, typer.Option(min=0, help="First offset (inclusive).")],
    to_offset: Annotated[int, typer.Option(min=0, help="Last offset (inclusive).")],
    partition: Annotated[
        list[int] | None, typer.Option(help="Only these partitions (default: all).")
    ] = None,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Re-ingest an offset range; already-applied events are skipped by idempotency."""
    import asyncio

    from services.ledger.adapters.kafka_replay import replay as run_replay

    if to_offset < from_offset:
        typer.echo("--to-offset is before --from-offset", err=True)
        raise typer.Exit(2)
    with _ledger(program, db) as ledger:
        report = asyncio.run(
            run_replay(ledger, bootstrap, topic, from_offset, to_offset, partitions=partition)
        )
    for p, (first, last) in sorted(report.partitions.items()):
        typer.echo(f"partition {p}: offsets {first}..{last}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.reasons.items()))
    typer.echo(
        f"{report.applied} applied, {report.skipped} skipped (already applied), "
        f"{report.dead_lettered} dead-lettered" + (f" ({reasons})" if reasons else "")
    )


@app.command(name="api")
def api_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    tick_seconds: Annotated[
        float,
        typer.Option(envvar="LOYALTY_TICK_SECONDS", help="Run the scheduler this often (0: off)."),
    ] = 1.0,
    bootstrap: Annotated[
        str | None,
        typer.Option(
            "--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Broker checked by /readyz."
        ),
    ] = None,
    what_if_jobs: Annotated[
        int,
        typer.Option(
            envvar="LOYALTY_WHAT_IF_JOBS",
            min=1,
            help="What-if runs going at a time; one more gets 429.",
        ),
    ] = 1,
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /docs) and the ops console (/console)."""
    import uvicorn

    from services.ledger.api.app import create_app
    from services.ledger.api.auth import KeyStore
    from services.ledger.api.guard import GuardSettings
    from services.notifier.bootstrap import NotifierSettings, build_notifier

    try:
        keys = KeyStore.from_environment()
    except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
        typer.echo(f"cannot read the API keys (LOYALTY_API_KEYS / _FILE): {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        guard = GuardSettings.from_environment()
    except ValueError as exc:
        typer.echo(f"cannot read the API limits: {exc}", err=True)
        raise typer.Exit(2) from None
    if not keys.names():
        typer.echo("warning: no API keys configured; every /v1 call will get 401", err=True)
    with _ledger(program, db) as ledger:
        # The notifier's stores (LOYALTY_NOTIFIER_DB): contacts, opt-outs, notices sent.
        try:
            notifier = build_notifier(ledger.app.program, NotifierSettings().db, [])
        except Exception as exc:
            typer.echo(
                f"cannot open the notifier's database (LOYALTY_NOTIFIER_DB): {exc}", err=True
            )
            raise typer.Exit(2) from None
        try:
            uvicorn.run(
                create_app(
                    ledger,
                    keys,
                    tick_seconds=tick_seconds,
                    bootstrap=bootstrap,
                    notifier=notifier,
                    what_if_jobs=what_if_jobs,
                    guard=guard,
                ),
                host=host,
                port=port,
                log_level="info",
            )
        finally:
            notifier.close()


@app.command(name="api-key")
def api_key(
    name: str,
    scope: Annotated[
        list[str],
        typer.Option(help="events:write, members:read, members:write, ops:what-if, ops:write"),
    ],
) -> None:
    """Make a new API key: prints the key (once) and the hashed entry for LOYALTY_API_KEYS."""
    from services.ledger.api.auth import entry_json, new_key

    try:
        key, entry = new_key(name, scope)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"key: {key}")
    typer.echo(f"entry: {entry_json(entry)}")


@topics_app.command("create")
def topics_create(
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    partitions: Annotated[int, typer.Option(min=1, max=1000)] = 3,
) -> None:
    """Create every declared topic that does not exist yet (safe to run again)."""
    import asyncio

    from services.ledger.adapters.kafka_topics import create_topics, declared_topics

    created, existing = asyncio.run(create_topics(bootstrap, declared_topics(partitions)))
    for name in created:
        typer.echo(f"created {name}")
    typer.echo(f"{len(created)} created, {len(existing)} already there")


@topics_app.command("list")
def topics_list(bootstrap: BootstrapOpt = "127.0.0.1:9092") -> None:
    """The topics on the broker and their partition counts."""
    import asyncio

    from services.ledger.adapters.kafka_topics import describe_topics

    for name, count in asyncio.run(describe_topics(bootstrap)).items():
        typer.echo(f"{name} {count}")


@tiers_app.command("serve")
def tiers_serve(
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    count_interval: Annotated[
        float, typer.Option(help="Seconds between refreshes of the members-per-tier gauge.")
    ] = 60.0,
    data_dir: Annotated[Path, typer.Option(help="faust's data directory.")] = Path("var/tiers"),
    app_id: Annotated[
        str, typer.Option(help="faust app id: consumer group and changelog topic prefix.")
    ] = "loyalty-tiers",
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="LOYALTY_TIERS_METRICS_PORT", help="Serve Prometheus /metrics here (0: off)."
        ),
    ] = 9465,
    metrics_host: MetricsHostOpt = "127.0.0.1",
    program: ProgramOpt = None,
) -> None:
    """Run the tiers projection (faust) until SIGTERM: it follows the tiers the ledger
    records on loyalty.ledger.v1 and publishes tier.changed (loyalty.tiers.v1) and each
    member's tier status (loyalty.tier-status.v1). It decides nothing."""
    from services.ledger.adapters.metrics import serve_metrics
    from services.tiers.app import Worker, build_app

    settings = _settings(program, None)
    try:
        loaded = load_program(settings.program)
    except ProgramFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if metrics_port:
        serve_metrics(metrics_port, metrics_host)
    data_dir.mkdir(parents=True, exist_ok=True)
    brokers = [f"kafka://{host.strip()}" for host in bootstrap.split(",")]
    service = build_app(
        loaded,
        broker=";".join(brokers),
        data_dir=data_dir,
        count_interval=count_interval,
        app_id=app_id,
    )
    Worker(service.app, loglevel="info").execute_from_commandline()


@tiers_app.command("rebuild")
def tiers_rebuild(
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Compare with the live table of the tiers projection on this broker."),
    ] = None,
    app_id: Annotated[str, typer.Option(help="faust app id of the tiers projection.")] = (
        "loyalty-tiers"
    ),
    member: Annotated[
        list[str] | None, typer.Option(help="Only these members (repeatable).")
    ] = None,
    program: ProgramOpt = None,
    db: DbOpt = None,
) -> None:
    """Every member's tier as the ledger records it; with --bootstrap, compared with the
    tiers projection's live table (exit 1 on any difference)."""
    import asyncio

    from services.tiers.live_table import read_live_table
    from services.tiers.rebuild import ledger_tiers, live_difference

    with _ledger(program, db) as ledger:
        members = member or [row.member_id for row in ledger.view.all_balances()]
        recorded = ledger_tiers(ledger.app, members)
    live = asyncio.run(read_live_table(bootstrap, app_id)) if bootstrap else None
    differences = 0
    for member_id, found in recorded.items():
        until = found.held_until.isoformat() if found.held_until else "-"
        line = (
            f"{member_id}: {found.tier or '-'} (held until {until}"
            + ("; locked" if found.locked else "")
            + ")"
        )
        differs = live_difference(found, live.get(member_id)) if live is not None else None
        if differs is not None:
            differences += 1
            line += f"  DIFFERS: {differs}"
        typer.echo(line)
    typer.echo(
        f"{len(recorded)} members in the ledger"
        + (f", {differences} differ from the live table" if live is not None else "")
    )
    if differences:
        raise typer.Exit(1)


@tiers_app.command("history")
def tiers_history(member: str, program: ProgramOpt = None, db: DbOpt = None) -> None:
    """A member's tier changes, each with the ledger entry that caused it."""
    from services.tiers.explain import tier_history

    with _ledger(program, db) as ledger:
        lines = tier_history(ledger.app, member)
    for line in lines or [f"{member} has no tier entries"]:
        typer.echo(line)


# The notifier's commands (services/notifier/cli.py): `loyalty notify ...`.

from services.notifier.cli import notify_app  # noqa: E402

app.add_typer(notify_app, name="notify")


def main() -> None:
    app()
