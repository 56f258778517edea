"""The FastAPI application factory: routes, error mapping, the time-driven scheduler."""

from __future__ import annotations

import importlib.resources
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from services.ledger.api import errors
from services.ledger.api.auth import KeyStore
from services.ledger.api.guard import GUARD_RESPONSES, Guard, GuardSettings
from services.ledger.api.routes import (
    events,
    health,
    holds,
    members,
    notifications,
    ops,
    program,
)
from services.ledger.application.service import Ledger
from services.ledger.application.what_if_jobs import WhatIfJobs
from services.notifier.bootstrap import Notifier
from services.tiers.rebuild import TierStateCache

STATIC = Path(__file__).resolve().parent / "static"
#: Swagger UI's own build, as shipped in the swagger-ui-py package (no CDN needed).
SWAGGER_UI = importlib.resources.files("swagger_ui") / "static"
log = logging.getLogger(__name__)


class Ticker:
    """Runs the scheduler (release, expire, hold timeouts, tier period-end reviews) every
    `seconds` in a thread."""

    def __init__(self, ledger: Ledger, seconds: float) -> None:
        self.ledger = ledger
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def start(self) -> None:
        if self.seconds > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.once()
            except Exception:
                log.exception("scheduler tick failed; trying again next tick")

    def once(self) -> None:
        self.ledger.use_active_view()  # after a `loyalty rebuild`
        self.ledger.tick(self.ledger.app.clock.now())


def create_app(
    ledger: Ledger,
    keys: KeyStore,
    *,
    tick_seconds: float = 0,
    bootstrap: str | None = None,
    notifier: Notifier | None = None,
    what_if_jobs: int = 1,
    guard: GuardSettings | None = None,
) -> FastAPI:
    """The API over `ledger`; `tick_seconds` > 0 runs the scheduler in the background (the
    ledger's tier reviews among its work). With the notifier's stores (`notifier`), members'
    contacts, opt-outs and notices are served too. At most `what_if_jobs` what-if runs go
    at a time (one more gets 429). `guard` (default: from the environment) sets the
    body-size and rate limits the guard enforces ahead of every route."""
    ticker = Ticker(ledger, tick_seconds)
    jobs = WhatIfJobs(ledger, limit=what_if_jobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ledger.runner.start()  # the process's one projection runner
        ticker.start()
        try:
            yield
        finally:
            ticker.stop()
            jobs.close()
            ledger.runner.stop()

    app = FastAPI(
        title="Loyalty ledger API",
        version="1",
        description="Credit, hold, capture and read loyalty points; every point explained. "
        "Authenticate with an API key in the X-API-Key header. Errors are JSON "
        '`{"code": ..., "reason": ...}`.',
        lifespan=lifespan,
        # The interactive docs are served from the swagger-ui-py package (below), so
        # they work on a machine without internet access; ReDoc would need a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.ledger = ledger
    # Balances show tier progress from states the projection keeps up to date.
    app.state.tier_states = TierStateCache(ledger.app)
    ledger.observers.append(app.state.tier_states.follow)
    app.state.keys = keys
    app.state.bootstrap = bootstrap
    app.state.what_if_jobs = jobs
    errors.install(app)
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # with the event union POST /v1/events refers to
        return events.add_event_components(generate_openapi())

    app.openapi = openapi  # type: ignore[method-assign]
    for module in (events, members, holds, program, ops, health):
        app.include_router(module.router, responses=GUARD_RESPONSES)
    if notifier is not None:
        app.state.notifier = notifier
        app.include_router(notifications.router, responses=GUARD_RESPONSES)

    # Ahead of FastAPI: keys, scopes, rate and body limits before any body is read, the
    # true Allow set, bounded request metrics and the security headers (api/guard.py).
    app.add_middleware(Guard, keys=keys, settings=guard or GuardSettings.from_environment())

    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.mount("/docs/assets", StaticFiles(directory=str(SWAGGER_UI)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/docs/init.js", include_in_schema=False)
    def docs_init() -> FileResponse:  # Swagger UI's start-up, not inline (the CSP allows none)
        return FileResponse(STATIC / "docs-init.js")

    @app.get("/console", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(STATIC / "console.html")

    return app
