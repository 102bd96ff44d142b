"""Funnel versions, replay and switch-over, and reloading definitions, on the real PostgreSQL.

Every test uses a funnel of its own name, so the registry rows, states and shadow
rows of one test never meet another's. A replay folds every lead with stored
touchpoints (this run's database is shared by the tests), so assertions look
only at the test's own leads.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.models import (
    Account,
    FunnelVersion,
    LeadAccount,
    LeadStage,
    OutboxRecord,
    ReplayChangedLead,
    ReplayLeadStage,
)
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import Funnel, parse_funnel
from leadstage.settings import EngineSettings
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch
from leadstage_engine.reload import LiveFunnels, apply_with_live_funnels, register_at_start
from leadstage_engine.replay import ReplayRunningError, replay_funnel
from leadstage_engine.versions import FunnelStatesMismatchError, FunnelVersionConflictError
from tests.conftest import Environment

OUTBOX_TOPIC = "tests.unpublished.lead-stage-changed.v1"
DAY0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

V1 = """\
name: {name}
version: 1
stages:
  - {{name: Seen, group: tofu}}
  - {{name: Keen, group: mofu}}
  - {{name: Won, group: bofu}}
exits: [Lost]
scores:
  heat:
    half_life_days: 7
rules:
  - name: seen
    priority: 10
    when: {{type: page_view}}
    then: {{move_to: Seen}}
  - name: keen
    priority: 20
    when: {{type: demo_requested}}
    then: {{move_to: Keen, score: {{heat: 10}}}}
  - name: won
    priority: 30
    when: {{type: deal_won}}
    then: {{move_to: Won}}
  - name: lost
    priority: 40
    when: {{type: deal_lost}}
    then: {{exit: Lost}}
"""

# Version 2: three page views within 7 days make a lead Keen, page views and email
# opens add heat, and 15 heat makes it sales-ready.
V2 = """\
name: {name}
version: 2
stages:
  - {{name: Seen, group: tofu}}
  - {{name: Keen, group: mofu}}
  - {{name: Won, group: bofu}}
exits: [Lost]
scores:
  heat:
    half_life_days: 7
    thresholds:
      - {{at: 15, effect: {{sales_ready: true}}}}
rules:
  - name: keen-by-visits
    priority: 5
    when: {{type: page_view, count: {{at_least: 3, within_days: 7}}}}
    then: {{move_to: Keen}}
  - name: seen
    priority: 10
    when: {{type: page_view}}
    then: {{move_to: Seen, score: {{heat: 3}}}}
  - name: opened
    priority: 15
    when: {{type: email_opened}}
    then: {{score: {{heat: 1}}}}
  - name: keen
    priority: 20
    when: {{type: demo_requested}}
    then: {{move_to: Keen, score: {{heat: 10}}}}
  - name: won
    priority: 30
    when: {{type: deal_won}}
    then: {{move_to: Won}}
  - name: lost
    priority: 40
    when: {{type: deal_lost}}
    then: {{exit: Lost}}
"""

BROKEN = """\
name: {name}
version: 3
stages:
  - {{name: Seen, group: tofu}}
  - {{name: Keen, group: mofu}}
  - {{name: Won, group: bofu}}
rules:
  - name: seen
    priority: 10
    when: {{type: page_view}}
    then: {{move_to: Nowhere}}
