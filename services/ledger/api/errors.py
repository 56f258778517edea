"""Every error as JSON with a machine-readable code and a human reason, mapped in one place."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.inbound import error_message
from services.ledger.domain.errors import Declined

NOT_FOUND = {"unknown_member", "unknown_hold", "not_found"}
INVALID = {
    "invalid_points",
    "invalid_ttl",
    "reason_required",
    "actor_required",
    "invalid_input",
    "not_json",
    "not_object",
    "not_utf8",
    "oversized",
    "schema",
    "unknown_type",
    "wrong_topic",
    "unknown_tier",
    "unknown_activity",
    "unknown_reward",
    "invalid_program",
}


BODY_PARSE_ERROR = "There was an error parsing the body"
"""FastAPI's detail of the 400 it raises when a JSON body cannot be read."""


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. insufficient_points")
    reason: str = Field(description="what went wrong, for a person")
    details: list[dict[str, Any]] | None = None


class ApiError(Exception):
    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


def status_for(code: str) -> int:
    if code in NOT_FOUND:
        return 404
    if code in INVALID:
        return 422
    return 409


def body(code: str, reason: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return ErrorBody(code=code, reason=reason, details=details).model_dump(exclude_none=True)


def _message(error: Any) -> str:
    if error.get("type") == "string_pattern_mismatch":
        return error_message(error)  # the character policy in words
    return str(error.get("msg", ""))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.code, exc.reason), status_code=exc.status)

    @app.exception_handler(Declined)
    async def _declined(_: Request, exc: Declined) -> JSONResponse:
        return JSONResponse(body(exc.reason, exc.detail), status_code=status_for(exc.reason))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": _message(e)} for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        reason = f"{'.'.join(first['loc'])}: {first['msg']}"
        # A body that is not JSON gets the code POST /v1/events gives it.
        not_json = any(e.get("type") == "json_invalid" for e in exc.errors())
        code = "not_json" if not_json else "invalid_input"
        return JSONResponse(body(code, reason, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
            # FastAPI gives up on a JSON body with a bare 400: bytes that are not UTF-8, or
            # JSON nested deeper than the parser goes. Both are invalid input, so 422.
            if isinstance(exc.__cause__, UnicodeDecodeError):
                cause = exc.__cause__
                reason = f"the body is not valid UTF-8: {cause.reason} at byte {cause.start}"
                return JSONResponse(body("not_utf8", reason), status_code=422)
            if isinstance(exc.__cause__, RecursionError):
                return JSONResponse(body("not_json", "the body is nested too deeply"), 422)
            return JSONResponse(body("not_json", "the body is not valid JSON"), 422)
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated"}
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse(
            body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )
