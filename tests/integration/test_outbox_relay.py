"""The outbox relay against the real PostgreSQL and Kafka: it outlives a lost connection.

A relay task that ended on a database error would leave every later change unpublished
while the engine went on committing them. Here the relay's connection is ended by the
server in the middle of its transaction (as a failover or an administrator would),
while the relay waits for a table lock the test holds.
"""

from __future__ import annotations

import asyncio
import secrets

import asyncpg  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text

from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.transport.kafka import KafkaPublisher, ensure_topics
from leadstage_engine.outbox import relay_forever
from tests.conftest import Environment
from tests.integration.blocking import backend_blocked_by

CHANGES = 20


async def published_change_ids(bootstrap: str, topic: str, expected: int) -> set[str]:
    """The change ids on ``topic``, read from its start until ``expected`` arrived
    (or 60 s passed)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        async with asyncio.timeout(60):
            while len(seen) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    for message in messages:
                        seen.update(v.decode() for k, v in message.headers if k == "change_id")
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return seen


async def test_the_relay_publishes_every_change_after_its_connection_was_lost(
    environment: Environment, sessions: SessionFactory
) -> None:
    bootstrap = environment.kafka_bootstrap_servers
    topic = f"{environment.topic_prefix}relay-test.v1"
    await ensure_topics(bootstrap, [topic], partitions=1, replication_factor=1)
    run = secrets.token_hex(4)
    change_ids = {f"relay-{run}-{n}" for n in range(CHANGES)}
    async with unit_of_work(sessions) as session:
        await session.execute(
            text(
                "INSERT INTO outbox (topic, key, change_id, payload)"
                " SELECT :topic, convert_to(c, 'UTF8'), c, convert_to('{}', 'UTF8')"
                " FROM unnest(CAST(:changes AS text[])) AS c"
            ),
            {"topic": topic, "changes": sorted(change_ids)},
        )

    blocker = await asyncpg.connect(environment.database_url.replace("+asyncpg", ""))
    publisher = KafkaPublisher(bootstrap)
    stopping = asyncio.Event()
    relay: asyncio.Task[None] | None = None
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        relay = asyncio.create_task(relay_forever(sessions, publisher, topic, stopping))
        waiting = await backend_blocked_by(blocker)
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", waiting)
        await holding.rollback()

        published = await published_change_ids(bootstrap, topic, CHANGES)
        assert not relay.done(), "the relay stopped"
        assert published == change_ids
    finally:
        stopping.set()
        if relay is not None:
            await asyncio.wait_for(relay, timeout=30)
        await publisher.stop()
        await blocker.close()
    async with unit_of_work(sessions) as session:
        unpublished = await session.scalar(
            text(
                "SELECT count(*) FROM outbox"
                " WHERE topic = :topic AND published_at IS NULL AND change_id LIKE :run"
            ),
            {"topic": topic, "run": f"relay-{run}-%"},
        )
    assert unpublished == 0
