"""Read models for leads: module-level functions that take a connection (single-statement
reads, no transaction; see `dependencies.single_statement_connection`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from leadstage.db.models import Identity, LeadStage, LeadTransition
from leadstage_api.schemas import LeadPage, LeadSummary, LeadView, StageTime, TransitionView


async def list_leads(
    connection: AsyncConnection,
    *,
    funnel: str,
    stage: str | None,
    sales_ready: bool | None,
    after: str | None,
    limit: int,
) -> LeadPage:
    """Leads of a funnel in lead id order (stable), a page at a time (keyset)."""
    query = select(
        LeadStage.lead_key,
        LeadStage.funnel,
        LeadStage.stage,
        LeadStage.stage_entered_at,
        LeadStage.sales_ready,
        LeadStage.last_touch_at,
    ).where(LeadStage.funnel == funnel)
    if stage is not None:
        query = query.where(LeadStage.stage == stage)
    if sales_ready is not None:
        query = query.where(LeadStage.sales_ready == sales_ready)
    if after is not None:
        query = query.where(LeadStage.lead_key > after)
    rows = (await connection.execute(query.order_by(LeadStage.lead_key).limit(limit + 1))).all()
    leads = [
        LeadSummary(
            lead_id=row.lead_key,
            funnel=row.funnel,
            stage=row.stage,
            stage_entered_at=row.stage_entered_at,
            sales_ready=row.sales_ready,
            last_touch_at=row.last_touch_at,
        )
        for row in rows[:limit]
    ]
    return LeadPage(leads=leads, next_cursor=leads[-1].lead_id if len(rows) > limit else None)


def stage_times(transitions: Sequence[TransitionView], now: datetime) -> list[StageTime]:
    """Per stage: first entered, last exited, cumulative time (in visit order)."""
    times: dict[str, StageTime] = {}
    for current, following in itertools.zip_longest(transitions, transitions[1:]):
        left = following.occurred_at if following is not None else None
        spent = ((left or max(now, current.occurred_at)) - current.occurred_at).total_seconds()
        known = times.get(current.to_stage)
        if known is None:
            times[current.to_stage] = StageTime(
                stage=current.to_stage,
                first_entered_at=current.occurred_at,
                last_exited_at=left,
                cumulative_seconds=spent,
            )
        else:
            known.last_exited_at = left
            known.cumulative_seconds += spent
    return list(times.values())


_TRANSITION_FIELDS = tuple(TransitionView.model_fields)


def _lookup_statement(*, by_lead_id: bool) -> Select[Any]:
    """The lead an identifier names, with its first transitions, as one statement.

    Built once at import with bind parameters (``kind``, ``value``, ``funnel``,
    ``history_limit``): SQLAlchemy then memoises its cache key and compiled form, and a
    lookup costs one round trip and almost no Python besides reading the rows.
    """
    merged_into = (
        select(Identity.lead_id)
        .where(Identity.kind == bindparam("kind"), Identity.value == bindparam("value"))
        .scalar_subquery()
    )
    # A lead_id nobody merged has no identity row of its own: it is looked up as given.
    lead_key = func.coalesce(merged_into, bindparam("value")) if by_lead_id else merged_into
    t = LeadTransition
    history = (
        select(*(t.__table__.c[name] for name in _TRANSITION_FIELDS), t.id)
        .where(t.funnel == LeadStage.funnel, t.lead_key == LeadStage.lead_key)
        .order_by(t.occurred_at, t.id)
        .limit(bindparam("history_limit"))
        .lateral("history")
    )
    return (
        select(
            LeadStage.lead_key,
            LeadStage.funnel_version,
            LeadStage.stage,
            LeadStage.stage_entered_at,
            LeadStage.sales_ready,
            # Only the scores: the state also holds the fold's working memory.
            LeadStage.state["scores"].label("scores"),
            LeadStage.state["scores_as_of"].astext.label("scores_as_of"),
            LeadStage.first_touch_at,
            LeadStage.last_touch_at,
            *(history.c[name] for name in _TRANSITION_FIELDS),
        )
        .outerjoin(history, true())
        .where(LeadStage.funnel == bindparam("funnel"), LeadStage.lead_key == lead_key)
        .order_by(history.c.occurred_at, history.c.id)
    )


_LOOKUP_BY_LEAD_ID = _lookup_statement(by_lead_id=True)
_LOOKUP_BY_IDENTITY = _lookup_statement(by_lead_id=False)


async def get_lead(
    connection: AsyncConnection, kind: str, value: str, *, funnel: str, history_limit: int
) -> LeadView | None:
    """The lead an identifier (``lead_id``, ``email``, ``anonymous_id``) belongs to,
    following merges, with its first ``history_limit`` transitions; None if unknown.

    One statement, one round trip: this is the lookup internal services call on their
    hot paths (issue #5 asks p99 <= 10 ms at 500/s), so the identity, the state and the
    history are read together rather than in three queries.
    """
    statement = _LOOKUP_BY_LEAD_ID if kind == "lead_id" else _LOOKUP_BY_IDENTITY
    rows = (
        await connection.execute(
            statement,
            {"kind": kind, "value": value, "funnel": funnel, "history_limit": history_limit},
        )
    ).all()
    if not rows:
        return None
    lead = rows[0]
    transitions = [
        TransitionView.model_validate({name: row._mapping[name] for name in _TRANSITION_FIELDS})
        for row in rows
        if row.to_stage is not None
    ]
    return LeadView(
        lead_id=lead.lead_key,
        funnel=funnel,
        funnel_version=lead.funnel_version,
        stage=lead.stage,
        stage_entered_at=lead.stage_entered_at,
        sales_ready=lead.sales_ready,
        scores=dict(lead.scores or {}),
        scores_as_of=lead.scores_as_of,
        first_touch_at=lead.first_touch_at,
        last_touch_at=lead.last_touch_at,
        stage_times=stage_times(transitions, datetime.now(UTC)),
        transitions=transitions,
    )
