"""Monthly partitions of ``touchpoints`` (migration 0013).

The SQL function ``ensure_touchpoint_partitions`` holds the logic (one place,
versioned with the schema); this module decides the range and when to call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, date, datetime

from sqlalchemy import text

from leadstage.db.session import SessionFactory, unit_of_work

logger = logging.getLogger(__name__)

#: Ingest refuses events older than its horizon (730 days by default) and more than a
#: day ahead; partitions cover that span, and anything else lands in the default.
MONTHS_BACK = 25
MONTHS_AHEAD = 3


def add_months(month_start: date, months: int) -> date:
    index = month_start.year * 12 + month_start.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_range(today: date) -> tuple[date, date]:
    """The first and last months (their first days) to keep partitions for."""
    this_month = today.replace(day=1)
    return add_months(this_month, -MONTHS_BACK), add_months(this_month, MONTHS_AHEAD)


async def ensure_touchpoint_partitions(sessions: SessionFactory, today: date) -> int:
    """Create the missing monthly partitions around ``today``; return how many."""
    first, last = partition_range(today)
    async with unit_of_work(sessions) as session:
        created = await session.scalar(
            text("SELECT ensure_touchpoint_partitions(:first, :last)"),
            {"first": first, "last": last},
        )
    return int(created or 0)


async def maintain_touchpoint_partitions(
    sessions: SessionFactory, stopping: asyncio.Event, *, every_seconds: float = 6 * 3600
) -> None:
    """Keep next months' partitions ahead of the clock until ``stopping`` is set."""
    while not stopping.is_set():
        try:
            created = await ensure_touchpoint_partitions(sessions, datetime.now(UTC).date())
            if created:
                logger.info("created %d touchpoint partitions", created)
        except Exception:
            # Not fatal: without a month's partition its rows go to the default one.
            logger.exception("could not create touchpoint partitions; retrying later")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=every_seconds)
