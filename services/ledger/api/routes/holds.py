"""Holds by id: read, capture (in full or in part), void. Each hold resolves at most once."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path

from schemas.limits import ID_PATTERN
from services.ledger.api import convert
from services.ledger.api.deps import EventsWriter, LedgerDep, MembersReader
from services.ledger.api.errors import ApiError
from services.ledger.api.models import CaptureRequest, Hold, VoidRequest
from services.ledger.api.routes.members import ERRORS, RequestId

router = APIRouter(prefix="/v1/holds", tags=["holds"])
HoldId = Annotated[
    str, Path(min_length=1, max_length=200, pattern=ID_PATTERN, description="hold id")
]


@router.get("/{hold_id}", operation_id="get_hold", response_model=Hold, responses=ERRORS)
def get_hold(hold_id: HoldId, ledger: LedgerDep, _: MembersReader) -> Hold:
    """A hold as of now (one past its TTL shows as expired even before the scheduler runs)."""
    found = ledger.hold(hold_id)
    if found is None:
        raise ApiError(404, "unknown_hold", f"no hold {hold_id}")
    return convert.hold(*found)


@router.post(
    "/{hold_id}/capture", operation_id="capture_hold", response_model=Hold, responses=ERRORS
)
def capture_hold(
    hold_id: HoldId,
    ledger: LedgerDep,
    caller: EventsWriter,
    body: CaptureRequest | None = None,
    request_id: RequestId = None,
) -> Hold:
    """Redeem the hold's points (or part of them: the rest goes back to their lots)."""
    done = ledger.capture_hold(
        hold_id,
        points=body.points if body else None,
        actor=caller.name,
        request_id=request_id or uuid.uuid4().hex,
    )
    found = ledger.hold(hold_id)
    assert found is not None
    return convert.hold(found[0], done.result, done.entries)


@router.post("/{hold_id}/void", operation_id="void_hold", response_model=Hold, responses=ERRORS)
def void_hold(
    hold_id: HoldId,
    ledger: LedgerDep,
    caller: EventsWriter,
    body: VoidRequest | None = None,
    request_id: RequestId = None,
) -> Hold:
    """Cancel the hold: every point goes back to the lot it came from."""
    done = ledger.void_hold(
        hold_id,
        reason=body.reason if body else None,
        actor=caller.name,
        request_id=request_id or uuid.uuid4().hex,
    )
    found = ledger.hold(hold_id)
    assert found is not None
    return convert.hold(found[0], done.result, done.entries)
