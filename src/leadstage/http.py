"""HTTP plumbing every service shares: the error envelope, health routes, limits.

Every error a client sees has one shape::

    {"error": {"code": "schema_violation", "message": "...",
               "details": [{"field": "occurred_at", "reason": "..."}]}}
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    field: str | None
    reason: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """Raise from a handler or service to answer with the error envelope."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        details: Sequence[ErrorDetail] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})


def error_response(error: ApiError) -> JSONResponse:
    body = ErrorEnvelope(
        error=ErrorBody(code=error.code, message=error.message, details=error.details)
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=error.status_code, headers=error.headers
    )


_LOCATION_ROOTS = frozenset({"body", "query", "path", "header"})
# Pydantic names the union member a value was tried against inside ``loc``
# ("str-enum[TouchpointType]", "constrained-str"): not part of the field's path.
_UNION_MEMBER_TAGS = frozenset({"constrained-str", "str", "int", "float", "bool", "none"})


def field_path(location: Sequence[int | str]) -> str | None:
    """``("body", "account", "domain")`` -> ``"account.domain"``; None for the whole body."""
    parts = [
        str(part)
        for part in location
        if part not in _LOCATION_ROOTS
        and not (isinstance(part, str) and ("[" in part or part in _UNION_MEMBER_TAGS))
    ]
    return ".".join(parts) or None


def validation_details(errors: Sequence[Any]) -> list[ErrorDetail]:
    return [ErrorDetail(field=field_path(e["loc"]), reason=e["msg"]) for e in errors]


async def _on_api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)  # noqa: S101 - registered for ApiError only
    return error_response(error)


async def _on_validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)  # noqa: S101
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(
            ApiError(
                status.HTTP_400_BAD_REQUEST,
                "json_invalid",
                "The request body is not valid JSON.",
                details=[
                    ErrorDetail(field=None, reason=str(e.get("ctx", {}).get("error", e["msg"])))
                    for e in errors
                    if e.get("type") == "json_invalid"
                ],
            )
        )
    return error_response(
        ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            "The request does not match the schema.",
            details=validation_details(errors),
        )
    )


async def _on_http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)  # noqa: S101
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(
        ApiError(error.status_code, code, str(error.detail), headers=error.headers)
    )


async def _on_pool_exhausted(request: Request, error: Exception) -> JSONResponse:
    # Every connection of the pool stayed busy for the whole pool timeout: the database
    # is the bottleneck right now, and a retry a moment later is the right answer.
    logger.warning("no free database connection for %s %s", request.method, request.url.path)
    return error_response(
        ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "database_busy",
            "Every database connection is busy; retry shortly.",
            headers={"Retry-After": "1"},
        )
    )


async def _on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # The client learns nothing of the internals; the log has everything.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        ApiError(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Internal server error.")
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(PoolTimeoutError, _on_pool_exhausted)
    app.add_exception_handler(Exception, _on_unexpected_error)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope, "description": description}
    for code, description in {
        400: "Malformed JSON.",
        401: "Missing or invalid credentials.",
        422: "The body or a parameter violates the schema; `details` names each field.",
    }.items()
}


ReadinessCheck = Callable[[], Awaitable[None]]


def health_router(checks: Callable[[], Mapping[str, ReadinessCheck]]) -> APIRouter:
    """``/healthz``: the process is alive. ``/readyz``: every dependency answers."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: database and transport reachable",
        responses={503: {"description": "A dependency is not reachable."}},
    )
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks().items():
            try:
                await check()
                results[name] = "ok"
            except Exception as error:  # noqa: BLE001 - any failure means not ready
                results[name] = f"unavailable: {type(error).__name__}"
        ready = all(value == "ok" for value in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": results},
            status_code=200 if ready else 503,
        )

    return router


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before any handler parses them.

    Checks ``Content-Length`` first and counts streamed chunks too, so a client
    that lies about (or omits) the length is stopped as well.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, per_path: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.default_max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(scope, receive, send, max_bytes)
            return
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > max_bytes:
                await self._refuse(scope, receive, send, max_bytes)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        response = error_response(
            ApiError(
                status.HTTP_413_CONTENT_TOO_LARGE,
                "size_violation",
                f"The request body is larger than {max_bytes} bytes.",
            )
        )
        await response(scope, receive, send)


class RejectNulCharacters:
    """Refuses a request whose path or query string holds a NUL character (422).

    PostgreSQL text cannot store or compare ``\\x00``: passed on, such a parameter would
    fail inside the database as a server error instead of a client error naming it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = unquote_to_bytes(scope.get("query_string", b""))
            where = "query" if b"\x00" in query else "path" if "\x00" in scope["path"] else None
            if where is not None:
                response = error_response(
                    ApiError(
                        status.HTTP_422_UNPROCESSABLE_CONTENT,
                        "schema_violation",
                        "The request is invalid.",
                        details=[ErrorDetail(field=where, reason="NUL characters are not allowed")],
                    )
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
