"""One error shape for every 4xx/5xx: {"code", "message", "field"?, "errors"?}."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import DomainError, Forbidden, InvalidCommand, NotFound, RuleViolation, VersionConflict

STATUS = {InvalidCommand: 422, NotFound: 404, RuleViolation: 409, VersionConflict: 412, Forbidden: 403}


class ErrorBody(BaseModel):
    """The error shape of every 4xx/5xx answer, as the OpenAPI documents declare it."""

    code: str
    message: str
    field: str | None = None


def error_body(code: str, message: str, field: str | None = None, **extra) -> dict:
    body = {"code": code, "message": message}
    if field:
        body["field"] = field
    body.update(extra)
    return body


def field_path(loc: tuple) -> str:
    """('body', 'items', 0, 'quantity') -> 'items[0].quantity'; header/query names kept as sent."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": field_path(tuple(e["loc"])), "reason": e["msg"]} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "reason": "invalid request"}
        return JSONResponse(error_body("validation_error", f"{first['field']}: {first['reason']}", first["field"],
                                       errors=errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):
            return JSONResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
