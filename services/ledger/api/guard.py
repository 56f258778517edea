"""The API's front door, a pure ASGI middleware ahead of FastAPI.

FastAPI reads and parses a request's body before it runs a route's dependencies, so a key
check made there comes after the body is in memory. The guard runs first, on the headers
alone, for every request:

1. finds the route the way Starlette will (the first full match), or answers `OPTIONS` and
   a wrong method itself with the true `Allow` set of every route on the path;
2. identifies the caller by `X-API-Key` and applies the rate limit: per key for a known
   key (its entry's `rate_limit`, else the server's), per client address otherwise (429
   with `Retry-After`);
3. checks the scopes the route declares (`deps.Require`, read from the route's own
   dependencies, so each scope is declared once, on the route; a route that asks for the
   caller, `get_principal`, needs a known key): 401 and 403 before any of the body is read;
4. limits the body as it streams in (the route's own `max_body_size`, else the default): a
   `Content-Length` over the limit gets 413 at once, a longer stream 413 at the limit,
   as JSON `{code, reason}` like every other error;
5. counts the request in `loyalty_api_requests_total` with bounded labels only (a known
   method or `other`, the route's template or `unmatched`, the status) and adds the
   security headers to every response.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from fastapi.routing import RouteContext, iter_route_contexts
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ledger.adapters.metrics import API_REQUESTS
from services.ledger.api.auth import KeyStore, Principal
from services.ledger.api.deps import Require, get_principal
from services.ledger.api.errors import ErrorBody
from services.ledger.api.errors import body as error_body

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_RATE_LIMIT = "1000/second"
DEFAULT_ANONYMOUS_RATE_LIMIT = "100/second"

#: No inline script or style anywhere: the console and the docs (Swagger UI from the
#: swagger-ui-py package) load theirs from this origin; nothing may frame them.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: What the guard may answer on any route, for the OpenAPI document.
GUARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "`oversized`: the body is over the limit"},
    429: {
        "model": ErrorBody,
        "description": "`rate_limited`: over the caller's rate; see `Retry-After`",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
}
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
)


@dataclass(frozen=True)
class GuardSettings:
    """`LOYALTY_API_MAX_BODY_BYTES`, `LOYALTY_API_RATE_LIMIT` (per key) and
    `LOYALTY_API_RATE_LIMIT_ANONYMOUS` (per client address, for callers without a known
    key). Rates are in the `limits` notation, e.g. `1000/second` or `50/second;2000/minute`;
    `0` turns a limit off."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rate_limit: str = DEFAULT_RATE_LIMIT
    anonymous_rate_limit: str = DEFAULT_ANONYMOUS_RATE_LIMIT

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError("LOYALTY_API_MAX_BODY_BYTES must be a positive number of bytes")
        _rates(self.rate_limit, "LOYALTY_API_RATE_LIMIT")
        _rates(self.anonymous_rate_limit, "LOYALTY_API_RATE_LIMIT_ANONYMOUS")

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> GuardSettings:
        env = dict(os.environ) if env is None else env
        size = env.get("LOYALTY_API_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES))
        try:
            max_body = int(size)
        except ValueError:
            raise ValueError(f"LOYALTY_API_MAX_BODY_BYTES is not a number: {size!r}") from None
        return cls(
            max_body_bytes=max_body,
            rate_limit=env.get("LOYALTY_API_RATE_LIMIT", DEFAULT_RATE_LIMIT),
            anonymous_rate_limit=env.get(
                "LOYALTY_API_RATE_LIMIT_ANONYMOUS", DEFAULT_ANONYMOUS_RATE_LIMIT
            ),
        )


def _rates(text: str, name: str) -> list[RateLimitItem]:
    if text.strip() == "0":
        return []
    try:
        return parse_many(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc} (e.g. 1000/second or 50/second;2000/minute)") from None


@dataclass(frozen=True)
class _Route:
    """One route as the router sees it (prefix included), with what the guard needs."""

    context: RouteContext
    path: str
    methods: frozenset[str]
    scopes: frozenset[str]
    max_body: int | None
    keyed: bool  # needs a known key (some scope, or the caller itself)

    @classmethod
    def of(cls, context: RouteContext) -> _Route:
        scopes: set[str] = set()
        keyed = False
        dependant = getattr(context.original_route, "dependant", None)
        stack = [dependant] if dependant is not None else []
        while stack:
            d = stack.pop()
            if isinstance(d.call, Require):
                scopes.add(d.call.scope)
            keyed = keyed or d.call is get_principal
            stack.extend(d.dependencies)
        limit = getattr(context, "max_body_size", None)
        return cls(
            context,
            context.path or "unmatched",
            frozenset(context.methods or ()),
            frozenset(scopes),
            limit if isinstance(limit, int) else None,
            keyed or bool(scopes),
        )


@dataclass
class _Stream:
    over: bool = False  # the body went over its limit
    started: bool = False  # the app began its answer


class BodyTooLarge(Exception):
    """Raised into the app by the guarded `receive` once the body passes its limit."""


class Guard:
    def __init__(self, app: ASGIApp, keys: KeyStore, settings: GuardSettings) -> None:
        self.app = app
        self.keys = keys
        self.settings = settings
        self._routes: list[_Route] | None = None
        self._own: dict[str, list[RateLimitItem]] = {}  # keys' own rates, parsed once
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._per_key = _rates(settings.rate_limit, "LOYALTY_API_RATE_LIMIT")
        self._per_address = _rates(
            settings.anonymous_rate_limit, "LOYALTY_API_RATE_LIMIT_ANONYMOUS"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        route, allowed = self._route(scope)
        status = 500

        async def send_secured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in present
                ]
            await send(message)

        try:
            await self._guarded(scope, receive, send_secured, method, route, allowed)
        finally:
            API_REQUESTS.labels(
                method if method in KNOWN_METHODS else "other",
                route.path if route is not None else "unmatched",
                str(status),
            ).inc()

    def _route(self, scope: Scope) -> tuple[_Route | None, set[str]]:
        """The route the router will run (its first full match) and, when there is none,
        the methods of every route that matches the path."""
        if self._routes is None:  # the app's routes are all in place by its first request
            self._routes = [_Route.of(c) for c in iter_route_contexts(scope["app"].routes)]
        allowed: set[str] = set()
        for route in self._routes:
            match, _ = route.context.matches(scope)
            if match == Match.FULL:
                return route, allowed
            if match == Match.PARTIAL:
                allowed |= route.methods
        return None, allowed

    async def _guarded(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        route: _Route | None,
        allowed: set[str],
    ) -> None:
        principal = self._principal(scope)
        retry = self._throttled(scope, principal)
        if retry is not None:
            await _reply(
                send,
                429,
                "rate_limited",
                f"too many requests; retry in {retry} s",
                [(b"retry-after", str(retry).encode())],
            )
            return
        if route is None and allowed:
            allow = ", ".join(sorted(allowed | {"OPTIONS"}))
            if method == "OPTIONS":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": [(b"allow", allow.encode())],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
            else:
                await _reply(
                    send,
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed here; allowed: {allow}",
                    [(b"allow", allow.encode())],
                )
            return
        if route is not None and route.keyed:
            header = _header(scope, b"x-api-key")
            if principal is None:
                reason = "unknown API key" if header else "send an API key in the X-API-Key header"
                await _reply(send, 401, "unauthenticated", reason)
                return
            missing = sorted(route.scopes - principal.scopes)
            if missing:
                reason = f"the key {principal.name} lacks scope {', '.join(missing)}"
                await _reply(send, 403, "forbidden", reason)
                return
        if principal is not None:
            scope.setdefault("state", {})["principal"] = principal
        limit = (route.max_body if route else None) or self.settings.max_body_bytes
        reason = f"the request body is over the limit of {limit} bytes"
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _reply(send, 413, "oversized", reason)
            return
        await self._limited(scope, receive, send, limit, reason)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, limit: int, reason: str
    ) -> None:
        state = _Stream()
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    state.over = True
                    raise BodyTooLarge(reason)
            return message

        async def send_unless_over(message: Message) -> None:
            if state.over:
                return  # the app's answer to a cut-off body: replaced by the 413 below
            if message["type"] == "http.response.start":
                state.started = True
            await send(message)

        try:
            await self.app(scope, receive_limited, send_unless_over)
        except BodyTooLarge:
            pass
        except Exception:
            if not state.over:
                raise
        if state.over and not state.started:
            await _reply(send, 413, "oversized", reason)

    def _principal(self, scope: Scope) -> Principal | None:
        key = _header(scope, b"x-api-key")
        return self.keys.authenticate(key) if key else None

    def _throttled(self, scope: Scope, principal: Principal | None) -> int | None:
        """Seconds to wait when the caller is over its rate, else None."""
        if principal is not None:
            items, who = self._per_key, f"key:{principal.name}"
            if principal.rate_limit is not None:
                items = self._own.get(principal.rate_limit) or _rates(
                    principal.rate_limit, f"rate_limit of {principal.name}"
                )
                self._own[principal.rate_limit] = items
        else:
            client = scope.get("client")
            items, who = self._per_address, f"address:{client[0] if client else 'unknown'}"
        for item in items:
            if not self._limiter.hit(item, who):
                reset = self._limiter.get_window_stats(item, who).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _reply(
    send: Send,
    status: int,
    code: str,
    reason: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = json.dumps(error_body(code, reason)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
