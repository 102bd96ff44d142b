"""The two hot intake routes, served ahead of the framework's middleware stack.

A single-event request spent about a tenth of its CPU passing through the stack's
layers (server errors, telemetry, the body limit, exceptions, the exit stack, routing,
the endpoint wrapper), each a coroutine call per request and per response message.
``POST /v1/events`` and ``/v1/events/batch`` are dispatched here instead, with the same
guards in the same order (the body size limit, the NUL check) and the app's own
exception handlers, so every answer, error envelope included, is the one the stack
gives. Every other request, and the OpenAPI document, go through the full stack.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from leadstage.http import BodySizeLimitMiddleware, RejectNulCharacters

Endpoint = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Mapping[str, Endpoint],
        exception_handlers: Mapping[Any, Callable[..., Any]],
        guard: Callable[[ASGIApp], ASGIApp],
    ) -> None:
        self.app = app
        self._routes = dict(routes)
        self._exception_handlers = exception_handlers
        self._guarded = guard(self._serve)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self._routes:
            await self._guarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._routes[scope["path"]](request)
        except Exception as error:  # noqa: BLE001 - answered by the app's own handlers
            response = await self._answer(request, error)
        await response(scope, receive, send)

    async def _answer(self, request: Request, error: Exception) -> Response:
        """What the app's exception handlers answer (the most specific one, as the
        framework picks it; ``Exception``'s handler logs and answers 500)."""
        for kind in type(error).__mro__:
            handler = self._exception_handlers.get(kind)
            if handler is not None:
                answer = handler(request, error)
                if inspect.isawaitable(answer):
                    answer = await answer
                assert isinstance(answer, Response)  # noqa: S101 - handlers answer
                return answer
        raise error


def body_guards(max_bytes: int, per_path: Mapping[str, int]) -> Callable[[ASGIApp], ASGIApp]:
    """The app's request guards, outermost first: the body size limit, then NUL."""

    def guard(app: ASGIApp) -> ASGIApp:
        return BodySizeLimitMiddleware(
            RejectNulCharacters(app), max_bytes=max_bytes, per_path=per_path
        )

    return guard
