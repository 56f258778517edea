"""Members: find, balance, statement (paged, with provenance), lots, holds, adjustments."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import AwareDatetime

from schemas.limits import ID_PATTERN, MAX_ID_LENGTH
from schemas.outbound import LedgerEntry
from schemas.text import NO_CONTROL_PATTERN
from services.ledger.api import convert
from services.ledger.api.deps import (
    EventsWriter,
    LedgerDep,
    MembersReader,
    OpsWriter,
    TierStatesDep,
)
from services.ledger.api.errors import ApiError, ErrorBody
from services.ledger.api.models import (
    AdjustmentRequest,
    AdjustmentResult,
    Balance,
    Hold,
    HoldRequest,
    LotView,
    MemberSummary,
    Statement,
)
from services.ledger.application.service import Ledger
from services.tiers.rebuild import TierStateCache, balance_tier_fields

router = APIRouter(prefix="/v1/members", tags=["members"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (401, 403, 404, 409, 422)
}
MemberId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, description="member")
]
#: The most holds one GET /v1/members/{id}/holds returns (422 past it).
MAX_HOLDS = 500
HOLD_LINKS: dict[str, Any] = {
    name: {
        "operationId": operation,
        "parameters": {"hold_id": "$response.body#/hold_id"},
        "description": f"{name} the hold just placed",
    }
    for name, operation in (
        ("read", "get_hold"),
        ("capture", "capture_hold"),
        ("void", "void_hold"),
    )
}
"""OpenAPI links from a placed hold to what can be done with it (stateful fuzzing follows them)."""
BALANCE_LINK: dict[str, Any] = {
    "balance": {
        "operationId": "get_balance",
        "parameters": {"member_id": "$response.body#/member_id"},
        "description": "the member's balance after the adjustment",
    }
}
RequestId = Annotated[
    str | None, Header(alias="X-Request-Id", max_length=128, pattern=NO_CONTROL_PATTERN)
]


def _balance(
    ledger: Ledger, tiers: TierStateCache, member_id: str, as_of: datetime | None = None
) -> Balance:
    """From the views (no projection here: the process's runner keeps them up to date; a
    write answers once they hold it, and a read waits for the runner to pass what was
    recorded before it, by this process or another)."""
    ledger.fresh()
    found = ledger.balance(member_id, as_of)  # Declined invalid_input for an unusable as_of
    if found is None:
        raise ApiError(404, "unknown_member", f"{member_id} is not a member")
    if as_of is None:  # the tier state the projection keeps, as of the entries counted
        held_until, progress = tiers.fields(member_id, found.as_of, found.entries)
    else:  # as of then: its entries so far
        held_until, progress = balance_tier_fields(
            ledger.app, member_id, found.as_of, found.entries
        )
    return convert.balance(found, held_until, progress)


def _known(ledger: Ledger, member_id: str) -> None:
    ledger.fresh()
    if ledger.view.balance(member_id) is None:
        raise ApiError(404, "unknown_member", f"{member_id} is not a member")


@router.get("", operation_id="find_members", response_model=list[MemberSummary], responses=ERRORS)
def find_members(
    ledger: LedgerDep,
    _: MembersReader,
    prefix: Annotated[str, Query(max_length=MAX_ID_LENGTH)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> list[MemberSummary]:
    """Members whose id starts with `prefix` (support's search box), by id."""
    ledger.fresh()
    rows = ledger.view.find_members(prefix, limit)
    return [
        MemberSummary(
            member_id=r.member_id,
            available=r.available,
            pending=r.pending,
            held=r.held,
            tier=r.tier,
        )
        for r in rows
    ]


@router.get(
    "/{member_id:path}/balance",
    operation_id="get_balance",
    response_model=Balance,
    responses=ERRORS,
)
def get_balance(
    member_id: MemberId,
    ledger: LedgerDep,
    tiers: TierStatesDep,
    _: MembersReader,
    as_of: Annotated[
        AwareDatetime | None,
        Query(
            description="RFC 3339 instant with a zone: the balance as the ledger stood then "
            "(zeros before the member's first entry); default now"
        ),
    ] = None,
) -> Balance:
    """Available, pending, held, lifetime, tier, expiring in 30/60/90 days, as-of position.

    With `as_of`, the balance as the ledger stood at that instant: the member's entries in
    the order they were recorded, up to the first one effective after it."""
    return _balance(ledger, tiers, member_id, as_of)


@router.get(
    "/{member_id:path}/statement",
    operation_id="get_statement",
    response_model=Statement,
    responses=ERRORS,
)
def get_statement(
    member_id: MemberId,
    ledger: LedgerDep,
    _: MembersReader,
    cursor: Annotated[str | None, Query(max_length=20, pattern=r"^[1-9][0-9]{0,17}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Statement:
    """Every entry, newest first, with its provenance; page with `next_cursor`."""
    _known(ledger, member_id)
    before = int(cursor) if cursor else None
    rows = ledger.statement(member_id, before_seq=before, limit=limit)
    entries = [LedgerEntry.model_validate(r.body) for r in rows]
    more = len(rows) == limit and rows[-1].seq > 1
    return Statement(
        member_id=member_id, entries=entries, next_cursor=str(rows[-1].seq) if more else None
    )


@router.get(
    "/{member_id:path}/lots",
    operation_id="get_lots",
    response_model=list[LotView],
    responses=ERRORS,
)
def get_lots(
    member_id: MemberId,
    ledger: LedgerDep,
    _: MembersReader,
    spent: Annotated[
        bool,
        Query(description="also the lots spent or expired to nothing (every lot ever made)"),
    ] = False,
) -> list[LotView]:
    """What each earn left, and when it is released and expires: the lots with points left
    or still pending, by lot id (with `spent=true`, every lot of the member's history)."""
    _known(ledger, member_id)
    return [convert.lot(x) for x in ledger.lots(member_id, spent=spent)]


@router.get(
    "/{member_id:path}/holds",
    operation_id="list_holds",
    response_model=list[Hold],
    responses=ERRORS,
)
def list_holds(
    member_id: MemberId,
    ledger: LedgerDep,
    _: MembersReader,
    limit: Annotated[int, Query(ge=1, le=MAX_HOLDS, description=f"at most {MAX_HOLDS}")] = 100,
) -> list[Hold]:
    """The member's newest `limit` holds, newest first (as projected; GET /v1/holds/{id} is
    authoritative)."""
    _known(ledger, member_id)
    return [
        Hold(
            hold_id=h.hold_id,
            member_id=h.member_id,
            reference=h.reference,
            points=h.points,
            status=h.status,
            captured=h.captured,
            placed_at=h.placed_at,
            expires_at=h.expires_at,
            resolved_at=h.resolved_at,
        )
        for h in ledger.holds(member_id)[:limit]
    ]


@router.post(
    "/{member_id:path}/holds",
    operation_id="place_hold",
    response_model=Hold,
    status_code=201,
    responses={
        201: {"links": HOLD_LINKS},
        200: {"model": Hold, "description": "the hold placed before", "links": HOLD_LINKS},
        **ERRORS,
    },
)
def place_hold(
    member_id: MemberId,
    body: HoldRequest,
    response: Response,
    ledger: LedgerDep,
    caller: EventsWriter,
    request_id: RequestId = None,
) -> Hold:
    """Set points aside for a checkout; the same `reference` again returns the same hold."""
    done = ledger.place_hold(
        member_id,
        reference=body.reference,
        points=body.points,
        ttl=timedelta(seconds=body.ttl_seconds),
        actor=caller.name,
        request_id=request_id or uuid.uuid4().hex,
    )
    if not done.entries:
        response.status_code = 200
    return convert.hold(member_id, done.result, done.entries)


@router.post(
    "/{member_id:path}/adjustments",
    operation_id="adjust",
    response_model=AdjustmentResult,
    status_code=201,
    responses={
        201: {"links": BALANCE_LINK},
        200: {"model": AdjustmentResult, "description": "a retried request"},
        **ERRORS,
    },
)
def adjust(
    member_id: MemberId,
    body: AdjustmentRequest,
    response: Response,
    ledger: LedgerDep,
    tiers: TierStatesDep,
    caller: OpsWriter,
    request_id: RequestId = None,
) -> AdjustmentResult:
    """Add or remove points by hand, with a required reason; the key's name is the actor.

    Send an `X-Request-Id` to make a retry safe: the same id again returns the original
    adjustment (200) instead of posting a second one.
    """
    rid = request_id or uuid.uuid4().hex
    done = ledger.adjust(
        member_id,
        body.points,
        reason=body.reason,
        actor=caller.name,
        allow_negative=body.allow_negative,
        request_id=rid,
    )
    entries = list(done.entries)
    if not entries:
        response.status_code = 200
        account = ledger.app.find_account(member_id)
        assert account is not None
        entries = [f"{member_id}#{account.adjustment_requests[rid][0]}"]
    return AdjustmentResult(
        member_id=member_id,
        entries=entries,
        actor=caller.name,
        balance=_balance(ledger, tiers, member_id),
    )
