"""``leadstage replay`` as a person runs it: exit codes, messages, progress and summary."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.models import LeadStage
from leadstage.db.session import SessionFactory
from leadstage.progress import ProgressBar
from leadstage_engine.reload import LiveFunnels, register_at_start
from tests.conftest import Environment
from tests.integration.test_funnel_versions import (
    DAY0,
    V1,
    V2,
    apply_live,
    records,
    registry,
    settings_for,
    unique_funnel,
    write_funnel,
)


def replay(
    environment: Environment, directory: Path, active: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadstage", "replay", *args],
        env={
            **os.environ,
            **environment.variables("postgres"),
            "LEADSTAGE_FUNNELS_DIR": str(directory),
            "LEADSTAGE_FUNNELS": f'["{active}"]',
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_unknown_funnels_and_versions_exit_2_with_a_message(
    environment: Environment, tmp_path: Path
) -> None:
    name = unique_funnel()
    write_funnel(tmp_path, V1, name)

    unknown = replay(environment, tmp_path, name, "--funnel", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("leadstage replay: unknown funnel 'nope'; known: aida, ")
    assert name in unknown.stderr

    inactive = replay(environment, tmp_path, name, "--funnel", "aida")
    assert inactive.returncode == 2
    assert "funnel 'aida' is not active (LEADSTAGE_FUNNELS=[" in inactive.stderr

    no_version = replay(environment, tmp_path, name, "--funnel", name, "--version", "9")
    assert no_version.returncode == 2
    assert no_version.stderr == f"leadstage replay: funnel '{name}' has no version 9; known: 1\n"

    bad_size = replay(environment, tmp_path, name, "--funnel", name, "--batch-leads", "0")
    assert bad_size.returncode == 2
    assert "--batch-leads: must be at least 1, got 0" in bad_size.stderr
    for result in (unknown, inactive, no_version, bad_size):
        assert "Traceback" not in result.stderr


async def test_a_changed_file_without_a_version_bump_exits_2(
    environment: Environment, tmp_path: Path
) -> None:
    name = unique_funnel()
    write_funnel(tmp_path, V1, name)
    await register_at_start(settings_for(environment, name, tmp_path))
    path = write_funnel(tmp_path, V1.replace("heat: 10", "heat: 11"), name)

    result = replay(environment, tmp_path, name, "--funnel", name)
    assert result.returncode == 2
    assert f"{path}:2: version: funnel '{name}' version 1 was registered" in result.stderr
    assert "bump the version" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_replay_prints_progress_and_a_summary_and_switches_over(
    environment: Environment, sessions: SessionFactory, tmp_path: Path
) -> None:
    name, run = unique_funnel(), secrets.token_hex(3)
    write_funnel(tmp_path, V1, name)
    settings = settings_for(environment, name, tmp_path)
    await register_at_start(settings)
    live = LiveFunnels(settings, sessions)
    visits = [("a", "page_view", DAY0 + timedelta(days=d)) for d in range(3)]
    await apply_live(sessions, live, records(run, visits))
    write_funnel(tmp_path, V2, name)

    result = replay(environment, tmp_path, name, "--funnel", name, "--batch-leads", "50")

    assert result.returncode == 0, result.stderr
    assert f"funnel {name} version 2 is active (was 1): " in result.stdout
    assert "replaying [" in result.stderr  # not a terminal: one line per update
    assert "switching [##############################] 100% 1/1" in result.stderr
    assert await registry(sessions, name) == {1: ("retired", False), 2: ("active", False)}
    async with sessions() as session:
        row = await session.get(LeadStage, (name, f"{run}-a"))
        assert row is not None
        assert (row.funnel_version, row.stage) == (2, "Keen")  # Seen with version 1


async def test_a_second_replay_of_the_same_funnel_exits_1(
    environment: Environment, database: AsyncEngine, tmp_path: Path
) -> None:
    name = unique_funnel()
    write_funnel(tmp_path, V1, name)
    await register_at_start(settings_for(environment, name, tmp_path))
    async with database.connect() as running:
        await running.execute(
            text("SELECT pg_advisory_lock(hashtextextended(:lock, 0))"),
            {"lock": f"leadstage-replay:{name}"},
        )
        result = replay(environment, tmp_path, name, "--funnel", name)
        await running.execute(
            text("SELECT pg_advisory_unlock(hashtextextended(:lock, 0))"),
            {"lock": f"leadstage-replay:{name}"},
        )
        await running.commit()
    assert result.returncode == 1
    assert result.stderr == f"leadstage replay: a replay of funnel '{name}' is already running\n"


def test_the_progress_bar_shows_fraction_rate_and_time_left() -> None:
    output = io.StringIO()
    bar = ProgressBar(output, width=10, interval=3600)
    assert bar.render("replaying", 300, 1000, 5.0) == (
        "replaying [###-------]  30% 300/1,000  60/s  ETA 12s"
    )
    assert bar.render("replaying", 1000, 1000, 10.0) == (
        "replaying [##########] 100% 1,000/1,000  100/s"
    )
    assert bar.render("catching up", 0, 0, 1.0) == "catching up 0"
    # Not a terminal: the first update of a phase and the last are written, the
    # ones in between only every `interval` seconds.
    for done in (0, 10, 20, 30):
        bar.update("replaying", done, 30)
    bar.update("switching", 1, 1)
    lines = output.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["replaying", "replaying", "switching"]
    assert lines[1].startswith("replaying [##########] 100% 30/30")
