"""The engine's one-statement writes (``leadstage.db.bulk``) against the real PostgreSQL."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from leadstage.db.bulk import copy_rows, upsert_rows
from leadstage.db.models import AccountContact, LeadStage, LeadTransition, table
from leadstage.db.session import SessionFactory, unit_of_work

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _lead_stage(funnel: str, lead: str, stage: str | None, *, minutes: int) -> dict[str, object]:
    at = T0 + timedelta(minutes=minutes)
    return {
        "funnel": funnel,
        "lead_key": lead,
        "funnel_version": 3,
        "stage": stage,
        "stage_entered_at": at if stage else None,
        "sales_ready": stage == "sql",
        # An integer beyond 64 bits, a nested mapping and a None: jsonb keeps them all.
        "state": {"stage": stage, "scores": {"fit": 12.5}, "big": -(2**63) - 1, "none": None},
        "first_touch_at": T0,
        "last_touch_at": at,
        "last_event_source": "web",
        "last_event_id": f"e-{minutes}",
    }


async def test_upsert_inserts_then_overwrites_every_given_column(sessions: SessionFactory) -> None:
    funnel, leads = f"bulk-{secrets.token_hex(3)}", ["a", "b"]
    async with unit_of_work(sessions) as session:
        await upsert_rows(
            session,
            table(LeadStage),
            [_lead_stage(funnel, lead, "engaged", minutes=1) for lead in leads],
            key=("funnel", "lead_key"),
        )
    async with unit_of_work(sessions) as session:
        first_update = await session.scalar(
            select(LeadStage.updated_at).where(
                LeadStage.funnel == funnel, LeadStage.lead_key == "a"
            )
        )
        await upsert_rows(
            session,
            table(LeadStage),
            [_lead_stage(funnel, "a", "sql", minutes=5), _lead_stage(funnel, "c", None, minutes=2)],
            key=("funnel", "lead_key"),
        )
    async with unit_of_work(sessions) as session:
        rows = {
            row.lead_key: row
            for row in await session.scalars(select(LeadStage).where(LeadStage.funnel == funnel))
        }
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["a"].stage == "sql"
    assert rows["a"].sales_ready is True
    assert rows["a"].stage_entered_at == T0 + timedelta(minutes=5)
    assert rows["a"].last_event_id == "e-5"
    assert rows["a"].state == {
        "stage": "sql",
        "scores": {"fit": 12.5},
        "big": -(2**63) - 1,
        "none": None,
    }
    assert first_update is not None
    assert rows["a"].updated_at > first_update  # now() of the later transaction
    assert rows["b"].stage == "engaged"  # not in the second statement: unchanged
    assert rows["c"].stage is None
    assert rows["c"].stage_entered_at is None


async def test_upsert_with_do_nothing_keeps_the_stored_row(sessions: SessionFactory) -> None:
    account = f"acct-{secrets.token_hex(3)}"
    async with unit_of_work(sessions) as session:
        for leads in (["x", "y"], ["y", "z", "z"]):  # a repeat in one statement is fine too
            await upsert_rows(
                session,
                table(AccountContact),
                [{"account_id": account, "lead_key": lead} for lead in leads],
                key=("account_id", "lead_key"),
                on_conflict="nothing",
            )
        stored = sorted(
            await session.scalars(
                select(AccountContact.lead_key).where(AccountContact.account_id == account)
            )
        )
    assert stored == ["x", "y", "z"]


async def test_upsert_refuses_a_key_the_table_does_not_have(sessions: SessionFactory) -> None:
    async with unit_of_work(sessions) as session:
        with pytest.raises(KeyError, match="no_such_column"):
            await upsert_rows(
                session,
                table(AccountContact),
                [{"account_id": "a", "lead_key": "b"}],
                key=("account_id", "no_such_column"),
            )
        with pytest.raises(ValueError, match="on_conflict"):
            await upsert_rows(
                session,
                table(AccountContact),
                [{"account_id": "a", "lead_key": "b"}],
                key=("account_id", "lead_key"),
                on_conflict="replace",
            )


async def test_copy_keeps_the_rows_order_for_their_serial_ids(sessions: SessionFactory) -> None:
    funnel = f"bulk-{secrets.token_hex(3)}"
    rows = [
        {
            "funnel": funnel,
            "lead_key": f"lead-{n}",
            "from_stage": None,
            "to_stage": "engaged",
            "kind": "entered",
            "rule": "r",
            "source": "web",
            "event_id": f"e-{n}",
            "event_type": "page_view",
            "occurred_at": T0 + timedelta(minutes=n),
        }
        for n in (3, 1, 2)
    ]
    async with unit_of_work(sessions) as session:
        await session.execute(text("SELECT 1"))  # COPY joins the transaction begun here
        await copy_rows(session, table(LeadTransition), rows)
        stored = list(
            await session.scalars(
                select(LeadTransition.lead_key)
                .where(LeadTransition.funnel == funnel)
                .order_by(LeadTransition.id)
            )
        )
    assert stored == ["lead-3", "lead-1", "lead-2"]


async def test_a_failed_copy_raises_as_a_statement_would(sessions: SessionFactory) -> None:
    """The driver's own error, wrapped as SQLAlchemy wraps a statement's: the engine's
    consumer retries a DBAPIError (a batch that lost a race with another transaction's
    insert) instead of dying on an exception it does not expect."""
    row = {
        "funnel": f"bulk-{secrets.token_hex(3)}",
        "lead_key": "lead",
        "from_stage": None,
        "to_stage": "engaged",
        "kind": "entered",
        "rule": "r",
        "source": "web",
        "event_id": "the-same-event",
        "event_type": "page_view",
        "occurred_at": T0,
    }
    async with unit_of_work(sessions) as session:
        await session.execute(text("SELECT 1"))
        await copy_rows(session, table(LeadTransition), [row])
        with pytest.raises(DBAPIError) as raised:
            # (funnel, source, event_id) is unique: one transition per event and funnel.
            await copy_rows(session, table(LeadTransition), [{**row, "lead_key": "other"}])
        await session.rollback()
    assert getattr(raised.value.orig, "sqlstate", None) == "23505"  # unique_violation
