"""Exactly-once effects: kill -9 the engine at random points while it processes 100,000
events (some of them late); the final state is identical to an uninterrupted run.

The leads belong to accounts of 8 contacts, spread over the partitions, so account
state (derived from contacts that different processes move) is compared too.

Also: two engine processes in one consumer group, with a rebalance in the middle,
end in the same state.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from leadstage.db.session import create_engine, create_session_factory
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.local import services
from leadstage.transport import create_publisher, create_topics
from leadstage.transport.base import OutgoingRecord
from leadstage.transport.kafka import delete_topics_with_prefix
from tests.conftest import Environment, leadstage_cli
from tests.e2e.conftest import Service, start_service

EVENTS = 100_000
LEADS = 5_000
CONTACTS_PER_ACCOUNT = 8
JOURNEY = [
    "page_view",
    "email_opened",
    "content_download",
    "page_view",
    "demo_requested",
    "call",
    "meeting_scheduled",
    "deal_lost",
    "demo_requested",
    "deal_won",
]

DUMP_QUERIES = {
    "lead_stages": "SELECT funnel, lead_key, stage, stage_entered_at, first_touch_at, "
    "last_touch_at, last_event_source, last_event_id FROM lead_stages "
    "ORDER BY funnel, lead_key",
    "lead_transitions": "SELECT funnel, lead_key, from_stage, to_stage, kind, rule, source, "
    "event_id, event_type, occurred_at FROM lead_transitions "
    "ORDER BY funnel, lead_key, occurred_at, source, event_id",
    "touchpoints": "SELECT source, event_id, lead_key, type, occurred_at FROM touchpoints "
    "ORDER BY source, event_id",
    # Per lead, the changes to publish in the order they were made.
    "outbox": "SELECT key, change_id, payload FROM outbox "
    "WHERE topic NOT LIKE '%account-stage-changed%' ORDER BY key, id",
    "account_stages": "SELECT funnel, account_id, funnel_version, stage, stage_entered_at, "
    "contacts, contacts_without_stage, contacts_by_stage::text, transitions, last_contact_at, "
    "last_contact_lead, last_contact_source, last_contact_event_id FROM account_stages "
    "ORDER BY funnel, account_id",
    "account_transitions": "SELECT funnel, account_id, seq, from_stage, to_stage, kind, "
    "lead_key, source, event_id, event_type, occurred_at, change_id FROM account_transitions "
    "ORDER BY funnel, account_id, seq",
    "account_contacts": "SELECT account_id, lead_key FROM account_contacts "
    "ORDER BY account_id, lead_key",
}
# Which account changes are published on the way (and withdrawn again) depends on how
# the partitions interleave; what stands once every correction is applied does not.
ACCOUNT_FACTS = "SELECT payload FROM outbox WHERE topic LIKE '%account-stage-changed%' ORDER BY id"
DUMPED = (*DUMP_QUERIES, "account_changes_standing")


def standing_account_changes(payloads: list[bytes]) -> list[tuple[object, ...]]:
    """The AccountStageChanged ids a consumer applying the facts in order ends with;
    asserts that no change is announced twice while it stands."""
    standing: set[str] = set()
    for payload in payloads:
        fact = json.loads(payload)
        if fact["event"] == "AccountHistoryCorrected":
            assert set(fact["withdrawn_change_ids"]) <= standing
            standing -= set(fact["withdrawn_change_ids"])
        else:
            assert fact["change_id"] not in standing, "an account change published twice"
            standing.add(fact["change_id"])
    return [(change,) for change in sorted(standing)]


def generate() -> list[OutgoingRecord]:
    """A journey per lead; about 2% of events arrive late (after later ones)."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    step = [0] * LEADS
    records: list[tuple[int, OutgoingRecord]] = []
    for n in range(EVENTS):
        lead = rng.randrange(LEADS)
        kind = JOURNEY[step[lead] % len(JOURNEY)]
        step[lead] += 1
        at = start + timedelta(minutes=n)
        arrival = n + (rng.randrange(50, 500) if rng.random() < 0.02 else 0)
        touchpoint = Touchpoint.accept(
            TouchpointIn(event_id=f"c{n}", type=kind, lead_id=f"lead-{lead}", occurred_at=at),
            source="crash",
            received_at=at,
        )
        records.append(
            (arrival, OutgoingRecord(key=f"lead-{lead}".encode(), value=touchpoint.to_record()))
        )
    records.sort(key=lambda item: item[0])
    return [record for _, record in records]


