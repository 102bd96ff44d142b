"""What a group commit's connection costs ingest: a pool checkout per group against a
connection held between groups.

Ingest's common group runs BEGIN, one function call and COMMIT on a raw asyncpg
connection. Both ways run here in the same process, alternated, on the local
PostgreSQL, with a trivial statement in place of the function, and report the client's
CPU per group (the server's is not counted: it is the same either way).

    .venv/bin/python bench/ingest_connection.py [--groups 3000] [--rounds 3]

Needs `make services-up`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from leadstage.local import services
from leadstage.settings import ServiceSettings
from leadstage_ingest.database import create_ingest_engine

STATEMENT = "SELECT 1"


async def group(driver: Any) -> None:
    async with driver.transaction():
        await driver.fetchval(STATEMENT)


async def cpu_per_call(call: Callable[[], Awaitable[None]], calls: int) -> float:
    await call()  # warm
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    postgres = services.local_postgres()
    settings = ServiceSettings(database_url=postgres.url("postgres"))
    engine = create_ingest_engine(settings, application_name="bench-ingest-connection")
    held = await engine.connect()
    try:
        held_driver = (await held.get_raw_connection()).driver_connection

        async def checked_out() -> None:
            async with engine.connect() as connection:
                await group((await connection.get_raw_connection()).driver_connection)

        async def kept() -> None:
            await group(held_driver)

        pooled, reused = [], []
        for _ in range(args.rounds):
            pooled.append(await cpu_per_call(checked_out, args.groups))
            reused.append(await cpu_per_call(kept, args.groups))
    finally:
        await held.close()
        await engine.dispose()
    print(f"{args.groups} groups (BEGIN, {STATEMENT!r}, COMMIT), median of {args.rounds} rounds")
    print(f"checked out of the pool per group: {statistics.median(pooled):6.0f} us CPU")
    print(f"held between groups:               {statistics.median(reused):6.0f} us CPU")
    print(f"ratio: {statistics.median(pooled) / statistics.median(reused):.2f}")


if __name__ == "__main__":
    uvloop.run(main())
