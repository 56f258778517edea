"""Dependencies: the ledger, the key store and the caller, swapped in tests with overrides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from services.ledger.api.auth import KeyStore, Principal
from services.ledger.api.errors import ApiError
from services.ledger.application.service import Ledger

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


def get_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


LedgerDep = Annotated[Ledger, Depends(get_ledger)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]


def get_principal(keys: KeysDep, key: Annotated[str | None, Security(_api_key)]) -> Principal:
    if not key:
        raise ApiError(401, "unauthenticated", "send an API key in the X-API-Key header")
    principal = keys.authenticate(key)
    if principal is None:
        raise ApiError(401, "unauthenticated", "unknown API key")
    return principal


def require(scope: str) -> Callable[[Principal], Principal]:
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"the key {principal.name} lacks scope {scope}")
        return principal

    return check


EventsWriter = Annotated[Principal, Depends(require("events:write"))]
MembersReader = Annotated[Principal, Depends(require("members:read"))]
MembersWriter = Annotated[Principal, Depends(require("members:write"))]
OpsWriter = Annotated[Principal, Depends(require("ops:write"))]
