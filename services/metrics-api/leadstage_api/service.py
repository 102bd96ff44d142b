"""Read models for leads. Module-level functions that take the session."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import LeadStage, LeadTransition
from leadstage_api.schemas import LeadView, TransitionView


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
        transitions=[TransitionView.model_validate(t) for t in transitions],
    )
