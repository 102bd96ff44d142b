"""The outbox relay: publishes the changes the engine committed, in commit order.

One relay publishes at a time (a PostgreSQL advisory lock), so a lead's changes
leave in the order they were made even with several engine processes. A row is
marked published only after the event log acknowledged it; a crash between the
two publishes it again with the same ``change_id``, which consumers use to drop
the repeat (at-least-once delivery, exactly-once effect for an idempotent
consumer).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from leadstage.db.models import OutboxRecord
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.transport.base import OutgoingRecord, Publisher, TransportUnavailableError

logger = logging.getLogger(__name__)

RELAY_LIMIT = 500  # changes published per transaction
RELAY_IDLE_SECONDS = 0.05


async def relay_once(
    sessions: SessionFactory, publisher: Publisher, topic: str, *, limit: int = RELAY_LIMIT
) -> int:
    """Publish up to ``limit`` unpublished changes of ``topic``; return how many.

    Only this deployment's topic: rows another deployment sharing the database
    wrote are not ours to publish (and must not block ours).
    """
    async with unit_of_work(sessions) as session:
        locked = await session.scalar(
            text("SELECT pg_try_advisory_xact_lock(hashtextextended(:lock, 0))"),
            {"lock": f"leadstage-outbox:{topic}"},
        )
        if not locked:
            return 0  # another relay is publishing
        rows = (
            await session.execute(
                select(
                    OutboxRecord.id,
                    OutboxRecord.topic,
                    OutboxRecord.key,
                    OutboxRecord.change_id,
                    OutboxRecord.payload,
                )
                .where(OutboxRecord.published_at.is_(None), OutboxRecord.topic == topic)
                .order_by(OutboxRecord.id)
                .limit(limit)
            )
        ).all()
        if not rows:
            return 0
        by_topic: dict[str, list[OutgoingRecord]] = {}
        for _, topic, key, change, payload in rows:
            by_topic.setdefault(topic, []).append(
                OutgoingRecord(key=key, value=payload, headers={"change_id": change})
            )
        for topic, records in by_topic.items():
            await publisher.publish(topic, records)
        # One array parameter, not an IN list of 500: SQLAlchemy renders an IN list's
        # parameters anew for every execution, and a primary-key lookup plans the same.
        await session.execute(
            text("UPDATE outbox SET published_at = now() WHERE id = ANY(CAST(:ids AS bigint[]))"),
            {"ids": [row[0] for row in rows]},
        )
        return len(rows)


async def relay_forever(
    sessions: SessionFactory, publisher: Publisher, topic: str, stopping: asyncio.Event
) -> None:
    """Publish continuously until ``stopping`` is set, then drain what is committed."""
    while True:
        try:
            published = await relay_once(sessions, publisher, topic)
        except (TransportUnavailableError, OSError, SQLAlchemyError) as error:
            # The broker or the database is away, or the transaction's connection was
            # lost: nothing was marked published, so the next round publishes the same
            # rows again. The relay must outlive it: a relay that stopped here would
            # leave every later change unpublished while the engine goes on.
            logger.warning("outbox relay could not publish (%r); retrying", error)
            published = 0
            if stopping.is_set():
                return
            await asyncio.sleep(1)
        if published == 0 and stopping.is_set():
            return
        if published < RELAY_LIMIT and not stopping.is_set():
            # A part batch means the relay has caught up: wait for more changes rather
            # than run a transaction (lock, read, publish, mark) for every few rows the
            # engine commits. Costs up to this much publication latency.
            await asyncio.sleep(RELAY_IDLE_SECONDS)
