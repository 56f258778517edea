"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import socket

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from services.ledger.api.deps import LedgerDep
from services.ledger.api.models import Health

router = APIRouter(tags=["health"])

OUTSTANDING = Gauge("loyalty_outstanding_points", "Points members hold: available+pending+held")
PROJECTION_LAG = Gauge("loyalty_projection_lag", "Ledger notifications not yet projected")
INVARIANT_VIOLATIONS = Gauge(
    "loyalty_invariant_violations", "Violations found by this process's last verify run"
)
PARKED_EVENTS = Gauge(
    "loyalty_parked_events",
    "Events waiting for what they depend on, as of this process's last look (verify, "
    "GET /v1/ops/parked, or the scheduler's parked-deadline check)",
)
VERIFIED_AT = Gauge(
    "loyalty_verify_last_run_timestamp_seconds", "When this process last ran verify (Unix time)"
)


@router.get("/healthz", operation_id="healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


def _broker_reachable(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
                return True
        except (OSError, ValueError):
            continue
    return False


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Health,
    responses={503: {"model": Health}},
)
def readyz(request: Request, ledger: LedgerDep) -> Response:
    """The store answers and, when one is configured, the Kafka broker is reachable."""
    checks: dict[str, str] = {}
    try:
        ledger.view.max_tracking_id(ledger.view.tracking_key)
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"unreachable: {type(exc).__name__}"
    bootstrap: str | None = request.app.state.bootstrap
    if bootstrap:
        checks["broker"] = "ok" if _broker_reachable(bootstrap) else "unreachable"
    else:
        checks["broker"] = "not configured"
    ok = all(v in {"ok", "not configured"} for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", operation_id="metrics", response_class=Response)
def metrics(ledger: LedgerDep) -> Response:
    """Prometheus text format."""
    OUTSTANDING.set(ledger.view.outstanding())  # from the program summary: one small read
    last = ledger.app.recorder.max_notification_id() or 0
    PROJECTION_LAG.set(max(0, last - ledger.projection.position))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
