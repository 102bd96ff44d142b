"""Ingest's pool has no pre-ping: connections the server closed are still never used.

On the real PostgreSQL and Kafka: the test terminates the pool's backends between two
intake groups (as a PostgreSQL restart or an administrator would), and the next
events must still be accepted, claimed once and produced.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.session import create_engine, create_session_factory
from leadstage.settings import IngestSettings
from leadstage.transport import create_publisher
from leadstage_ingest.database import create_ingest_engine
from leadstage_ingest.intake import native_candidate
from leadstage_ingest.service import DeadLetters, Intake
from tests.conftest import Environment
from tests.integration.blocking import backend_blocked_by

SOURCE = "stale-tests"


@dataclass
class Ingest:
    intake: Intake
    engine: AsyncEngine
    application_name: str


def ingest_settings(environment: Environment) -> IngestSettings:
    return IngestSettings(
        database_url=environment.database_url,
        kafka_bootstrap_servers=environment.kafka_bootstrap_servers,
        topic_prefix=environment.topic_prefix,
        transport="kafka",
    )


async def running_intake(settings: IngestSettings, engine: AsyncEngine) -> AsyncIterator[Intake]:
    sessions = create_session_factory(engine)
    publisher = create_publisher(settings, sessions)
    await publisher.start()
    dead_letters = DeadLetters(publisher, settings.dead_letter_topic)
    intake = Intake(settings, sessions, publisher, dead_letters, database=engine)
    try:
        yield intake
    finally:
        await intake.stop()  # gives back the connections it holds between groups
        await publisher.stop()
        await engine.dispose()


@pytest.fixture
async def ingest(environment: Environment) -> AsyncIterator[Ingest]:
    """Ingest's own pool: no pre-ping, closed connections refused at checkout."""
    name = f"stale-{secrets.token_hex(3)}"
    settings = ingest_settings(environment)
    engine = create_ingest_engine(settings, application_name=name)
    async for intake in running_intake(settings, engine):
        yield Ingest(intake, engine, name)


@pytest.fixture
async def ingest_without_checkout_check(environment: Environment) -> AsyncIterator[Ingest]:
    """No pre-ping and no checkout check: only the intake's retry stands between a
    closed connection and a failed group."""
    name = f"stale-{secrets.token_hex(3)}"
    settings = ingest_settings(environment)
    engine = create_engine(settings, application_name=name, pre_ping=False)
    async for intake in running_intake(settings, engine):
        yield Ingest(intake, engine, name)


async def accept(ingest: Ingest, event: dict[str, object]) -> str:
    candidate = native_candidate(event, SOURCE, datetime.now(UTC), ingest.intake.limits)
    [outcome] = await ingest.intake.accept([candidate], SOURCE, intake="http")
    return outcome.status


async def terminate_backends(database: AsyncEngine, application_name: str) -> int:
    async with database.connect() as connection:
        terminated = await connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": application_name},
        )
    await asyncio.sleep(0.3)  # the client notices the closed sockets
    return int(terminated or 0)


async def claimed(database: AsyncEngine, event_ids: list[str]) -> int:
    async with database.connect() as connection:
        found = await connection.scalar(
            text(
                "SELECT count(*) FROM ingest_dedup WHERE source = :source"
                " AND event_id = ANY(CAST(:ids AS text[]))"
            ),
            {"source": SOURCE, "ids": event_ids},
        )
    return int(found or 0)


def lost_connections() -> float:
    return REGISTRY.get_sample_value("leadstage_ingest_connections_lost_total") or 0.0


def events(marker: str) -> tuple[dict[str, object], dict[str, object]]:
    """One event for each intake path: a single lead id (the raw connection's path) and
    an email (the ORM session's path, which may merge identities)."""
    at = datetime.now(UTC).isoformat()
    by_lead = {"event_id": f"{marker}-lead", "type": "page_view", "lead_id": f"lead-{marker}"}
    by_email = {"event_id": f"{marker}-email", "type": "page_view", "email": f"{marker}@ex.com"}
    return {**by_lead, "occurred_at": at}, {**by_email, "occurred_at": at}


async def test_connections_closed_by_the_server_are_replaced_at_checkout(
    ingest: Ingest, database: AsyncEngine
) -> None:
    warm_lead, warm_email = events(secrets.token_hex(4))
    assert await accept(ingest, warm_lead) == "accepted"
    assert await accept(ingest, warm_email) == "accepted"
    assert await terminate_backends(database, ingest.application_name) >= 1
    lost_before = lost_connections()

    by_lead, by_email = events(secrets.token_hex(4))
    assert await accept(ingest, by_lead) == "accepted"
    assert await accept(ingest, by_email) == "accepted"

    # Refused at checkout, so no group failed and none had to run again.
    assert lost_connections() == lost_before
    assert await claimed(database, [str(by_lead["event_id"]), str(by_email["event_id"])]) == 2
    # Claimed for good: the same events again are duplicates.
    assert await accept(ingest, by_lead) == "duplicate"
    assert await accept(ingest, by_email) == "duplicate"


async def test_a_session_group_whose_connection_broke_runs_again_on_a_fresh_one(
    ingest_without_checkout_check: Ingest, database: AsyncEngine
) -> None:
    ingest = ingest_without_checkout_check
    _, event = events(secrets.token_hex(4))  # an email: the ORM session's path
    assert await accept(ingest, event) == "accepted"
    assert await terminate_backends(database, ingest.application_name) >= 1
    lost_before = lost_connections()

    retried = {**event, "event_id": f"{event['event_id']}-after"}
    assert await accept(ingest, retried) == "accepted"

    assert lost_connections() == lost_before + 1
    assert await claimed(database, [str(retried["event_id"])]) == 1
    assert await accept(ingest, retried) == "duplicate"


async def test_a_raw_connection_group_whose_connection_broke_runs_again_on_a_fresh_one(
    ingest: Ingest, database: AsyncEngine, environment: Environment
) -> None:
    """The raw asyncpg path's connection breaks in the middle of a group: the server ends
    its backend while the claim function waits for a lead's identity lock."""
    event, _ = events(secrets.token_hex(4))
    lock_name = f"lead_id\x1f{event['lead_id']}"
    lost_before = lost_connections()
    blocker = await asyncpg.connect(environment.database_url.replace("+asyncpg", ""))
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock_name)
        accepting = asyncio.create_task(accept(ingest, event))
        waiting = await backend_blocked_by(blocker)
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", waiting)
        await holding.rollback()
        assert await asyncio.wait_for(accepting, timeout=30) == "accepted"
    finally:
        await blocker.close()

    assert lost_connections() == lost_before + 1
    assert await claimed(database, [str(event["event_id"])]) == 1
    assert await accept(ingest, event) == "duplicate"
