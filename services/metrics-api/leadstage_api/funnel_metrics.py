"""Funnel summary: per stage, who is there, who reached it, conversion and drop-off.

"Reached stage k" counts a lead whose furthest stage is at or beyond k, so a lead
that jumped from Interest to Opportunity has passed Action and Engagement too (the
domain's cumulative counting). Filters, one breakdown and the account unit come from
:mod:`leadstage_api.segments`. Module-level functions that take the session.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import String, and_, case, func, select
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import LeadStage, LeadTransition
from leadstage.funnels import Funnel
from leadstage_api.reach import stage_positions
from leadstage_api.schemas import FunnelSummary, Ratio, SegmentSummary, StageSummary
from leadstage_api.segments import Segmentation, members, ordered_segments


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
    segmentation: Segmentation | None = None,
) -> FunnelSummary:
    """Units that entered the funnel in [entered_from, entered_to), as of ``as_of``.

    A unit that reached stage k-1 but not k is *dropped* if it exited, or if its
    last touch is older than ``window``; otherwise it is still *in progress*. An
    account (unit ``account``) reached its furthest contact's furthest stage; it is
    now in its furthest contact's current stage (or, with every contact in an exit,
    in the exit its latest-moving contact took), and in progress while any contact is.
    """
    segmentation = segmentation or Segmentation()
    population = members(funnel, segmentation)
    stages = stage_positions(funnel)
    current_positions = stage_positions(funnel, "current_positions")
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
    active = and_(
        LeadStage.last_touch_at >= as_of - window,
        LeadStage.stage.not_in(sorted(funnel.exits)),
    )
    # A unit is one lead, or one account folding its contacts together.
    per_unit = (
        select(
            population.c.unit_key,
            population.c.segment,
            func.min(per_lead.c.entered_at).label("entered_at"),
            func.max(per_lead.c.position).label("position"),
            func.max(current_positions.c.position).label("current_position"),
            func.array_agg(
                aggregate_order_by(LeadStage.stage, LeadStage.stage_entered_at.desc()),
                type_=ARRAY(String),
            )[1].label("latest_state"),
            func.coalesce(func.bool_or(active), False).label("active"),
        )
        .select_from(per_lead)
        .join(population, population.c.lead_key == per_lead.c.lead_key)
        .join(
            LeadStage,
            and_(LeadStage.funnel == funnel.name, LeadStage.lead_key == per_lead.c.lead_key),
        )
        .outerjoin(current_positions, current_positions.c.name == LeadStage.stage)
        .group_by(population.c.unit_key, population.c.segment)
        .subquery()
    )
    period = [per_unit.c.entered_at >= entered_from] if entered_from else []
    if entered_to:
        period.append(per_unit.c.entered_at < entered_to)
    other_state = case(
        (per_unit.c.current_position.is_(None), per_unit.c.latest_state), else_=None
    ).label("other_state")
    rows = await session.execute(
        select(
            per_unit.c.segment,
            per_unit.c.position,
            per_unit.c.current_position,
            other_state,
            func.count().label("units"),
            func.count().filter(per_unit.c.active).label("active"),
        )
        .where(*period, per_unit.c.position.is_not(None))
        .group_by(per_unit.c.segment, per_unit.c.position, per_unit.c.current_position, other_state)
    )
    tallies: dict[str | None, _Tally] = {}
    total = _Tally(funnel)
    for segment, position, current_position, state, units, active_units in rows:
        now_in = funnel.stages[current_position] if current_position is not None else state
        for tally in (total, tallies.setdefault(segment, _Tally(funnel))):
            tally.add(position, now_in, units, active_units)
    figures = total.figures()
    segments, omitted = ordered_segments(tallies)
    return FunnelSummary(
        funnel=funnel.name,
        funnel_version=funnel.version,
        entered_from=entered_from,
        entered_to=entered_to,
        as_of=as_of,
        conversion_window_days=window.days,
        leads=figures.leads,
        exits=figures.exits,
        stages=figures.stages,
        **segmentation.echo(),
        segments=None
        if segmentation.breakdown is None
        else [
            SegmentSummary(value=value, **tally.figures().model_dump()) for value, tally in segments
        ],
        segments_omitted=omitted,
    )


class _Figures(BaseModel):
    leads: int
    exits: dict[str, int]
    stages: list[StageSummary]


class _Tally:
    """Unit counts by furthest stage and current state, folded into stage figures."""

    def __init__(self, funnel: Funnel) -> None:
        self.funnel = funnel
        count = len(funnel.stages)
        self.units = 0
        self.at_furthest = [0] * count
        self.active_at_furthest = [0] * count
        self.current = dict.fromkeys((*funnel.stages, *sorted(funnel.exits)), 0)

    def add(self, position: int, state: str | None, units: int, active: int) -> None:
        self.units += units
        self.at_furthest[position] += units
        self.active_at_furthest[position] += active
        if state is not None:
            self.current[state] = self.current.get(state, 0) + units

    def figures(self) -> _Figures:
        funnel, at_furthest, current = self.funnel, self.at_furthest, self.current
        count = len(funnel.stages)
        reached = [sum(at_furthest[k:]) for k in range(count)]
        result = []
        for k, name in enumerate(funnel.stages):
            previous = reached[k - 1] if k else reached[0]
            stalled = at_furthest[k - 1] if k else 0
            in_progress = self.active_at_furthest[k - 1] if k else 0
            result.append(
                StageSummary(
                    stage=name,
                    group=funnel.groups[name],
                    current=current[name],
                    reached=reached[k],
                    step_conversion=ratio(reached[k], previous)
                    if k
                    else ratio(reached[0], reached[0]),
                    cumulative_conversion=ratio(reached[k], reached[0]),
                    drop_off=previous - reached[k] if k else 0,
                    in_progress=in_progress,
                    dropped=stalled - in_progress,
                )
            )
        return _Figures(
            leads=reached[0],
            exits={name: current[name] for name in sorted(funnel.exits)},
            stages=result,
        )
