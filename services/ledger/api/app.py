"""The FastAPI application factory: routes, error mapping, the time-driven scheduler."""

from __future__ import annotations

import importlib.resources
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter

from services.ledger.api import errors
from services.ledger.api.auth import KeyStore
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

STATIC = Path(__file__).resolve().parent / "static"
#: Swagger UI's own build, as shipped in the swagger-ui-py package (no CDN needed).
SWAGGER_UI = importlib.resources.files("swagger_ui") / "static"
log = logging.getLogger(__name__)
API_REQUESTS = Counter(
    "loyalty_api_requests",
    "HTTP requests by method, route and status",
    ["method", "route", "status"],
)


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
) -> FastAPI:
    """The API over `ledger`; `tick_seconds` > 0 runs the scheduler in the background (the
    ledger's tier reviews among its work). With the notifier's stores (`notifier`), members'
    contacts, opt-outs and notices are served too. At most `what_if_jobs` what-if runs go
    at a time (one more gets 429)."""
    ticker = Ticker(ledger, tick_seconds)
    jobs = WhatIfJobs(ledger, limit=what_if_jobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ticker.start()
        try:
            yield
        finally:
            ticker.stop()
            jobs.close()

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
    app.state.keys = keys
    app.state.bootstrap = bootstrap
    app.state.what_if_jobs = jobs
    errors.install(app)
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # with the event union POST /v1/events refers to
        return events.add_event_components(generate_openapi())

    app.openapi = openapi  # type: ignore[method-assign]
    for module in (events, members, holds, program, ops, health):
        app.include_router(module.router)
    if notifier is not None:
        app.state.notifier = notifier
        app.include_router(notifications.router)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        API_REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        return response

    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.mount("/docs/assets", StaticFiles(directory=str(SWAGGER_UI)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title}: interactive docs",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )

    @app.get("/console", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(STATIC / "console.html")

    return app
