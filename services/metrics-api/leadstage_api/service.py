"""Read models for leads. Module-level functions that take the session."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import Identity, LeadStage, LeadTransition
from leadstage_api.schemas import LeadPage, LeadSummary, LeadView, StageTime, TransitionView


async def resolve_lead(session: AsyncSession, kind: str, value: str) -> str | None:
    """The canonical lead an identifier (lead_id, email, anonymous_id) belongs to,
    following merges; None if ingest never saw it."""
    return await session.scalar(
        select(Identity.lead_id).where(Identity.kind == kind, Identity.value == value)
    )


async def list_leads(
    session: AsyncSession,
    *,
    funnel: str,
    stage: str | None,
    sales_ready: bool | None,
    after: str | None,
    limit: int,
) -> LeadPage:
    """Leads of a funnel in lead id order (stable), a page at a time (keyset)."""
    query = select(LeadStage).where(LeadStage.funnel == funnel)
    if stage is not None:
        query = query.where(LeadStage.stage == stage)
    if sales_ready is not None:
        query = query.where(LeadStage.sales_ready == sales_ready)
    if after is not None:
        query = query.where(LeadStage.lead_key > after)
    rows = (await session.scalars(query.order_by(LeadStage.lead_key).limit(limit + 1))).all()
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


async def get_lead(
    session: AsyncSession, lead_id: str, *, funnel: str, history_limit: int
) -> LeadView | None:
    lead = await session.get(LeadStage, (funnel, lead_id))
    if lead is None:
        return None
    transitions = await session.scalars(
        select(LeadTransition)
        .where(LeadTransition.funnel == funnel, LeadTransition.lead_key == lead_id)
        .order_by(LeadTransition.occurred_at, LeadTransition.id)
        .limit(history_limit)
    )
    history = [TransitionView.model_validate(t) for t in transitions]
    state = lead.state or {}
    return LeadView(
        lead_id=lead.lead_key,
        funnel=lead.funnel,
        funnel_version=lead.funnel_version,
        stage=lead.stage,
        stage_entered_at=lead.stage_entered_at,
        sales_ready=lead.sales_ready,
        scores=dict(state.get("scores") or {}),
        scores_as_of=state.get("scores_as_of"),
        first_touch_at=lead.first_touch_at,
        last_touch_at=lead.last_touch_at,
        stage_times=stage_times(history, datetime.now(UTC)),
        transitions=history,
    )
