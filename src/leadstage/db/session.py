"""Engine, sessions and the unit of work.

The unit of work is the only place that commits: an HTTP request or a
consumer batch opens it, repositories and services only add to the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolProxiedConnection

from leadstage import compact_json
from leadstage.settings import ServiceSettings

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(
    settings: ServiceSettings,
    *,
    application_name: str,
    autocommit: bool = False,
    pre_ping: bool = True,
) -> AsyncEngine:
    """The service's connection pool. ``autocommit``: for single-statement reads, which
    need no BEGIN/COMMIT (a statement is its own snapshot), and whose pre-ping is then
    one round trip instead of three (BEGIN, ping, ROLLBACK). ``pre_ping=False``: for a
    caller that detects stale connections itself (see ingest's app)."""
    # Other pools keep the server's default isolation level, as they always have.
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return create_async_engine(
        str(settings.database_url),
        **isolation,
        pool_size=settings.database_pool_size,
        # No overflow connections: SQLAlchemy closes an overflow connection as soon as it
        # is returned, so bursts above the pool size opened and closed connections over
        # and over. Each one costs a backend fork, authentication and codec set-up on a
        # cold backend, and slower requests widen the burst: at 500 lookups/s the API
        # opened 82 connections in 20 s and its p99 went from 7 to 125 ms (max 1.3 s).
        # A request beyond the pool waits for a connection instead (503 after
        # ``database_pool_timeout_seconds``).
        max_overflow=0,
        pool_timeout=settings.database_pool_timeout_seconds,
        pool_pre_ping=pre_ping,
        # Tracebacks then carry no parameters: no emails or payloads in the logs.
        hide_parameters=True,
        # jsonb values (stored payloads, lead states) are read by the hundred thousand;
        # orjson decodes them several times faster, integers beyond 64 bits still exact.
        json_deserializer=compact_json.loads,
        connect_args={"server_settings": {"application_name": application_name}},
    )


def refuse_closed_connections(engine: AsyncEngine) -> AsyncEngine:
    """For a pool without pre-ping (``pre_ping=False``): a connection the server closed
    while it sat in the pool (a restarted or terminated backend) is refused at checkout
    and replaced. asyncpg knows it is closed already, so this costs no round trip; a
    connection that breaks after checkout still fails its statement, and the caller
    retries."""
    event.listen(engine.sync_engine, "checkout", _refuse_closed_connection)
    return engine


def _refuse_closed_connection(
    _dbapi_connection: Any, _record: Any, proxy: PoolProxiedConnection
) -> None:
    """Pool checkout hook: the pool invalidates the connection and connects anew when
    this raises ``DisconnectionError``."""
    driver = proxy.driver_connection
    if driver is None or driver.is_closed():
        raise DisconnectionError("PostgreSQL closed this pooled connection")


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
