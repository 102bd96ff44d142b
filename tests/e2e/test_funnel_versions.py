"""A running engine with a funnel file that changes: a broken file on SIGHUP changes
nothing, a new version waits, and ``leadstage replay`` switches the running engine over.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.models import LeadStage
from leadstage.db.session import SessionFactory, create_engine, create_session_factory
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.local import services
from leadstage.settings import EngineSettings
from leadstage.transport import create_publisher
from leadstage.transport.base import OutgoingRecord
from tests.conftest import Environment, leadstage_cli
from tests.e2e.conftest import Service, start_service
from tests.integration.test_funnel_versions import BROKEN, DAY0, V1, V2, write_funnel


@pytest.fixture
def own_database(environment: Environment) -> Iterator[str]:
    """A database of its own: the replay then folds only this test's leads."""
    name = f"versions_{secrets.token_hex(3)}"
    postgres = services.local_postgres()
    postgres.create_database(name)
    url = postgres.url(name)
    leadstage_cli("migrate", env={"LEADSTAGE_DATABASE_URL": url})
    yield url
    postgres.drop_database(name)


async def publish(settings: EngineSettings, events: list[tuple[str, str, int, str]]) -> None:
    """(lead, type, day, event id) as touchpoints on the settings' topic."""
    database = create_engine(settings, application_name="versions-e2e")
    publisher = create_publisher(settings, create_session_factory(database))
    await publisher.start()
    try:
        await publisher.publish(
            settings.touchpoints_topic,
            [
                OutgoingRecord(
                    key=lead.encode(),
                    value=Touchpoint.accept(
                        TouchpointIn(
                            event_id=event_id,
                            type=kind,
                            lead_id=lead,
                            occurred_at=DAY0 + timedelta(days=day),
                        ),
                        source="versions-e2e",
                        received_at=DAY0,
                    ).to_record(),
                )
                for lead, kind, day, event_id in events
            ],
        )
    finally:
        await publisher.stop()
        await database.dispose()


async def state(sessions: SessionFactory, funnel: str, lead: str) -> tuple[object, ...] | None:
    async with sessions() as session:
        row = await session.get(LeadStage, (funnel, lead), populate_existing=True)
        if row is None:
            return None
        return (row.funnel_version, row.stage, row.state["scores"], row.last_event_id)


async def wait_for(what: str, check: Callable[[], object], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def log_of(engine: Service) -> str:
    return engine.log.read_text(encoding="utf-8", errors="replace")


async def test_sighup_reloads_and_a_replay_switches_the_running_engine(
    environment: Environment, own_database: str, tmp_path: Path
) -> None:
    funnel, prefix = f"e2e-{secrets.token_hex(3)}", f"versions-{secrets.token_hex(3)}."
    write_funnel(tmp_path, V1, funnel)
    env = {
        **environment.variables("postgres"),
        "LEADSTAGE_DATABASE_URL": own_database,
        "LEADSTAGE_TOPIC_PREFIX": prefix,
        "LEADSTAGE_FUNNELS": f'["{funnel}"]',
        "LEADSTAGE_FUNNELS_DIR": str(tmp_path),
        "LEADSTAGE_CONSUMER_GROUP": "versions-e2e",
        "LEADSTAGE_WEBHOOKS_ENABLED": "false",
    }
    leadstage_cli("topics", env=env)
    settings = EngineSettings(database_url=own_database, topic_prefix=prefix, transport="postgres")
    database: AsyncEngine = create_engine(settings, application_name="versions-e2e-check")
    sessions = create_session_factory(database)
    engine = start_service("engine", env, f"versions-{funnel}")
    try:
        await publish(settings, [("ada", "page_view", 0, "e1"), ("bob", "page_view", 0, "e2")])
        await wait_for("version 1 states", lambda: state(sessions, funnel, "bob"))
        assert await state(sessions, funnel, "ada") == (1, "Seen", {}, "e1")

        # A broken file: logged with file, line and field; the engine keeps version 1.
        broken = write_funnel(tmp_path, BROKEN, funnel)
        engine.process.send_signal(signal.SIGHUP)
        await wait_for("the refused reload", lambda: "not reloaded" in log_of(engine))
        assert f"{broken}:11: rules.0.then.move_to: unknown stage 'Nowhere'" in log_of(engine)
        await publish(settings, [("ada", "demo_requested", 1, "e3")])
        await wait_for("e3", lambda: _last_event(sessions, funnel, "ada", "e3"))
        assert await state(sessions, funnel, "ada") == (1, "Keen", {"heat": 10.0}, "e3")

        # A valid version 2 is registered and waits; the engine still folds with 1.
        write_funnel(tmp_path, V2, funnel)
        engine.process.send_signal(signal.SIGHUP)
        await wait_for("the reload", lambda: "version 2 is pending" in log_of(engine))
        await publish(settings, [("bob", "page_view", 1, "e4"), ("bob", "page_view", 2, "e5")])
        await wait_for("e5", lambda: _last_event(sessions, funnel, "bob", "e5"))
        assert await state(sessions, funnel, "bob") == (1, "Seen", {}, "e5")

        replay = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "leadstage",
            "replay",
            "--funnel",
            funnel,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(replay.communicate(), timeout=120)
        assert replay.returncode == 0, stderr.decode()
        assert f"funnel {funnel} version 2 is active (was 1): 2 leads replayed" in stdout.decode()
        # Three page views in three days make bob Keen under version 2.
        bob = await state(sessions, funnel, "bob")
        assert bob is not None
        assert bob[:2] == (2, "Keen")

        # The running engine picks version 2 up at its next batch.
        await publish(settings, [("cy", "page_view", 5, "e6")])
        await wait_for("e6", lambda: state(sessions, funnel, "cy"))
        assert await state(sessions, funnel, "cy") == (2, "Seen", {"heat": 3.0}, "e6")
        assert f"folding funnel {funnel} with version 2" in log_of(engine)
        assert engine.process.poll() is None  # SIGHUP would have ended it, unhandled
    finally:
        engine.stop()
        await database.dispose()


async def _last_event(sessions: SessionFactory, funnel: str, lead: str, event_id: str) -> bool:
    current = await state(sessions, funnel, lead)
    return current is not None and current[3] == event_id
