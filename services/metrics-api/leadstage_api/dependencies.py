"""Request dependencies: the database session and the caller's token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.credentials import Caller, find_api_token
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.http import ApiError

_bearer = HTTPBearer(auto_error=False, description="An API token (`leadstage tokens create`).")


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: SessionFactory = request.app.state.sessions
    async with unit_of_work(sessions) as session:
        yield session


Session = Annotated[AsyncSession, Depends(db_session)]


def require_scope(scope: str) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def caller(
        session: Session,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        if credentials is None:
            raise ApiError(
                status.HTTP_401_UNAUTHORIZED,
                "unauthorized",
                "A bearer token is required.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        found = await find_api_token(session, credentials.credentials)
        if found is None:
            raise ApiError(
                status.HTTP_401_UNAUTHORIZED,
                "unauthorized",
                "The token is not valid.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if scope not in found.scopes:
            raise ApiError(
                status.HTTP_403_FORBIDDEN, "forbidden", f"The token lacks the scope {scope!r}."
            )
        return found

    return caller
