"""A webhook dispatcher against the real PostgreSQL and Kafka: it outlives a lost
connection while storing its position, and delivers the batch again rather than lose it.

The server ends the dispatcher's connection while its position write waits for a lock
the test holds on ``consumer_offsets`` (as a failover would end it mid-transaction).
"""

from __future__ import annotations

import asyncio
import json
import secrets

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text

from leadstage.db.models import WebhookSubscription
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.transport.base import OutgoingRecord
from leadstage.transport.kafka import KafkaPublisher, KafkaRecordSource, ensure_topics
from leadstage_engine.webhooks import WebhookDispatcher
from tests.conftest import Environment, Receiver
from tests.integration.blocking import backend_blocked_by


async def delivered(receiver: Receiver, change_id: str, times: int) -> int:
    """How often ``change_id`` reached the receiver, once it did ``times`` times (or 30 s
    passed)."""
    count = 0
    async with asyncio.timeout(30):
        while True:
            count = sum(
                1
                for headers, _ in receiver.received
                if headers["x-leadstage-change-id"] == change_id
            )
            if count >= times:
                return count
            await asyncio.sleep(0.05)


async def test_a_dispatcher_whose_position_write_lost_its_connection_delivers_again(
    environment: Environment, sessions: SessionFactory, receiver: Receiver
) -> None:
    bootstrap = environment.kafka_bootstrap_servers
    run = secrets.token_hex(4)
    topic, group, event = (
        f"{environment.topic_prefix}webhook-test-{run}.v1",
        f"webhook-test-{run}",
        f"WebhookTest{run}",
    )
    await ensure_topics(bootstrap, [topic], partitions=1, replication_factor=1)
    async with unit_of_work(sessions) as session:
        # Only this test's changes match: other tests' dispatchers never call it.
        subscription = WebhookSubscription(
            url=receiver.url, secret=secrets.token_hex(16), events=[event]
        )
        session.add(subscription)

    def change(change_id: str) -> OutgoingRecord:
        body = {"event": event, "change_id": change_id, "funnel": "b2b-six-stage"}
        return OutgoingRecord(key=b"lead", value=json.dumps(body).encode())

    publisher = KafkaPublisher(bootstrap)
    dispatcher = WebhookDispatcher(
        sessions, KafkaRecordSource(bootstrap, topic=topic, group=group), group=group
    )
    running = asyncio.create_task(dispatcher.run())
    blocker = await asyncpg.connect(environment.database_url.replace("+asyncpg", ""))
    try:
        await publisher.publish(topic, [change(f"{run}-first")])
        assert await delivered(receiver, f"{run}-first", 1) == 1
        await asyncio.sleep(0.5)  # its position stored (a short transaction)

        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE consumer_offsets IN ACCESS EXCLUSIVE MODE")
        await publisher.publish(topic, [change(f"{run}-second")])
        waiting = await backend_blocked_by(blocker)
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", waiting)
        await holding.rollback()

        # Delivered, its position lost with the connection, delivered again and stored.
        assert await delivered(receiver, f"{run}-second", 2) == 2
        assert not running.done(), "the dispatcher stopped"
        async with asyncio.timeout(30):
            while True:
                async with unit_of_work(sessions) as session:
                    stored = await session.scalar(
                        text(
                            "SELECT next_offset FROM consumer_offsets"
                            " WHERE consumer_group = :group AND topic = :topic"
                        ),
                        {"group": group, "topic": topic},
                    )
                if stored == 2:
                    break
                await asyncio.sleep(0.1)
    finally:
        dispatcher.request_stop()
        await asyncio.wait_for(running, timeout=30)
        await publisher.stop()
        await blocker.close()
        async with unit_of_work(sessions) as session:
            await session.execute(
                text("UPDATE webhook_subscriptions SET disabled_at = now() WHERE id = :id"),
                {"id": subscription.id},
            )
