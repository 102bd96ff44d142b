"""Finding the backend that waits for a lock a test holds (to terminate it mid-statement)."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]


async def backend_blocked_by(blocker: asyncpg.Connection) -> int:
    """The pid of the backend that waits for a lock ``blocker``'s transaction holds."""
    async with asyncio.timeout(30):
        while True:
            # Inside a transaction, activity is read once unless its snapshot is cleared:
            # a backend that starts waiting after the first poll would never be seen.
            await blocker.execute("SELECT pg_stat_clear_snapshot()")
            pid = await blocker.fetchval(
                "SELECT pid FROM pg_stat_activity"
                " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.05)
