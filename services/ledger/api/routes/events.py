"""POST /v1/events: the same envelope, validation, rules and idempotency as Kafka ingest."""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.persistence import IntegrityError
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from schemas import INBOUND_EVENT_ADAPTER, MAX_MESSAGE_BYTES, TOPIC_TIERS
from schemas.examples import EVENT_EXAMPLES
from schemas.inbound import EVENT_TYPES, EVENT_TYPES_BY_TOPIC
from schemas.text import has_control
from services.ledger.adapters.metrics import INGEST_MESSAGES
from services.ledger.api.deps import EventsWriter, LedgerDep
from services.ledger.api.errors import ApiError, ErrorBody, status_for
from services.ledger.api.models import EventResult
from services.ledger.application.ledger import Inbound, Outcome
from services.ledger.domain.provenance import Origin

router = APIRouter(prefix="/v1", tags=["events"])
LEDGER_EVENT_TYPES = EVENT_TYPES - EVENT_TYPES_BY_TOPIC[TOPIC_TIERS]
"""What the ledger applies; tier.changed is declined (``decided_by_ledger``)."""

_REF = "#/components/schemas/{model}"
_UNION_SCHEMA: dict[str, Any] = INBOUND_EVENT_ADAPTER.json_schema(ref_template=_REF)
EVENT_COMPONENTS: dict[str, dict[str, Any]] = {
    **_UNION_SCHEMA.pop("$defs"),
    "InboundEvent": {
        "title": "InboundEvent",
        "description": "Any inbound event, told apart by `type`: the same envelope and "
        "schema as on the Kafka topics (schemas/json/).",
        **_UNION_SCHEMA,
    },
}
"""The event union and every model it refers to, for the document's components."""
_BODY_EXAMPLES: dict[str, dict[str, Any]] = {
    event_type: {"summary": event_type, "value": example}
    for event_type, example in EVENT_EXAMPLES.items()
    if event_type in LEDGER_EVENT_TYPES
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (401, 403, 404, 409, 413, 422)
}


_MEMBER_LINKS: dict[str, Any] = {
    name: {
        "operationId": operation,
        "parameters": {"member_id": "$response.body#/member_id"},
        "description": f"the member of the event: {what}",
    }
    for name, operation, what in (
        ("balance", "get_balance", "balance"),
        ("statement", "get_statement", "statement"),
        ("audit", "audit_member", "audit"),
        ("hold", "place_hold", "hold points"),
    )
}


def add_event_components(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (the OpenAPI document FastAPI made) with the event union and its models
    in ``components.schemas``, where the request body of POST /v1/events refers."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in EVENT_COMPONENTS.items():
        schemas.setdefault(name, schema)
    return document


def _apply(ledger: LedgerDep, item: Inbound) -> Outcome:
    for _ in range(20):
        try:
            (outcome,) = ledger.app.apply_batch([item])
        except IntegrityError:
            continue  # another writer saved the same account first: apply again
        ledger.catch_up()  # read-your-writes: a GET after this answer shows it
        return outcome
    raise ApiError(409, "busy", "the member's account is being written by others; retry")


@router.post(
    "/events",
    operation_id="post_event",
    response_model=EventResult,
    status_code=201,
    max_body_size=MAX_MESSAGE_BYTES,  # 413 as the body streams past it (api/guard.py)
    responses={
        201: {"links": _MEMBER_LINKS},
        200: {"model": EventResult, "description": "a duplicate"},
        202: {
            "model": EventResult,
            "description": "parked: waits for what it depends on (e.g. the purchase that "
            "funds a redemption), retried when the member's account changes",
        },
        **_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/InboundEvent"},
                    "examples": _BODY_EXAMPLES,
                }
            },
        }
    },
)
async def post_event(
    request: Request, response: Response, ledger: LedgerDep, caller: EventsWriter
) -> EventResult:
    """Apply one inbound event. A re-POST of the same event returns the original result."""
    raw = await request.body()
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ApiError(413, "oversized", f"the limit is {MAX_MESSAGE_BYTES} bytes")
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    if has_control(request_id):
        raise ApiError(422, "invalid_input", "X-Request-Id: no control characters")
    origin = Origin(channel="http", request_id=request_id[:128], actor=caller.name)
    outcome = await run_in_threadpool(_apply, ledger, Inbound(raw, origin))
    INGEST_MESSAGES.labels("http", outcome.status, outcome.reason or "").inc()
    if outcome.status == "rejected" or (
        outcome.status == "duplicate" and outcome.original == "declined"
    ):
        code = outcome.reason or "rejected"
        raise ApiError(status_for(code), code, outcome.detail or code)
    if outcome.status == "duplicate":
        response.status_code = 200
    if outcome.status == "parked":
        response.status_code = 202
    return EventResult(
        status=outcome.status,
        event_id=outcome.event_id or "",
        member_id=outcome.member_id or "",
        entries=list(outcome.entries),
        original=outcome.original,
        reason=outcome.reason if outcome.status == "parked" else None,
        detail=outcome.detail if outcome.status == "parked" else None,
    )
