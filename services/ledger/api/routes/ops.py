"""Ops over HTTP: audit a member, what-if under another program, verify every invariant."""

from __future__ import annotations

from typing import Annotated

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from schemas import INBOUND_TOPICS
from services.ledger.adapters.kafka_replay import replay
from services.ledger.adapters.program_file import ProgramFileError, parse_program
from services.ledger.api import convert
from services.ledger.api.auth import Principal
from services.ledger.api.deps import LedgerDep, MembersReader, OpsWriter, get_principal
from services.ledger.api.errors import ApiError, ErrorBody
from services.ledger.api.errors import body as error_body
from services.ledger.api.models import (
    AuditEntry,
    AuditReport,
    ParkedEvent,
    RebuildResult,
    ReplayRequest,
    ReplayResult,
    VerifyResult,
    WhatIfJob,
    WhatIfProgress,
    WhatIfRequest,
)
from services.ledger.api.routes.health import INVARIANT_VIOLATIONS, PARKED_EVENTS, VERIFIED_AT
from services.ledger.api.routes.members import ERRORS, MemberId
from services.ledger.application.audit import audit
from services.ledger.application.verify import verify
from services.ledger.application.what_if_jobs import Busy, Job, WhatIfJobs

router = APIRouter(tags=["ops"])


@router.get(
    "/v1/members/{member_id:path}/audit",
    operation_id="audit_member",
    response_model=AuditReport,
    responses=ERRORS,
)
def audit_member(member_id: MemberId, ledger: LedgerDep, _: MembersReader) -> AuditReport:
    """Every entry, oldest first, with provenance, the source event and the lots touched."""
    ledger.fresh()
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


WHAT_IF_SCOPES = ("ops:what-if", "ops:write")
#: The most parked events one GET /v1/ops/parked returns (422 past it).
MAX_PARKED = 1000
#: The most offsets (per partition) one POST /v1/ops/replay reads (422 past it).
MAX_REPLAY_OFFSETS = 100_000


def what_if_caller(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """What-if replays history, so it needs `ops:what-if` (or `ops:write`), not a read key."""
    if not principal.scopes.intersection(WHAT_IF_SCOPES):
        raise ApiError(
            403, "forbidden", f"the key {principal.name} lacks scope ops:what-if (or ops:write)"
        )
    return principal


WhatIfCaller = Annotated[Principal, Depends(what_if_caller)]


def get_what_if_jobs(request: Request) -> WhatIfJobs:
    jobs: WhatIfJobs = request.app.state.what_if_jobs
    return jobs


WhatIfJobsDep = Annotated[WhatIfJobs, Depends(get_what_if_jobs)]
JobId = Annotated[str, Path(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]


def _job(job: Job) -> WhatIfJob:
    return WhatIfJob(
        job_id=job.job_id,
        status=job.status,
        program_version=job.program_version,
        member_id=job.member_id,
        apply=job.apply,
        actor=job.actor,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=WhatIfProgress(stage=job.stage, done=job.done, total=job.total),
        result=convert.what_if_report(job.report) if job.report is not None else None,
        error=job.error,
    )


@router.post(
    "/v1/ops/what-if",
    operation_id="what_if",
    response_model=WhatIfJob,
    status_code=202,
    responses={
        **ERRORS,
        429: {"model": ErrorBody, "description": "as many runs as allowed are going"},
    },
)
def what_if_start(
    body: WhatIfRequest,
    response: Response,
    ledger: LedgerDep,
    jobs: WhatIfJobsDep,
    caller: WhatIfCaller,
) -> WhatIfJob | JSONResponse:
    """Start a run that recomputes balances under another program (`apply` posts the
    differences once, with ops:write): 202 with the job and its `Location`; poll that for
    progress and the report. 429 while as many runs as allowed are going."""
    if body.apply and "ops:write" not in caller.scopes:
        raise ApiError(403, "forbidden", f"the key {caller.name} lacks scope ops:write")
    try:
        program = parse_program(body.program_yaml, name="program_yaml")
    except ProgramFileError as exc:
        raise ApiError(422, "invalid_program", str(exc)) from None
    member = body.member_id
    if member is not None and ledger.view.balance(member) is None:
        raise ApiError(404, "unknown_member", f"{member} is not a member")
    try:
        job = jobs.start(program, member=member, apply=body.apply, actor=caller.name)
    except Busy as exc:
        return JSONResponse(
            error_body("too_many_jobs", str(exc)), status_code=429, headers={"Retry-After": "5"}
        )
    response.headers["Location"] = f"/v1/ops/what-if/{job.job_id}"
    return _job(job)


@router.get(
    "/v1/ops/what-if/{job_id}",
    operation_id="what_if_job",
    response_model=WhatIfJob,
    responses=ERRORS,
)
def what_if_job(job_id: JobId, jobs: WhatIfJobsDep, _: WhatIfCaller) -> WhatIfJob:
    """A what-if run: queued, running (progress: events replayed, then members compared, of
    how many), done (with the report) or failed (with why). Kept in memory: the newest
    100 finished runs, until the API restarts."""
    job = jobs.get(job_id)
    if job is None:
        raise ApiError(404, "unknown_job", f"no what-if job {job_id}")
    return _job(job)


@router.get(
    "/v1/ops/parked",
    operation_id="parked_events",
    response_model=list[ParkedEvent],
    responses=ERRORS,
)
def parked_events(
    ledger: LedgerDep,
    _: MembersReader,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PARKED, description=f"at most this many (at most {MAX_PARKED})")
    ] = 100,
) -> list[ParkedEvent]:
    """Events waiting for what they depend on (e.g. the purchase that funds a redemption,
    read from another topic), oldest first, the first `limit` of them: retried whenever the
    member's account changes, declined and dead-lettered with their reason once their
    deadline has passed. `loyalty_parked_events` counts them all."""
    waiting = ledger.app.parked()
    PARKED_EVENTS.set(len(waiting))
    waiting = waiting[:limit]
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
    ledger.catch_up()  # compare what was recorded up to now
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
    """Re-ingest an offset range of an inbound topic (at most 100000 offsets per partition);
    applied events are skipped."""
    if body.topic not in INBOUND_TOPICS:
        raise ApiError(422, "invalid_input", f"topic must be one of {sorted(INBOUND_TOPICS)}")
    if body.to_offset < body.from_offset:
        raise ApiError(422, "invalid_input", "to_offset is before from_offset")
    if body.to_offset - body.from_offset + 1 > MAX_REPLAY_OFFSETS:
        raise ApiError(
            422,
            "invalid_input",
            f"at most {MAX_REPLAY_OFFSETS} offsets per partition in one replay; split the range",
        )
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
