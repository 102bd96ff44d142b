"""Every migration can be undone: head -> base -> head gives the same schema again."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from leadstage.local import services

REPOSITORY = Path(__file__).resolve().parents[2]

# The schema as PostgreSQL describes it: columns, constraints, indexes, functions.
SCHEMA = {
    "columns": (
        "SELECT table_name, column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public'"
        " ORDER BY 1, 2"
    ),
    "constraints": (
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
    ),
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "functions": (
        "SELECT proname, pg_get_functiondef(oid) FROM pg_proc"
        " WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
    ),
}


@pytest.fixture
def scratch_database() -> Iterator[str]:
    postgres = services.local_postgres()
    name = f"leadstage_migrations_{secrets.token_hex(4)}"
    postgres.create_database(name)
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)


def alembic(url: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPOSITORY,
        env={**os.environ, "LEADSTAGE_DATABASE_URL": url},
        check=True,
        capture_output=True,
        timeout=300,
    )


async def schema(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return {
                part: [tuple(row) for row in await connection.execute(text(query))]
                for part, query in SCHEMA.items()
            }
    finally:
        await engine.dispose()


async def test_downgrading_every_migration_and_upgrading_again_gives_the_same_schema(
    scratch_database: str,
) -> None:
    alembic(scratch_database, "upgrade", "head")
    upgraded = await schema(scratch_database)
    assert upgraded["functions"], "the head schema has its functions"

    alembic(scratch_database, "downgrade", "base")
    emptied = await schema(scratch_database)
    assert {table for table, *_ in emptied["columns"]} <= {"alembic_version"}
    assert emptied["functions"] == []

    alembic(scratch_database, "upgrade", "head")
    assert await schema(scratch_database) == upgraded