"""

KINDS = ["page_view", "page_view", "email_opened", "demo_requested", "deal_won", "deal_lost"]

Event = tuple[str, str, datetime]  # (lead suffix, type, occurred_at)


def unique_funnel() -> str:
    return f"vt-{secrets.token_hex(4)}"


def write_funnel(directory: Path, template: str, name: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(template.format(name=name), encoding="utf-8")
    return path


def settings_for(environment: Environment, name: str, directory: Path) -> EngineSettings:
    return EngineSettings(
        database_url=environment.database_url,
        topic_prefix=environment.topic_prefix,
        funnels=[name],
        funnels_dir=directory,
    )


def journeys(leads: int, seed: int) -> list[Event]:
    """Random journeys over three weeks; about one event in ten arrives late."""
    rng = random.Random(seed)
    events: list[Event] = []
    for lead in range(leads):
        at = DAY0 + timedelta(hours=rng.randrange(48))
        for _ in range(rng.randrange(1, 9)):
            at += timedelta(hours=rng.randrange(1, 60))
            events.append((f"L{lead:03d}", rng.choice(KINDS), at))
    arrival = list(range(len(events)))
    for i in range(len(events)):
        if rng.random() < 0.1:  # arrives after up to 30 later events
            arrival[i] = i + rng.randrange(1, 30)
    return [event for _, event in sorted(zip(arrival, events, strict=True), key=lambda p: p[0])]


def records(run: str, events: Sequence[Event], first_offset: int = 0) -> list[Record]:
    """The events as engine records; lead keys, sources and event ids carry ``run``."""
    result = []
    for n, (lead, kind, at) in enumerate(events, start=first_offset):
        touchpoint = Touchpoint.accept(
            TouchpointIn(event_id=f"{run}-{n}", type=kind, lead_id=f"{run}-{lead}", occurred_at=at),
            source=f"src-{run}",
            received_at=at,
        )
        result.append(Record(f"topic-{run}", 0, n, None, touchpoint.to_record()))
    return result


def in_batches(items: Sequence[Record], size: int) -> list[Sequence[Record]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def apply_live(sessions: SessionFactory, live: LiveFunnels, batch: Sequence[Record]) -> None:
    """One engine batch, as the consumer runs it."""
    async with unit_of_work(sessions) as session:
        await apply_with_live_funnels(
            session, batch, live, consumer_group="versions", outbox_topic=OUTBOX_TOPIC
        )


async def apply_directly(sessions: SessionFactory, funnel: Funnel, batch: Sequence[Record]) -> None:
    async with unit_of_work(sessions) as session:
        await apply_batch(
            session, batch, consumer_group="clean", funnels=[funnel], outbox_topic=OUTBOX_TOPIC
        )


async def dump(sessions: SessionFactory, funnel: str, run: str) -> dict[str, list[Any]]:
    """A canonical dump of the funnel's states and histories for ``run``'s leads, with
    ``run`` replaced, so two runs of the same journeys compare equal."""
    queries = {
        "lead_stages": "SELECT lead_key, funnel_version, stage, stage_entered_at, sales_ready, "
        "state, first_touch_at, last_touch_at, last_event_source, last_event_id "
        "FROM lead_stages WHERE funnel = :funnel AND lead_key LIKE :keys ORDER BY lead_key",
        "lead_transitions": "SELECT lead_key, from_stage, to_stage, kind, rule, source, "
        "event_id, event_type, occurred_at FROM lead_transitions "
        "WHERE funnel = :funnel AND lead_key LIKE :keys ORDER BY lead_key, id",
        "lead_score_changes": "SELECT lead_key, score, delta, value, rule, source, event_id, "
        "event_type, occurred_at FROM lead_score_changes "
        "WHERE funnel = :funnel AND lead_key LIKE :keys ORDER BY lead_key, id",
    }
    return await canonical_rows(sessions, queries, funnel, run)


async def canonical_rows(
    sessions: SessionFactory, queries: dict[str, str], funnel: str, run: str
) -> dict[str, list[Any]]:
    """Each query's rows for ``funnel`` and keys starting with ``run`` (``:funnel``,
    ``:keys``), with ``run`` replaced, so two runs of the same journeys compare equal."""
    result: dict[str, list[Any]] = {}
    async with sessions() as session:
        for name, query in queries.items():
            rows = await session.execute(text(query), {"funnel": funnel, "keys": f"{run}-%"})
            result[name] = [
                [
                    json.dumps(value, sort_keys=True).replace(run, "RUN")
                    if isinstance(value, dict)
                    else value.replace(run, "RUN")
                    if isinstance(value, str)
                    else value
                    for value in row
                ]
                for row in rows
            ]
    return result


async def registry(sessions: SessionFactory, name: str) -> dict[int, tuple[str, bool]]:
    """Each version's status, and whether a replay of it is marked as running."""
    async with sessions() as session:
        rows = await session.scalars(select(FunnelVersion).where(FunnelVersion.funnel == name))
        return {row.version: (row.status, row.replay_started_at is not None) for row in rows}


