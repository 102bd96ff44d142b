"""Funnel summary: per stage, who is there, who reached it, conversion and drop-off.

"Reached stage k" counts a lead whose furthest stage is at or beyond k, so a lead
that jumped from Interest to Opportunity has passed Action and Engagement too (the
domain's cumulative counting). Module-level functions that take the session.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Integer, String, and_, column, func, select, values
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import LeadStage, LeadTransition
from leadstage.funnels import Funnel
from leadstage_api.schemas import FunnelSummary, Ratio, StageSummary


def ratio(numerator: int, denominator: int) -> Ratio:
    if denominator == 0:
        return Ratio(value=None, reason="no leads reached the previous stage")
    return Ratio(value=round(numerator / denominator, 6), reason=None)


async def summary(
    session: AsyncSession,
    funnel: Funnel,
    *,
    entered_from: datetime | None,
    entered_to: datetime | None,
    as_of: datetime,
    window: timedelta,
) -> FunnelSummary:
    """Leads that entered the funnel in [entered_from, entered_to), as of ``as_of``.

    A lead that reached stage k-1 but not k is *dropped* if it exited, or if its
    last touch is older than ``window``; otherwise it is still *in progress*.
    """
    stages = values(
        column("name", String), column("position", Integer), name="stage_positions"
    ).data([(name, i) for i, name in enumerate(funnel.stages)])
    t = LeadTransition
    # One pass over the funnel's transitions: each lead's entry time and furthest stage.
    per_lead = (
        select(
            t.lead_key,
            func.min(t.occurred_at).label("entered_at"),
            func.max(stages.c.position).label("position"),
        )
        .outerjoin(stages, stages.c.name == t.to_stage)  # exits have no position
        .where(t.funnel == funnel.name)
        .group_by(t.lead_key)
        .subquery()
    )
    period = [per_lead.c.entered_at >= entered_from] if entered_from else []
    if entered_to:
        period.append(per_lead.c.entered_at < entered_to)
    rows = await session.execute(
        select(
            per_lead.c.position,
            LeadStage.stage,
            func.count().label("leads"),
            func.count()
            .filter(
                and_(
                    LeadStage.last_touch_at >= as_of - window,
                    LeadStage.stage.not_in(sorted(funnel.exits)),
                )
            )
            .label("active"),
        )
        .select_from(per_lead)
        .join(
            LeadStage,
            and_(LeadStage.funnel == funnel.name, LeadStage.lead_key == per_lead.c.lead_key),
        )
        .where(*period, per_lead.c.position.is_not(None))
        .group_by(per_lead.c.position, LeadStage.stage)
    )
    count = len(funnel.stages)
    at_furthest = [0] * count
    active_at_furthest = [0] * count
    current = dict.fromkeys((*funnel.stages, *sorted(funnel.exits)), 0)
    for position, stage, leads, active in rows:
        at_furthest[position] += leads
        active_at_furthest[position] += active
        current[stage] = current.get(stage, 0) + leads
    reached = [sum(at_furthest[k:]) for k in range(count)]
    result = []
    for k, name in enumerate(funnel.stages):
        previous = reached[k - 1] if k else reached[0]
        stalled = at_furthest[k - 1] if k else 0
        in_progress = active_at_furthest[k - 1] if k else 0
        result.append(
            StageSummary(
                stage=name,
                group=funnel.groups[name],
                current=current[name],
                reached=reached[k],
                step_conversion=ratio(reached[k], previous) if k else ratio(reached[0], reached[0]),
                cumulative_conversion=ratio(reached[k], reached[0]),
                drop_off=previous - reached[k] if k else 0,
                in_progress=in_progress,
                dropped=stalled - in_progress,
            )
        )
    return FunnelSummary(
        funnel=funnel.name,
        funnel_version=funnel.version,
        entered_from=entered_from,
        entered_to=entered_to,
        as_of=as_of,
        conversion_window_days=window.days,
        leads=reached[0],
        exits={name: current[name] for name in sorted(funnel.exits)},
        stages=result,
    )
