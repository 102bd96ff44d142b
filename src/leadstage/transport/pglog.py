"""The embedded transport: a durable, partitioned event log in PostgreSQL.

It keeps Kafka's contract where the services rely on it: records keyed to a
partition by the same murmur2 hash as Kafka's default partitioner, dense
per-partition offsets that become visible in order, and an acknowledged
publish that is committed. One engine process reads every partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from itertools import groupby

from aiokafka.partitioner import murmur2
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from leadstage.db.models import EventLogHead, EventLogRecord
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.transport.base import (
    AssignmentListener,
    OutgoingRecord,
    Record,
    TopicPartition,
    TransportUnavailableError,
)

logger = logging.getLogger(__name__)

#: How often an idle reader looks for new records.
POLL_INTERVAL_SECONDS = 0.02


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for keyed records (murmur2, positive, modulo)."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


class PostgresLogPublisher:
    def __init__(
        self,
        sessions: SessionFactory,
        *,
        partitions: int,
        timeout_seconds: float = 5.0,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._sessions = sessions
        self._partitions = partitions
        self._timeout = timeout_seconds
        self._on_stop = on_stop

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._on_stop is not None:
            await self._on_stop()

    async def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._append(topic, records)
        except TimeoutError as error:
            raise TransportUnavailableError("event log append timed out") from error

    async def _append(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        by_partition = sorted(
            ((partition_for(r.key, self._partitions), i, r) for i, r in enumerate(records)),
            key=lambda item: (item[0], item[1]),
        )
        try:
            async with unit_of_work(self._sessions) as session:
                # Partitions in ascending order, so concurrent publishers lock the
                # head rows in one order and cannot deadlock.
                for partition, group in groupby(by_partition, key=lambda item: item[0]):
                    batch = [record for _, _, record in group]
                    head = await session.execute(
                        text(
                            "UPDATE event_log_heads SET next_offset = next_offset + :n "
                            "WHERE topic = :topic AND partition = :partition "
                            "RETURNING next_offset"
                        ),
                        {"n": len(batch), "topic": topic, "partition": partition},
                    )
                    end = head.scalar_one_or_none()
                    if end is None:
                        raise TransportUnavailableError(
                            f"topic {topic!r} partition {partition} does not exist "
                            "(run `leadstage topics`)"
                        )
                    first = end - len(batch)
                    await session.execute(
                        insert(EventLogRecord),
                        [
                            {
                                "topic": topic,
                                "partition": partition,
                                "offset": first + i,
                                "key": record.key,
                                "value": record.value,
                                "headers": dict(record.headers),
                            }
                            for i, record in enumerate(batch)
                        ],
                    )
        except (DBAPIError, OSError, SQLAlchemyTimeoutError) as error:
            raise TransportUnavailableError(f"event log unavailable: {error!r}") from error

    async def ping(self) -> None:
        await _ping(self._sessions)


class PostgresLogSource:
    """Reads every partition of one topic from the positions the listener returns."""

    def __init__(self, sessions: SessionFactory, *, topic: str, partitions: int) -> None:
        self._sessions = sessions
        self._topic = topic
        self._partitions = partitions
        self._positions: dict[TopicPartition, int] = {}

    async def start(self, listener: AssignmentListener) -> None:
        assigned = {TopicPartition(self._topic, p) for p in range(self._partitions)}
        stored = await listener.on_assigned(assigned)
        self._positions = {tp: stored.get(tp, 0) for tp in assigned}

    async def stop(self) -> None:
        return None

    async def getmany(
        self,
        *,
        timeout_ms: int,
        max_records: int,
        excluding: Collection[TopicPartition] = (),
    ) -> list[Record]:
        partitions = sorted(set(self._positions) - set(excluding))
        if not partitions:
            await asyncio.sleep(timeout_ms / 1000)
            return []
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            records = await self._read(partitions, max_records)
            if records or time.monotonic() >= deadline:
                return records
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def _read(self, partitions: Sequence[TopicPartition], max_records: int) -> list[Record]:
        try:
            return await self._read_once(partitions, max_records)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
            # A connection the server ended (a restart, a failover; pools without a
            # pre-ping meet it here first). Reading moves nothing: read again on a fresh
            # connection, as the pool has replaced its connections by now.
            logger.warning("event log read lost its connection (%r); reading again", error)
            return await self._read_once(partitions, max_records)

    async def _read_once(
        self, partitions: Sequence[TopicPartition], max_records: int
    ) -> list[Record]:
        # Each partition gets its share of the batch, so a backlog on one partition
        # does not starve the others (one query, a LATERAL read per partition).
        per_partition = max(1, max_records // len(partitions))
        async with self._sessions() as session:
            rows = await session.execute(
                text(
                    "SELECT l.topic, l.partition, l.offset, l.key, l.value, l.headers "
                    "FROM unnest(CAST(:partitions AS int[]), CAST(:offsets AS bigint[])) "
                    "  AS p(partition, next_offset) "
                    "CROSS JOIN LATERAL ("
                    "  SELECT * FROM event_log e WHERE e.topic = :topic "
                    "  AND e.partition = p.partition AND e.offset >= p.next_offset "
                    "  ORDER BY e.offset LIMIT :per_partition) AS l "
                    "ORDER BY l.partition, l.offset"
                ),
                {
                    "topic": self._topic,
                    "partitions": [tp.partition for tp in partitions],
                    "offsets": [self._positions[tp] for tp in partitions],
                    "per_partition": per_partition,
                },
            )
            records = [
                Record(
                    topic=row.topic,
                    partition=row.partition,
                    offset=row.offset,
                    key=row.key,
                    value=row.value,
                    headers=row.headers,
                )
                for row in rows
            ]
        for record in records:
            self._positions[record.topic_partition] = record.offset + 1
        return records

    async def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        return None  # PostgreSQL already holds the positions

    async def ping(self) -> None:
        await _ping(self._sessions)


async def ensure_log_partitions(
    sessions: SessionFactory, topics: Sequence[str], partitions: int
) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(
            insert(EventLogHead)
            .values(
                [
                    {"topic": topic, "partition": p, "next_offset": 0}
                    for topic in topics
                    for p in range(partitions)
                ]
            )
            .on_conflict_do_nothing()
        )


async def _ping(sessions: SessionFactory) -> None:
    try:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))
    except (DBAPIError, OSError) as error:
        raise TransportUnavailableError(f"event log unavailable: {error!r}") from error
