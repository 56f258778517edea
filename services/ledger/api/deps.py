"""Dependencies: the ledger, the key store and the caller, swapped in tests with overrides."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from services.ledger.api.auth import KeyStore, Principal
from services.ledger.api.errors import ApiError
from services.ledger.application.service import Ledger
from services.tiers.rebuild import TierStateCache

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


def get_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def get_tier_states(request: Request) -> TierStateCache:
    found: TierStateCache | None = getattr(request.app.state, "tier_states", None)
    if found is None:  # an app made without one: seeded on each read
        found = request.app.state.tier_states = TierStateCache(get_ledger(request).app)
    return found


LedgerDep = Annotated[Ledger, Depends(get_ledger)]
TierStatesDep = Annotated[TierStateCache, Depends(get_tier_states)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]


def get_principal(
    request: Request, keys: KeysDep, key: Annotated[str | None, Security(_api_key)]
) -> Principal:
    """The caller the guard (api/guard.py) found before the body was read; checked again
    here so a route is never served to a caller without a key."""
    found = request.scope.get("state", {}).get("principal")
    if isinstance(found, Principal):
        return found
    if not key:
        raise ApiError(401, "unauthenticated", "send an API key in the X-API-Key header")
    principal = keys.authenticate(key)
    if principal is None:
        raise ApiError(401, "unauthenticated", "unknown API key")
    return principal


class Require:
    """A route's scope, declared once in its signature (`EventsWriter` and the rest). The
    guard reads it from the route's dependencies and answers 401/403 before the body is
    read; the dependency checks it again."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(self, principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if self.scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"the key {principal.name} lacks scope {self.scope}")
        return principal


def require(scope: str) -> Require:
    return Require(scope)


EventsWriter = Annotated[Principal, Depends(require("events:write"))]
MembersReader = Annotated[Principal, Depends(require("members:read"))]
MembersWriter = Annotated[Principal, Depends(require("members:write"))]
OpsWriter = Annotated[Principal, Depends(require("ops:write"))]