async def dump(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    from leadstage.settings import ServiceSettings

    engine = create_engine(ServiceSettings(database_url=database_url), application_name="dump")
    try:
        async with engine.connect() as connection:
            state = {
                name: [tuple(row) for row in await connection.execute(text(query))]
                for name, query in DUMP_QUERIES.items()
            }
            facts = [row[0] for row in await connection.execute(text(ACCOUNT_FACTS))]
            state["account_changes_standing"] = standing_account_changes(facts)
            return state
    finally:
        await engine.dispose()


async def attach_accounts(database_url: str) -> None:
    """What ingest would have linked: lead-n belongs to account acct-(n // 8)."""
    from leadstage.settings import ServiceSettings

    engine = create_engine(ServiceSettings(database_url=database_url), application_name="setup")
    try:
        async with engine.begin() as connection:
            accounts = sorted({lead // CONTACTS_PER_ACCOUNT for lead in range(LEADS)})
            await connection.execute(
                text("INSERT INTO accounts (id) VALUES (:id)"),
                [{"id": f"acct-{n}"} for n in accounts],
            )
            await connection.execute(
                text(
                    "INSERT INTO lead_accounts (lead_id, account_id, attached_by) "
                    "VALUES (:lead, :account, 'explicit')"
                ),
                [
                    {"lead": f"lead-{n}", "account": f"acct-{n // CONTACTS_PER_ACCOUNT}"}
                    for n in range(LEADS)
                ],
            )
    finally:
        await engine.dispose()


async def consumed(database_url: str, group: str) -> int:
    from leadstage.settings import ServiceSettings

    engine = create_engine(ServiceSettings(database_url=database_url), application_name="progress")
    try:
        async with engine.connect() as connection:
            total = await connection.scalar(
                text(
                    "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
                    "WHERE consumer_group = :group"
                ),
                {"group": group},
            )
            return int(total or 0)
    finally:
        await engine.dispose()


async def wait_consumed(database_url: str, group: str, *, within: float) -> None:
    deadline = time.monotonic() + within
    while (done := await consumed(database_url, group)) < EVENTS:
        assert time.monotonic() < deadline, f"only {done} of {EVENTS} consumed"
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
def crash_setup(environment: Environment) -> Iterator[dict[str, str]]:
    """A topic holding the 100,000 events, and fresh databases to process them into
    (dropped, with the topics, when the module is done)."""
    run = secrets.token_hex(3)
    prefix = f"crash-{run}."
    postgres = services.local_postgres()
    databases = {name: f"crash_{name}_{run}" for name in ("clean", "crashed", "pair")}
    urls = {}
    for name, database in databases.items():
        postgres.create_database(database)
        urls[name] = postgres.url(database)
        leadstage_cli("migrate", env={"LEADSTAGE_DATABASE_URL": urls[name]})
        asyncio.run(attach_accounts(urls[name]))

    async def publish() -> None:
        settings = environment.settings("kafka").model_copy(update={"topic_prefix": prefix})
        database = create_engine(settings, application_name="crash-setup")
        sessions = create_session_factory(database)
        await create_topics(settings, sessions)
        publisher = create_publisher(settings, sessions)
        await publisher.start()
        try:
            records = generate()
            for i in range(0, len(records), 5000):
                await publisher.publish(settings.touchpoints_topic, records[i : i + 5000])
        finally:
            await publisher.stop()
            await database.dispose()

    asyncio.run(publish())
    yield {**urls, "prefix": prefix}
    for database in databases.values():
        postgres.drop_database(database)
    asyncio.run(delete_topics_with_prefix(environment.kafka_bootstrap_servers, prefix))


def engine_env(environment: Environment, setup: dict[str, str], which: str) -> dict[str, str]:
    return {
        **environment.variables("kafka"),
        "LEADSTAGE_DATABASE_URL": setup[which],
        "LEADSTAGE_TOPIC_PREFIX": setup["prefix"],
        "LEADSTAGE_CONSUMER_GROUP": f"engine-{which}",
        "LEADSTAGE_LOG_LEVEL": "WARNING",
    }


Dump = dict[str, list[tuple[object, ...]]]


@pytest.fixture(scope="module")
def clean_state(environment: Environment, crash_setup: dict[str, str]) -> Dump:
    """The state after one uninterrupted engine run over the events, folding one batch
    at a time: the crashed and paired runs fold in the default two lanes at once, so
    they also check that lanes give the state of a single lane."""
    clean = start_service(
        "engine",
        {**engine_env(environment, crash_setup, "clean"), "LEADSTAGE_BATCH_LANES": "1"},
        "clean",
    )
    try:
        asyncio.run(wait_consumed(crash_setup["clean"], "engine-clean", within=300))
    finally:
        clean.stop()
    state = asyncio.run(dump(crash_setup["clean"]))
    assert len(state["touchpoints"]) == EVENTS
    assert len(state["lead_transitions"]) > LEADS
    assert len(state["account_stages"]) == 2 * LEADS // CONTACTS_PER_ACCOUNT  # two funnels
    assert len(state["account_contacts"]) == LEADS
    # Every account transition standing was published, and only those.
    assert state["account_changes_standing"] == sorted(
        (row[-1],) for row in state["account_transitions"]
    )
    return state


async def test_kill_9_at_random_points_gives_the_state_of_a_clean_run(
    environment: Environment, crash_setup: dict[str, str], clean_state: Dump
) -> None:
    rng = random.Random(11)
    env = engine_env(environment, crash_setup, "crashed")
    kills = 0
    while kills < 5:
        engine = start_service("engine", env, f"crashed-{kills}")
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        os.kill(engine.process.pid, signal.SIGKILL)
        engine.process.wait(timeout=30)
        kills += 1
    assert await consumed(crash_setup["crashed"], "engine-crashed") < EVENTS, (
        "the crashes came too late to interrupt anything"
    )
    survivor = start_service("engine", env, "crashed-final")
    try:
        await wait_consumed(crash_setup["crashed"], "engine-crashed", within=300)
    finally:
        survivor.stop()

    actual = await dump(crash_setup["crashed"])
    for name in DUMPED:
        assert actual[name] == clean_state[name], f"{name} differs after {kills} crashes"


async def test_two_engines_with_a_rebalance_give_the_same_state(
    environment: Environment, crash_setup: dict[str, str], clean_state: Dump
) -> None:
    env = engine_env(environment, crash_setup, "pair")
    first = start_service("engine", env, "pair-1")
    second: Service | None = None
    try:
        await asyncio.sleep(1.5)
        second = start_service("engine", env, "pair-2")  # partitions move: a rebalance
        await asyncio.sleep(2.0)
        first.stop()  # and move again when the first leaves
        await wait_consumed(crash_setup["pair"], "engine-pair", within=300)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    pair = await dump(crash_setup["pair"])
    for name in DUMPED:
        assert pair[name] == clean_state[name], f"{name} differs after the rebalances"