async def stage_of(sessions: SessionFactory, name: str, lead: str) -> tuple[int | None, str | None]:
    async with sessions() as session:
        row = await session.get(LeadStage, (name, lead))
        assert row is not None, lead
        return row.funnel_version, row.stage


async def test_a_replay_gives_the_states_of_a_clean_run_with_the_new_version(
    environment: Environment, database: AsyncEngine, sessions: SessionFactory, tmp_path: Path
) -> None:
    name, run, clean = unique_funnel(), secrets.token_hex(3), secrets.token_hex(3)
    write_funnel(tmp_path, V1, name)
    settings = settings_for(environment, name, tmp_path)
    await register_at_start(settings)
    live = LiveFunnels(settings, sessions)
    # Hand-checked lead: three page views in three days; version 1 says Seen,
    # version 2 says Keen (third view within 7 days) with 3 heat per view, decayed.
    ada = [("ada", "page_view", DAY0 + timedelta(days=d)) for d in range(3)]
    events = [*journeys(60, seed=4), *ada]
    for batch in in_batches(records(run, events), 40):
        await apply_live(sessions, live, batch)
    before = await dump(sessions, name, run)
    assert {row[1] for row in before["lead_stages"]} == {1}
    assert await stage_of(sessions, name, f"{run}-ada") == (1, "Seen")

    write_funnel(tmp_path, V2, name)
    assert await live.reload()
    assert await registry(sessions, name) == {1: ("active", False), 2: ("pending", False)}

    report = await replay_funnel(database, settings, name, batch_leads=7)

    assert (report.version, report.previous_version, report.caught_up) == (2, 1, 0)
    assert report.leads >= 61  # every lead with touchpoints, this test's and others'
    assert await registry(sessions, name) == {1: ("retired", False), 2: ("active", False)}
    # The same journeys, folded from scratch with version 2 by the engine's batch code.
    v2_clean = parse_funnel(V2.format(name=f"{name}-clean"))
    for batch in in_batches(records(clean, events), 40):
        await apply_directly(sessions, v2_clean, batch)
    after = await dump(sessions, name, run)
    assert after == await dump(sessions, f"{name}-clean", clean)
    assert after != before
    assert len(after["lead_stages"]) == 61
    assert await stage_of(sessions, name, f"{run}-ada") == (2, "Keen")
    async with sessions() as session:
        ada_state = await session.get(LeadStage, (name, f"{run}-ada"))
        assert ada_state is not None
        # 3 + 3 * 0.5 ** (1/7) + 3 * 0.5 ** (2/7), rebased at the third view.
        assert ada_state.state["scores"]["heat"] == pytest.approx(
            3 + 3 * 0.5 ** (1 / 7) + 3 * 0.5 ** (2 / 7), abs=1e-5
        )
        shadow = await session.scalar(
            select(func.count()).select_from(ReplayLeadStage).where(ReplayLeadStage.funnel == name)
        )
        assert shadow == 0
        published = [
            json.loads(payload)
            for payload in await session.scalars(
                select(OutboxRecord.payload).where(OutboxRecord.key == name.encode())
            )
        ]
        with_version_2 = [
            fact
            for (fact,) in await session.execute(
                text(
                    "SELECT convert_from(payload, 'UTF8')::jsonb FROM outbox "
                    "WHERE convert_from(payload, 'UTF8')::jsonb @> :funnel"
                ),
                {"funnel": json.dumps({"funnel": name, "funnel_version": 2})},
            )
        ]
    # History is not published again: one fact says the version changed.
    assert [fact["event"] for fact in published] == ["FunnelVersionActivated"]
    assert published[0]["funnel_version"] == 2
    assert published[0]["previous_version"] == 1
    assert published[0]["leads"] == report.active_leads
    assert with_version_2 == published


