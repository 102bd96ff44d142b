"""Engine, sessions and the unit of work.

The unit of work is the only place that commits: an HTTP request or a
consumer batch opens it, repositories and services only add to the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from leadstage.settings import ServiceSettings

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(
    settings: ServiceSettings, *, application_name: str, autocommit: bool = False
) -> AsyncEngine:
    """The service's connection pool. ``autocommit``: for single-statement reads, which
    need no BEGIN/COMMIT (a statement is its own snapshot), and whose pre-ping is then
    one round trip instead of three (BEGIN, ping, ROLLBACK)."""
    # Other pools keep the server's default isolation level, as they always have.
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return create_async_engine(
        str(settings.database_url),
        **isolation,
        pool_size=settings.database_pool_size,
        pool_timeout=settings.database_pool_timeout_seconds,
        pool_pre_ping=True,
        # Tracebacks then carry no parameters: no emails or payloads in the logs.
        hide_parameters=True,
        connect_args={"server_settings": {"application_name": application_name}},
    )


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def unit_of_work(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    """One transaction: committed if the block ends normally, rolled back if it raises."""
    async with sessions() as session, session.begin():
        yield session


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
