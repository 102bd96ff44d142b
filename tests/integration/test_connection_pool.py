"""The connection pool on the real PostgreSQL: never more connections than its size, and
a request that finds every connection busy for the whole timeout answers 503."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.session import create_engine
from leadstage.http import install_error_handlers
from tests.conftest import Environment


def small_pool(environment: Environment, size: int, timeout: float) -> AsyncEngine:
    settings = environment.settings().model_copy(
        update={"database_pool_size": size, "database_pool_timeout_seconds": timeout}
    )
    return create_engine(settings, application_name="leadstage-tests-pool")


def app_reading(database: AsyncEngine) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/now")
    async def now() -> dict[str, str]:
        async with database.connect() as connection:
            return {"now": str(await connection.scalar(text("SELECT now()")))}

    return app


async def backends(database: AsyncEngine) -> int:
    async with database.connect() as connection:
        found = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'leadstage-tests-pool'"
            )
        )
    return int(found or 0)


async def test_a_burst_waits_for_the_pool_instead_of_opening_connections(
    environment: Environment, database: AsyncEngine
) -> None:
    pool = small_pool(environment, size=2, timeout=10)
    in_use: list[int] = []
    try:

        async def slow_read() -> None:
            async with pool.connect() as connection:
                in_use.append(pool.pool.checkedout())  # type: ignore[attr-defined]
                await connection.execute(text("SELECT pg_sleep(0.05)"))

        # Twenty concurrent reads on a pool of two: they queue for the two connections.
        await asyncio.gather(*(slow_read() for _ in range(20)))
        assert len(in_use) == 20
        assert max(in_use) == 2
        assert await backends(database) == 2
    finally:
        await pool.dispose()


async def test_a_request_finding_every_connection_busy_answers_503(
    environment: Environment,
) -> None:
    pool = small_pool(environment, size=1, timeout=0.2)
    transport = httpx.ASGITransport(app=app_reading(pool), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            async with pool.connect() as held:
                await held.execute(text("SELECT 1"))
                busy = await http.get("/now")
            free = await http.get("/now")
    finally:
        await pool.dispose()
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "database_busy"
    assert free.status_code == 200