async def test_live_batches_during_a_replay_are_folded_in_before_the_switch(
    environment: Environment, database: AsyncEngine, sessions: SessionFactory, tmp_path: Path
) -> None:
    name, run, clean = unique_funnel(), secrets.token_hex(3), secrets.token_hex(3)
    write_funnel(tmp_path, V1, name)
    settings = settings_for(environment, name, tmp_path)
    await register_at_start(settings)
    live = LiveFunnels(settings, sessions)
    history = journeys(30, seed=11)
    for batch in in_batches(records(run, history), 50):
        await apply_live(sessions, live, batch)
    write_funnel(tmp_path, V2, name)
    assert await live.reload()

    # Arrives while the replay runs: new events for the first lead (already replayed
    # by then) and the last one (not yet), a late event, and a new lead.
    during: list[Event] = [
        ("L000", "page_view", DAY0 + timedelta(days=30)),
        ("L000", "page_view", DAY0 + timedelta(days=31)),
        ("L000", "page_view", DAY0 + timedelta(days=32)),
        ("L029", "demo_requested", DAY0 + timedelta(days=30)),
        ("L015", "deal_lost", DAY0 - timedelta(days=1)),
        ("L900", "page_view", DAY0 + timedelta(days=33)),
    ]
    live_during = records(run, during, first_offset=len(history))
    seen_during: list[tuple[int | None, str | None]] = []

    async def replayed(lead: str) -> bool:
        async with sessions() as session:
            row = await session.get(ReplayLeadStage, (name, 2, f"{run}-{lead}"))
            return row is not None

    async def live_batch_once() -> None:
        if seen_during or not await replayed("L000") or await replayed("L029"):
            return
        await apply_live(sessions, live, live_during)
        # Still folded with the active version 1 while version 2 is replayed.
        seen_during.append(await stage_of(sessions, name, f"{run}-L900"))
        async with sessions() as session:
            row = await session.get(LeadStage, (name, f"{run}-L900"))
            assert row is not None
            seen_during.append((row.funnel_version, str(row.state["scores"])))

    report = await replay_funnel(
        database, settings, name, batch_leads=5, after_batch=live_batch_once
    )

    assert seen_during == [(1, "Seen"), (1, "{}")]
    assert report.caught_up >= 4  # L000, L015, L029, L900 at least
    v2_clean = parse_funnel(V2.format(name=f"{name}-clean"))
    for batch in in_batches(records(clean, [*history, *during]), 50):
        await apply_directly(sessions, v2_clean, batch)
    assert await dump(sessions, name, run) == await dump(sessions, f"{name}-clean", clean)
    async with sessions() as session:
        row = await session.get(LeadStage, (name, f"{run}-L900"))
        assert row is not None
        assert (row.funnel_version, row.stage, row.state["scores"]) == (2, "Seen", {"heat": 3.0})
    async with sessions() as session:
        marks = await session.scalar(
            select(func.count())
            .select_from(ReplayChangedLead)
            .where(ReplayChangedLead.funnel == name)
        )
    assert marks == 0

    # The engine's next batch folds with version 2: a single page view of a new lead
    # gives 3 heat, which version 1 did not have.
    after = records(run, [("L901", "page_view", DAY0)], first_offset=10_000)
    await apply_live(sessions, live, after)
    async with sessions() as session:
        row = await session.get(LeadStage, (name, f"{run}-L901"))
        assert row is not None
        assert (row.funnel_version, row.stage, row.state["scores"]) == (2, "Seen", {"heat": 3.0})


