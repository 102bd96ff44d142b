"""Touchpoints are partitioned by month of occurred_at (migration 0013)."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime

from sqlalchemy import text

from leadstage.db.partitions import ensure_touchpoint_partitions, partition_range
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch

B2B = load_presets()["b2b-six-stage"]


def record(lead: str, at: datetime, offset: int) -> Record:
    touchpoint = Touchpoint.accept(
        TouchpointIn(event_id=f"{lead}-{offset}", type="page_view", lead_id=lead, occurred_at=at),
        source="partitions",
        received_at=at,
    )
    return Record("touchpoints", 0, offset, lead.encode(), touchpoint.to_record())


async def stored_in(sessions: SessionFactory, lead: str) -> list[tuple[str, str]]:
    async with unit_of_work(sessions) as session:
        rows = await session.execute(
            text(
                "SELECT event_id, tableoid::regclass::text FROM touchpoints "
                "WHERE lead_key = :lead ORDER BY event_id"
            ),
            {"lead": lead},
        )
        return [(event_id, table) for event_id, table in rows]


def test_the_range_covers_two_years_back_and_a_quarter_ahead() -> None:
    assert partition_range(date(2026, 11, 23)) == (date(2024, 10, 1), date(2027, 2, 1))
    assert partition_range(date(2026, 1, 31)) == (date(2023, 12, 1), date(2026, 4, 1))


async def test_each_month_has_its_partition_and_a_redelivery_is_stored_once(
    sessions: SessionFactory,
) -> None:
    lead = f"lead-{secrets.token_hex(4)}"
    now = datetime.now(UTC).replace(microsecond=0)
    last_month = (
        datetime(now.year - 1, 12, 15, tzinfo=UTC)
        if now.month == 1
        else now.replace(month=now.month - 1, day=15)
    )
    batch = [record(lead, last_month, 0), record(lead, now, 1)]
    for attempt in range(2):  # the second time is a redelivery of the same records
        async with unit_of_work(sessions) as session:
            await apply_batch(
                session,
                batch,
                consumer_group=f"partitions-{lead}-{attempt}",
                funnels=[],  # touchpoints only: no lead state that other reports would count
                outbox_topic="tests.unpublished.v1",
            )
    assert await stored_in(sessions, lead) == [
        (f"{lead}-0", f"touchpoints_{last_month:%Y_%m}"),
        (f"{lead}-1", f"touchpoints_{now:%Y_%m}"),
    ]


async def test_a_month_outside_the_range_goes_to_the_default_partition(
    sessions: SessionFactory,
) -> None:
    lead = f"lead-{secrets.token_hex(4)}"
    long_ago = datetime(2011, 3, 9, 12, 0, tzinfo=UTC)
    async with unit_of_work(sessions) as session:
        await apply_batch(
            session,
            [record(lead, long_ago, 0)],
            consumer_group=f"partitions-{lead}",
            funnels=[],  # touchpoints only: no lead state that other reports would count
            outbox_topic="tests.unpublished.v1",
        )
    assert await stored_in(sessions, lead) == [(f"{lead}-0", "touchpoints_default")]
    # A partition for that month would have to hold the default's rows: it is not
    # created, and the rows stay readable where they are.
    async with unit_of_work(sessions) as session:
        skipped = await session.scalar(
            text("SELECT ensure_touchpoint_partitions(DATE '2011-03-01', DATE '2011-03-01')")
        )
    assert skipped == 0
    assert await stored_in(sessions, lead) == [(f"{lead}-0", "touchpoints_default")]


async def test_ensuring_is_idempotent_and_creates_only_missing_months(
    sessions: SessionFactory,
) -> None:
    async with unit_of_work(sessions) as session:
        created = await session.scalar(
            text("SELECT ensure_touchpoint_partitions(DATE '2009-01-01', DATE '2009-02-01')")
        )
        again = await session.scalar(
            text("SELECT ensure_touchpoint_partitions(DATE '2009-01-01', DATE '2009-02-01')")
        )
        names = await session.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'touchpoints'::regclass "
                "AND c.relname LIKE 'touchpoints_2009%' "
                "ORDER BY 1"
            )
        )
        assert list(names) == ["touchpoints_2009_01", "touchpoints_2009_02"]
    assert (created, again) == (2, 0)
    # The engine's own call around today finds everything there already.
    assert await ensure_touchpoint_partitions(sessions, datetime.now(UTC).date()) == 0
