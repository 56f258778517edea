"""A member's notices: contact details, opt-outs (per channel and per kind), erasure, and
what was sent. The notifier owns these (its own database, never the ledger's events); the
API reaches them through the notifier's `MemberContacts` and sent-log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from schemas.limits import ID_PATTERN, MAX_ID_LENGTH
from services.ledger.api.deps import LedgerDep, MembersReader, MembersWriter, OpsWriter
from services.ledger.api.errors import ApiError, ErrorBody
from services.ledger.api.models import (
    ContactRequest,
    NoticeChannel,
    NoticeDelivery,
    NoticeKindOrAll,
    NotificationPreferences,
    OptOut,
    OptOutRequest,
)
from services.notifier.bootstrap import Notifier

router = APIRouter(prefix="/v1/members/{member_id}/notifications", tags=["notifications"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody} for s in (401, 403, 404, 422)}
MemberId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, description="member")
]


def get_notifier(request: Request) -> Notifier:
    notifier: Notifier = request.app.state.notifier
    return notifier


NotifierDep = Annotated[Notifier, Depends(get_notifier)]


def _member(ledger: LedgerDep, member_id: str) -> None:
    ledger.fresh()
    if ledger.view.balance(member_id) is None:
        raise ApiError(404, "unknown_member", f"{member_id} is not a member")


def _preferences(notifier: Notifier, member_id: str) -> NotificationPreferences:
    contact = notifier.contacts.contact(member_id)
    return NotificationPreferences(
        member_id=member_id,
        email=contact.email if contact else None,
        name=contact.name if contact else None,
        opted_out=[OptOut(channel=c, kind=k) for c, k in notifier.contacts.opt_outs(member_id)],
    )


@router.get(
    "/preferences",
    operation_id="get_notification_preferences",
    response_model=NotificationPreferences,
    responses=ERRORS,
)
def get_preferences(
    member_id: MemberId, ledger: LedgerDep, notifier: NotifierDep, _: MembersReader
) -> NotificationPreferences:
    """Contact details and opt-outs (`*` stands for every channel or every kind)."""
    _member(ledger, member_id)
    return _preferences(notifier, member_id)


@router.put(
    "/contact",
    operation_id="set_notification_contact",
    response_model=NotificationPreferences,
    responses=ERRORS,
)
def set_contact(
    member_id: MemberId,
    body: ContactRequest,
    ledger: LedgerDep,
    notifier: NotifierDep,
    _: MembersWriter,
) -> NotificationPreferences:
    """Where notices go: the email address (null clears it) and the name in greetings."""
    _member(ledger, member_id)
    notifier.contacts.set_contact(member_id, body.email, body.name)
    return _preferences(notifier, member_id)


@router.post(
    "/opt-outs",
    operation_id="opt_out",
    response_model=NotificationPreferences,
    responses=ERRORS,
)
def opt_out(
    member_id: MemberId,
    body: OptOutRequest,
    ledger: LedgerDep,
    notifier: NotifierDep,
    _: MembersWriter,
) -> NotificationPreferences:
    """Stop a kind of notice (or every kind) on a channel (or every channel). Notices
    already queued for it are suppressed when their turn comes."""
    _member(ledger, member_id)
    notifier.contacts.opt_out(member_id, body.channel, body.kind)
    return _preferences(notifier, member_id)


@router.delete(
    "/opt-outs/{channel}/{kind}",
    operation_id="opt_in",
    response_model=NotificationPreferences,
    responses=ERRORS,
)
def opt_in(
    member_id: MemberId,
    channel: NoticeChannel,
    kind: NoticeKindOrAll,
    ledger: LedgerDep,
    notifier: NotifierDep,
    _: MembersWriter,
) -> NotificationPreferences:
    """Remove an opt-out, given exactly as it was made (`*` is written %2A in a path)."""
    _member(ledger, member_id)
    if not notifier.contacts.opt_in(member_id, channel, kind):
        raise ApiError(404, "no_opt_out", f"{member_id} has no opt-out of {kind} on {channel}")
    return _preferences(notifier, member_id)


@router.post(
    "/erase",
    operation_id="erase_notification_data",
    response_model=NotificationPreferences,
    responses=ERRORS,
)
def erase(
    member_id: MemberId, ledger: LedgerDep, notifier: NotifierDep, _: OpsWriter
) -> NotificationPreferences:
    """Right to erasure: contact details, preferences and the notifier's copy of the
    member's history go; undelivered notices are suppressed. The ledger keeps the points."""
    _member(ledger, member_id)
    notifier.contacts.erase(member_id)
    return _preferences(notifier, member_id)


@router.get(
    "",
    operation_id="list_notices",
    response_model=list[NoticeDelivery],
    responses=ERRORS,
)
def list_notices(
    member_id: MemberId, ledger: LedgerDep, notifier: NotifierDep, _: MembersReader
) -> list[NoticeDelivery]:
    """Every notice for the member, one row per channel: its state, tries and cause."""
    _member(ledger, member_id)
    return [
        NoticeDelivery(
            key=d.notice.key,
            kind=str(d.notice.kind),
            channel=d.channel,
            state=d.state,
            attempts=d.attempts,
            at=d.notice.at,
            sent_at=d.sent_at,
            last_error=d.last_error,
            in_doubt=d.in_doubt,
            cause=d.notice.cause,
        )
        for d in notifier.sent_log.deliveries(member_id)
    ]
