"""Cohorts: the units that entered the funnel in each period, followed for N days.

A unit *enters* when it first reaches the funnel's first stage (any first transition
does: reaching a later stage counts the earlier ones, as everywhere in the metrics).
For each cohort and stage: how many of its entrants reached the stage within
``follow_days`` of their own entry (inclusive), and the step and cumulative
conversion. A cohort is *complete* once its last possible entrant's follow window
has passed; the trend of each stage compares complete cohorts only, because a
cohort still being followed understates its conversion.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.funnels import Funnel
from leadstage_api.analytics_schemas import (
    Cohort,
    CohortFigures,
    CohortReport,
    CohortSegment,
    CohortStage,
    Measure,
    StageTrend,
    TrendPoint,
)
from leadstage_api.funnel_metrics import ratio
from leadstage_api.periods import Period, Range, following, period_start, period_starts
from leadstage_api.reach import unit_reach
from leadstage_api.schemas import Ratio
from leadstage_api.segments import Segmentation, members, ordered_segments

# cohort start -> reached count per stage position
CohortCounts = dict[datetime, list[int]]


async def cohorts(
    session: AsyncSession,
    funnel: Funnel,
    *,
    span: Range,
    period: Period,
    follow_days: int,
    segmentation: Segmentation,
    now: datetime,
) -> CohortReport:
    starts = period_starts(span, period)
    follow = timedelta(days=follow_days)
    reach = unit_reach(funnel, members(funnel, segmentation))
    entries = (
        select(
            reach.c.unit_key,
            reach.c.segment,
            reach.c.reached_at.label("entered_at"),
            period_start(reach.c.reached_at, period).label("cohort"),
        )
        .where(
            reach.c.position == 0,
            reach.c.reached_at >= span.start,
            reach.c.reached_at < span.end,
        )
        .subquery("entries")
    )
    later = reach.alias("later")
    rows = await session.execute(
        select(entries.c.cohort, entries.c.segment, later.c.position, func.count())
        .join(later, later.c.unit_key == entries.c.unit_key)
        .where(later.c.reached_at <= entries.c.entered_at + follow)
        .group_by(entries.c.cohort, entries.c.segment, later.c.position)
    )
    stage_count = len(funnel.stages)
    total: CohortCounts = {start: [0] * stage_count for start in starts}
    by_segment: dict[str | None, CohortCounts] = defaultdict(
        lambda: {start: [0] * stage_count for start in starts}
    )
    for cohort, segment, position, units in rows:
        for counts in (total, by_segment[segment]):
            counts[cohort][position] += units
    figures = _figures(funnel, total, period, follow, now)
    segments, omitted = ordered_segments(by_segment)
    return CohortReport(
        funnel=funnel.name,
        funnel_version=funnel.version,
        range_from=span.start,
        range_to=span.end,
        **segmentation.echo(),
        segments_omitted=omitted,
        period=period,
        follow_days=follow_days,
        cohorts=figures.cohorts,
        trends=figures.trends,
        segments=None
        if segmentation.breakdown is None
        else [
            CohortSegment(value=value, cohorts=part.cohorts, trends=part.trends)
            for value, counts in segments
            for part in [_figures(funnel, counts, period, follow, now)]
        ],
    )


def _figures(
    funnel: Funnel, counts: CohortCounts, period: Period, follow: timedelta, now: datetime
) -> CohortFigures:
    result: list[Cohort] = []
    for start, reached in sorted(counts.items()):
        followed_until = following(start, period) + follow
        stages = [
            CohortStage(
                stage=stage,
                reached=reached[k],
                step_conversion=_rate(reached[k], reached[k - 1] if k else reached[0]),
                cumulative_conversion=_rate(reached[k], reached[0]),
            )
            for k, stage in enumerate(funnel.stages)
        ]
        result.append(
            Cohort(
                period_start=start,
                entered=reached[0],
                followed_until=followed_until,
                complete=followed_until <= now,
                stages=stages,
            )
        )
    return CohortFigures(
        cohorts=result, trends=[_trend(result, k, stage) for k, stage in enumerate(funnel.stages)]
    )


def _rate(numerator: int, denominator: int) -> Ratio:
    if denominator == 0:
        return Ratio(value=None, reason="no units entered in this period")
    return ratio(numerator, denominator)


def _trend(cohorts: list[Cohort], k: int, stage: str) -> StageTrend:
    points = [
        TrendPoint(period_start=c.period_start, value=c.stages[k].cumulative_conversion.value)
        for c in cohorts
    ]
    compared = [
        value
        for c in cohorts
        if c.complete and (value := c.stages[k].cumulative_conversion.value) is not None
    ]
    if len(compared) < 2:
        change = Measure(value=None, reason="fewer than two complete cohorts with entrants")
    else:
        change = Measure(value=round(compared[-1] - compared[0], 6))
    return StageTrend(stage=stage, points=points, change=change)
