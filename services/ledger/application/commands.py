"""Operator and API commands on one member account, retried on a concurrent write.

Each member account is written with optimistic concurrency: two writers that loaded the same
version cannot both save. The loser reloads the account and runs its command again against
the new state, so concurrent holds that together exceed the balance: exactly the ones that
fit succeed, and the others are declined for insufficient points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from services.ledger.application.ledger import LedgerApplication
from services.ledger.domain.account import MemberAccount
from services.ledger.domain.errors import Declined
from services.ledger.domain.holds import HoldRecord, member_of_hold
from services.ledger.domain.provenance import Origin, Provenance

T = TypeVar("T")
MAX_ATTEMPTS = 50


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """A command's result and the entries it recorded (`member#seq`)."""

    result: T
    entries: tuple[str, ...]


def run_on_account(
    app: LedgerApplication,
    member_id: str,
    command: Callable[[MemberAccount, datetime], T],
    *,
    missing: Declined | None = None,
) -> Done[T]:
    """Load, run, save; on a version conflict, start again from the stored account
    (`LedgerApplication.run_command`, which shares the ingest's account cache and lock)."""
    result, entries = app.run_command(member_id, command, missing=missing, attempts=MAX_ATTEMPTS)
    return Done(result, entries)


def _prov(actor: str, request_id: str | None, channel: str = "http") -> Provenance:
    return Provenance(Origin(channel=channel, actor=actor, request_id=request_id))


def place_hold(
    app: LedgerApplication,
    member_id: str,
    *,
    reference: str,
    points: int,
    ttl: timedelta,
    actor: str,
    request_id: str | None = None,
) -> Done[HoldRecord]:
    prov = _prov(actor, request_id)
    return run_on_account(
        app,
        member_id,
        lambda account, now: account.place_hold(
            app.program,
            reference=reference,
            points=points,
            expires_at=now + ttl,
            provenance=prov,
            now=now,
        ),
    )


def _hold_member(hold: str) -> tuple[str, Declined]:
    missing = Declined("unknown_hold", f"no hold {hold}")
    member = member_of_hold(hold)
    if member is None:
        raise missing
    return member, missing


def capture_hold(
    app: LedgerApplication,
    hold: str,
    *,
    points: int | None,
    actor: str,
    request_id: str | None = None,
) -> Done[HoldRecord]:
    member, missing = _hold_member(hold)
    prov = _prov(actor, request_id)
    return run_on_account(
        app,
        member,
        lambda account, now: account.capture_hold(
            app.program, hold=hold, points=points, provenance=prov, now=now
        ),
        missing=missing,
    )


def void_hold(
    app: LedgerApplication,
    hold: str,
    *,
    reason: str | None,
    actor: str,
    request_id: str | None = None,
) -> Done[HoldRecord]:
    member, missing = _hold_member(hold)
    prov = _prov(actor, request_id)
    return run_on_account(
        app,
        member,
        lambda account, now: account.void_hold(
            app.program, hold=hold, reason=reason, provenance=prov, now=now
        ),
        missing=missing,
    )


def find_hold(app: LedgerApplication, hold: str) -> tuple[str, HoldRecord] | None:
    """A hold as of now: one past its TTL shows as expired even before the scheduler runs."""
    member = member_of_hold(hold)
    account = app.find_account(member) if member is not None else None
    if member is None or account is None:
        return None
    record = account.holds.get(hold)
    if record is None:
        return None
    now = app.clock.now()
    if record.is_open and record.expires_at <= now:
        account.advance(app.program, now)
        record = account.holds[hold]
    return member, record


def adjust(
    app: LedgerApplication,
    member_id: str,
    points: int,
    *,
    reason: str,
    actor: str,
    allow_negative: bool = False,
    request_id: str | None = None,
    channel: str = "http",
) -> Done[None]:
    entries = app.adjust(
        member_id,
        points,
        reason=reason,
        actor=actor,
        allow_negative=allow_negative,
        request_id=request_id,
        channel=channel,
    )
    return Done(None, entries)