async def test_a_changed_file_with_the_same_version_is_refused(
    environment: Environment, sessions: SessionFactory, tmp_path: Path
) -> None:
    name = unique_funnel()
    write_funnel(tmp_path, V1, name)
    settings = settings_for(environment, name, tmp_path)
    await register_at_start(settings)
    live = LiveFunnels(settings, sessions)

    path = write_funnel(tmp_path, V1.replace("heat: 10", "heat: 12"), name)
    with pytest.raises(FunnelVersionConflictError) as refused:
        await register_at_start(settings)
    error = refused.value
    assert (error.file, error.line, error.field) == (str(path), 2, "version")
    assert "bump the version" in str(error)
    assert str(error).startswith(f"{path}:2: version: funnel '{name}' version 1 was registered")
    # Reloading the same file is refused too, and the registry is unchanged.
    assert not await live.reload()
    assert await registry(sessions, name) == {1: ("active", False)}
    # A description is not behaviour: the same version with a new description is fine.
    write_funnel(tmp_path, V1.replace("version: 1\n", "version: 1\ndescription: hi\n"), name)
    await register_at_start(settings)


async def test_a_bad_file_on_reload_keeps_the_running_version(
    environment: Environment,
    sessions: SessionFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, run = unique_funnel(), secrets.token_hex(3)
    write_funnel(tmp_path, V1, name)
    settings = settings_for(environment, name, tmp_path)
    await register_at_start(settings)
    live = LiveFunnels(settings, sessions)
    await apply_live(sessions, live, records(run, [("a", "page_view", DAY0)]))

    path = write_funnel(tmp_path, BROKEN, name)
    with caplog.at_level(logging.ERROR, logger="leadstage_engine.reload"):
        assert not await live.reload()
    assert f"{path}:11: rules.0.then.move_to: unknown stage 'Nowhere'" in caplog.text
    assert "the running versions keep working" in caplog.text

    await apply_live(sessions, live, records(run, [("a", "demo_requested", DAY0)], 1))
    assert await stage_of(sessions, name, f"{run}-a") == (1, "Keen")
    assert await registry(sessions, name) == {1: ("active", False)}


async def test_states_from_an_unregistered_version_are_not_mixed_with_a_new_one(
    environment: Environment, sessions: SessionFactory, tmp_path: Path
) -> None:
    """States written before the registry existed, by version 1, and a file now at 2."""
    name, run = unique_funnel(), secrets.token_hex(3)
    await apply_directly(
        sessions, parse_funnel(V1.format(name=name)), records(run, [("a", "page_view", DAY0)])
    )
    path = write_funnel(tmp_path, V2, name)
    with pytest.raises(FunnelStatesMismatchError) as refused:
        await register_at_start(settings_for(environment, name, tmp_path))
    assert str(refused.value).startswith(f"{path}:2: version: stored states of funnel '{name}'")
    assert f"leadstage replay --funnel {name}" in str(refused.value)


async def test_one_replay_per_funnel_at_a_time(
    environment: Environment, database: AsyncEngine, tmp_path: Path
) -> None:
    name = unique_funnel()
    write_funnel(tmp_path, V1, name)
    settings = settings_for(environment, name, tmp_path)
    await register_at_start(settings)
    async with database.connect() as other:
        await other.execute(
            text("SELECT pg_advisory_lock(hashtextextended(:lock, 0))"),
            {"lock": f"leadstage-replay:{name}"},
        )
        with pytest.raises(ReplayRunningError, match="already running"):
            await replay_funnel(database, settings, name)
        await other.execute(
            text("SELECT pg_advisory_unlock(hashtextextended(:lock, 0))"),
            {"lock": f"leadstage-replay:{name}"},
        )
        await other.commit()


async def attach_accounts(sessions: SessionFactory, run: str, accounts: list[list[int]]) -> None:
    """``run``'s leads (by number) in accounts acct00, acct01..., as ingest links them."""
    async with unit_of_work(sessions) as session:
        for number, contacts in enumerate(accounts):
            account = f"{run}-acct{number:02d}"
            session.add(Account(id=account, name=account))
            await session.flush()
            for lead in contacts:
                session.add(
                    LeadAccount(
                        lead_id=f"{run}-L{lead:03d}", account_id=account, attached_by="explicit"
                    )
                )


async def dump_accounts(sessions: SessionFactory, funnel: str, run: str) -> dict[str, list[Any]]:
    """``run``'s account states and histories in ``funnel``, with ``run`` replaced. The
    change ids are left out: they hash the funnel's name, which differs between runs."""
    queries = {
        "account_stages": "SELECT account_id, funnel_version, stage, stage_entered_at, contacts, "
        "contacts_without_stage, contacts_by_stage, transitions, last_contact_at, "
        "last_contact_lead, last_contact_source, last_contact_event_id FROM account_stages "
        "WHERE funnel = :funnel AND account_id LIKE :keys ORDER BY account_id",
        "account_transitions": "SELECT account_id, seq, from_stage, to_stage, kind, lead_key, "
        "source, event_id, event_type, occurred_at FROM account_transitions "
        "WHERE funnel = :funnel AND account_id LIKE :keys ORDER BY account_id, seq",
    }
    return await canonical_rows(sessions, queries, funnel, run)


async def test_the_switch_over_refolds_the_accounts_with_the_new_version(
    environment: Environment, database: AsyncEngine, sessions: SessionFactory, tmp_path: Path
) -> None:
    name, run, clean = unique_funnel(), secrets.token_hex(3), secrets.token_hex(3)
    write_funnel(tmp_path, V1, name)
    settings = settings_for(environment, name, tmp_path)
    await register_at_start(settings)
    live = LiveFunnels(settings, sessions)
    # Leads 40 and 41 only look, three times in three days: Seen in version 1, Keen in
    # version 2, and so is their account (acct08), whichever contact leads it.
    browsing = [
        (f"L{lead:03d}", "page_view", DAY0 + timedelta(days=day, hours=lead - 40))
        for lead in (40, 41)
        for day in range(3)
    ]
    events = [*journeys(30, seed=11), *browsing]
    groups = [[*range(first, min(first + 4, 30))] for first in range(0, 30, 4)]
    for prefix in (run, clean):
        await attach_accounts(sessions, prefix, [*groups, [40, 41]])
    for batch in in_batches(records(run, events), 40):
        await apply_live(sessions, live, batch)
    before = await dump_accounts(sessions, name, run)
    assert len(before["account_stages"]) == 9  # 30 contacts in accounts of 4, and acct08
    assert {row[1] for row in before["account_stages"]} == {1}
    assert before["account_stages"][8][:3] == ["RUN-acct08", 1, "Seen"]
    async with sessions() as session:
        outbox_before = await session.scalar(select(func.count()).select_from(OutboxRecord))

    write_funnel(tmp_path, V2, name)
    assert await live.reload()
    await replay_funnel(database, settings, name, batch_leads=7)
    async with sessions() as session:
        added = await session.scalars(
            select(OutboxRecord.payload).order_by(OutboxRecord.id).offset(outbox_before)
        )
        facts = [json.loads(payload)["event"] for payload in added]
    # As for the leads, one fact announces the new version; the history is not re-sent.
    assert facts == ["FunnelVersionActivated"]

    v2_clean = parse_funnel(V2.format(name=f"{name}-clean"))
    for batch in in_batches(records(clean, events), 40):
        await apply_directly(sessions, v2_clean, batch)
    after = await dump_accounts(sessions, name, run)
    assert after == await dump_accounts(sessions, f"{name}-clean", clean)
    assert {row[1] for row in after["account_stages"]} == {2}
    assert after["account_stages"][8][:3] == ["RUN-acct08", 2, "Keen"]
    assert [row[2:5] for row in after["account_transitions"] if row[0] == "RUN-acct08"] == [
        [None, "Seen", "entered"],
        ["Seen", "Keen", "advanced"],
    ]
