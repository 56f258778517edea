"""Ops over HTTP: audit a member, what-if under another program, verify every invariant."""

from __future__ import annotations

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request

from schemas import INBOUND_TOPICS
from services.ledger.adapters.kafka_replay import replay
from services.ledger.adapters.program_file import ProgramFileError, parse_program
from services.ledger.api import convert
from services.ledger.api.deps import LedgerDep, MembersReader, OpsWriter
from services.ledger.api.errors import ApiError, ErrorBody
from services.ledger.api.models import (
    AuditEntry,
    AuditReport,
    ParkedEvent,
    RebuildResult,
    ReplayRequest,
    ReplayResult,
    VerifyResult,
    WhatIfReport,
    WhatIfRequest,
)
from services.ledger.api.routes.health import INVARIANT_VIOLATIONS, PARKED_EVENTS, VERIFIED_AT
from services.ledger.api.routes.members import ERRORS, MemberId
from services.ledger.application.audit import audit
from services.ledger.application.verify import verify
from services.ledger.application.what_if import what_if

router = APIRouter(tags=["ops"])


@router.get(
    "/v1/members/{member_id:path}/audit",
    operation_id="audit_member",
    response_model=AuditReport,
    responses=ERRORS,
)
def audit_member(member_id: MemberId, ledger: LedgerDep, _: MembersReader) -> AuditReport:
    """Every entry, oldest first, with provenance, the source event and the lots touched."""
    found = audit(ledger, member_id)
    if found is None:
        raise ApiError(404, "unknown_member", f"{member_id} is not a member")
    return AuditReport(
        member_id=member_id,
        balance=convert.balance(found.balance),
        entries=[AuditEntry(entry=x.entry, source_event=x.source_event) for x in found.lines],
        lots=[convert.lot(x) for x in found.lots],
        entries_total=found.entries_total,
        recorded_total=found.recorded_total,
        explained=found.explained,
    )


@router.post(
    "/v1/ops/what-if", operation_id="what_if", response_model=WhatIfReport, responses=ERRORS
)
def what_if_run(body: WhatIfRequest, ledger: LedgerDep, caller: MembersReader) -> WhatIfReport:
    """Recompute balances under another program; `apply` posts the differences once."""
    if body.apply and "ops:write" not in caller.scopes:
        raise ApiError(403, "forbidden", f"the key {caller.name} lacks scope ops:write")
    try:
        program = parse_program(body.program_yaml, name="program_yaml")
    except ProgramFileError as exc:
        raise ApiError(422, "invalid_program", str(exc)) from None
    if body.member_id is not None and ledger.view.balance(body.member_id) is None:
        raise ApiError(404, "unknown_member", f"{body.member_id} is not a member")
    report = what_if(ledger, program, member=body.member_id, apply=body.apply, actor=caller.name)
    return convert.what_if_report(report)


@router.get(
    "/v1/ops/parked",
    operation_id="parked_events",
    response_model=list[ParkedEvent],
    responses=ERRORS,
)
def parked_events(ledger: LedgerDep, _: MembersReader) -> list[ParkedEvent]:
    """Events waiting for what they depend on (e.g. the purchase that funds a redemption,
    read from another topic), oldest first: retried whenever the member's account changes,
    declined and dead-lettered with their reason once their deadline has passed."""
    waiting = ledger.app.parked()
    PARKED_EVENTS.set(len(waiting))
    return [
        ParkedEvent(
            member_id=member_id,
            event_id=item.event_id,
            event_type=item.event_type,
            occurred_at=item.occurred_at,
            reason=item.reason,
            detail=item.detail,
            deadline=item.deadline,
            parked_at=item.parked_at,
            source=item.origin.key(),
        )
        for member_id, item in waiting
    ]


@router.get("/v1/ops/verify", operation_id="verify", response_model=VerifyResult, responses=ERRORS)
def verify_ledger(ledger: LedgerDep, _: OpsWriter) -> VerifyResult:
    """Every invariant, and every projection against a fresh fold of the ledger."""
    ledger.projection.run()
    report = verify(ledger.app, ledger.view)
    INVARIANT_VIOLATIONS.set(len(report.violations))
    VERIFIED_AT.set_to_current_time()
    return VerifyResult(
        ok=report.ok,
        members=report.members,
        entries=report.entries,
        receipts=report.receipts,
        violations=report.violations,
    )


@router.post(
    "/v1/ops/rebuild", operation_id="rebuild", response_model=RebuildResult, responses=ERRORS
)
def rebuild(ledger: LedgerDep, _: OpsWriter) -> RebuildResult:
    """Rebuild the read models from zero in the other table set, then switch to it."""
    prefix, count = ledger.rebuild()
    return RebuildResult(serving=prefix, entries=count)


@router.post(
    "/v1/ops/replay",
    operation_id="replay",
    response_model=ReplayResult,
    responses={**ERRORS, 503: {"model": ErrorBody}},
)
async def replay_range(
    body: ReplayRequest, request: Request, ledger: LedgerDep, _: OpsWriter
) -> ReplayResult:
    """Re-ingest an offset range of an inbound topic; applied events are skipped."""
    if body.topic not in INBOUND_TOPICS:
        raise ApiError(422, "invalid_input", f"topic must be one of {sorted(INBOUND_TOPICS)}")
    if body.to_offset < body.from_offset:
        raise ApiError(422, "invalid_input", "to_offset is before from_offset")
    bootstrap: str | None = request.app.state.bootstrap
    if not bootstrap:
        raise ApiError(409, "no_broker", "the API was started without --bootstrap")
    try:
        report = await replay(
            ledger,
            bootstrap,
            body.topic,
            body.from_offset,
            body.to_offset,
            partitions=body.partitions,
        )
    except KafkaError as exc:
        raise ApiError(503, "broker_unavailable", f"cannot read from Kafka: {exc}") from None
    return ReplayResult(
        applied=report.applied,
        skipped=report.skipped,
        dead_lettered=report.dead_lettered,
        reasons=report.reasons,
    )
