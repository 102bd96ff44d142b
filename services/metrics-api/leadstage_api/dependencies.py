"""Request dependencies: the database session and the caller's token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from leadstage.credentials import CachedLookup, Caller
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.http import ApiError

_bearer = HTTPBearer(auto_error=False, description="An API token (`leadstage tokens create`).")


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: SessionFactory = request.app.state.sessions
    async with unit_of_work(sessions) as session:
        yield session


Session = Annotated[AsyncSession, Depends(db_session)]


async def single_statement_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """A connection without a transaction (autocommit) and without the ORM, for the
    lead lookups, which read with ONE statement: a statement sees one snapshot on its
    own, and skipping BEGIN and COMMIT saves two of four round trips."""
    database: AsyncEngine = request.app.state.single_statement_database
    async with database.connect() as connection:
        yield connection


SingleStatementConnection = Annotated[AsyncConnection, Depends(single_statement_connection)]


def require_scope(scope: str) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        if credentials is None:
            raise ApiError(
                status.HTTP_401_UNAUTHORIZED,
                "unauthorized",
                "A bearer token is required.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        tokens: CachedLookup[Caller] = request.app.state.tokens
        found = await tokens(credentials.credentials)
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
