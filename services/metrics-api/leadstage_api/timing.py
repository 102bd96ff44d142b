"""Time in stage and time to convert: median, p75, p90 (PostgreSQL ``percentile_cont``,
interpolated) and a histogram of fixed buckets.

*Time in stage* measures completed stays only: a stay starts with a transition into
a stage and ends with the lead's next transition (of any kind, an exit included). A
stay still open has no duration yet and would bias the figures if cut at "now"; it
is counted as ``open`` instead. A stay counts in the range its *end* falls in (as a
sales cycle counts when the deal closes). A lead that revisits a stage (a regression
or a loop) has one stay per visit. Per lead only (see ``leads_only``).

*Time to convert* from stage A to stage B: for each unit that reached B in the range,
the time from first reaching A to first reaching B, both counting skips (a lead that
jumped over A reached it at the jump: its time from A is 0). The trend groups the
conversions by the period they happened in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, cast, func, select, tuple_
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import LeadTransition
from leadstage.funnels import Funnel
from leadstage_api.analytics_schemas import (
    Bucket,
    Measure,
    PeriodDurations,
    StageTimeStats,
    TimeInStageFigures,
    TimeInStageReport,
    TimeInStageSegment,
    TimeToConvertFigures,
    TimeToConvertReport,
    TimeToConvertSegment,
)
from leadstage_api.periods import Period, Range, period_start, period_starts
from leadstage_api.reach import unit_reach
from leadstage_api.segments import Segmentation, members, ordered_segments

HOUR, DAY = 3_600.0, 86_400.0
# Bucket edges in seconds: [0, 1h), [1h, 1d), [1d, 3d), ... [90d, no limit).
BUCKET_EDGES = (HOUR, DAY, 3 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 60 * DAY, 90 * DAY)
BUCKET_LABELS = (
    *("<1h", "1h-1d", "1d-3d", "3d-7d", "7d-14d", "14d-30d", "30d-60d", "60d-90d"),
    ">=90d",
)
MEASURES = "completed stays that ended in [from, to); open stays are counted, not measured"
# Figures are keyed by (is the total, segment value): a segment may be called "total".
Key = tuple[bool, str | None]
TOTAL: Key = (True, None)


def percentiles(seconds: Any) -> list[Any]:
    return [
        func.percentile_cont(fraction).within_group(seconds).label(name)
        for fraction, name in ((0.5, "p50"), (0.75, "p75"), (0.9, "p90"))
    ]


def measure(value: float | None, count: int, nothing: str) -> Measure:
    if count == 0 or value is None:
        return Measure(value=None, reason=nothing)
    return Measure(value=round(float(value), 3))


def histogram(counts: Sequence[int]) -> list[Bucket]:
    lows = (0.0, *BUCKET_EDGES)
    highs: tuple[float | None, ...] = (*BUCKET_EDGES, None)
    return [
        Bucket(label=label, min_seconds=low, max_seconds=high, count=count)
        for label, low, high, count in zip(BUCKET_LABELS, lows, highs, counts, strict=True)
    ]


def bucket_of(seconds: Any) -> Any:
    """SQL: the bucket index 0..8 of a duration (``width_bucket`` over the edges)."""
    return func.width_bucket(seconds, array([float(edge) for edge in BUCKET_EDGES]))


def segment_key(segment: str | None, grouped_out: int) -> Key:
    """Rows of a GROUPING SETS query: the total row has the segment grouped out."""
    return TOTAL if grouped_out else (False, segment)


def segment_values(*found: dict[Key, Any]) -> dict[str | None, None]:
    return {value: None for keyed in found for is_total, value in keyed if not is_total}


# -- time in stage ----------------------------------------------------------------------


async def time_in_stage(
    session: AsyncSession, funnel: Funnel, *, span: Range, segmentation: Segmentation
) -> TimeInStageReport:
    population = members(funnel, segmentation)
    t = LeadTransition
    stays = (
        select(
            t.lead_key,
            t.to_stage.label("stage"),
            t.occurred_at.label("entered_at"),
            func.lead(t.occurred_at)
            .over(partition_by=t.lead_key, order_by=(t.occurred_at, t.id))
            .label("left_at"),
        )
        .where(t.funnel == funnel.name)
        .subquery("stays")
    )
    completed = (
        select(
            stays.c.stage,
            population.c.segment,
            cast(func.extract("epoch", stays.c.left_at - stays.c.entered_at), Float).label(
                "seconds"
            ),
        )
        .join(population, population.c.lead_key == stays.c.lead_key)
        .where(
            stays.c.stage.in_(funnel.stages),
            stays.c.left_at >= span.start,
            stays.c.left_at < span.end,
        )
        .subquery("completed")
    )
    sets = func.grouping_sets(
        tuple_(completed.c.stage, completed.c.segment), tuple_(completed.c.stage)
    )
    stats: dict[Key, dict[str, tuple[int, list[float | None]]]] = defaultdict(dict)
    for stage, segment, grouped_out, count, *values in await session.execute(
        select(
            completed.c.stage,
            completed.c.segment,
            func.grouping(completed.c.segment),
            func.count(),
            *percentiles(completed.c.seconds),
        ).group_by(sets)
    ):
        stats[segment_key(segment, grouped_out)][stage] = (count, values)

    buckets: dict[Key, dict[str, list[int]]] = defaultdict(
        lambda: {stage: [0] * len(BUCKET_LABELS) for stage in funnel.stages}
    )
    bucket = bucket_of(completed.c.seconds).label("bucket")
    by_bucket = select(completed.c.stage, completed.c.segment, bucket).subquery("by_bucket")
    for stage, segment, grouped_out, index, count in await session.execute(
        select(
            by_bucket.c.stage,
            by_bucket.c.segment,
            func.grouping(by_bucket.c.segment),
            by_bucket.c.bucket,
            func.count(),
        ).group_by(
            func.grouping_sets(
                tuple_(by_bucket.c.stage, by_bucket.c.segment, by_bucket.c.bucket),
                tuple_(by_bucket.c.stage, by_bucket.c.bucket),
            )
        )
    ):
        buckets[segment_key(segment, grouped_out)][stage][index] = count

    still_open: dict[Key, dict[str, int]] = defaultdict(dict)
    open_stays = (
        select(stays.c.stage, population.c.segment)
        .join(population, population.c.lead_key == stays.c.lead_key)
        .where(stays.c.left_at.is_(None), stays.c.entered_at < span.end)
        .subquery("open_stays")
    )
    for stage, segment, grouped_out, count in await session.execute(
        select(
            open_stays.c.stage,
            open_stays.c.segment,
            func.grouping(open_stays.c.segment),
            func.count(),
        ).group_by(
            func.grouping_sets(
                tuple_(open_stays.c.stage, open_stays.c.segment), tuple_(open_stays.c.stage)
            )
        )
    ):
        still_open[segment_key(segment, grouped_out)][stage] = count

    def figures(key: Key) -> TimeInStageFigures:
        result = []
        for stage in funnel.stages:
            count, values = stats[key].get(stage, (0, [None, None, None]))
            nothing = "no completed stays in this stage in the range"
            result.append(
                StageTimeStats(
                    stage=stage,
                    count=count,
                    median_seconds=measure(values[0], count, nothing),
                    p75_seconds=measure(values[1], count, nothing),
                    p90_seconds=measure(values[2], count, nothing),
                    histogram=histogram(buckets[key][stage]),
                    open=still_open[key].get(stage, 0),
                )
            )
        return TimeInStageFigures(stages=result)

    segments, omitted = ordered_segments(segment_values(stats, still_open))
    return TimeInStageReport(
        funnel=funnel.name,
        funnel_version=funnel.version,
        range_from=span.start,
        range_to=span.end,
        **segmentation.echo(),
        segments_omitted=omitted,
        measures=MEASURES,
        stages=figures(TOTAL).stages,
        segments=None
        if segmentation.breakdown is None
        else [
            TimeInStageSegment(value=value, stages=figures((False, value)).stages)
            for value, _ in segments
        ],
    )


# -- time to convert --------------------------------------------------------------------


async def time_to_convert(
    session: AsyncSession,
    funnel: Funnel,
    *,
    from_stage: str,
    to_stage: str,
    span: Range,
    period: Period,
    segmentation: Segmentation,
) -> TimeToConvertReport:
    starts = period_starts(span, period)
    reach = unit_reach(funnel, members(funnel, segmentation))
    source, target = reach.alias("reached_from"), reach.alias("reached_to")
    conversions = (
        select(
            target.c.segment,
            period_start(target.c.reached_at, period).label("period"),
            cast(func.extract("epoch", target.c.reached_at - source.c.reached_at), Float).label(
                "seconds"
            ),
        )
        .join(
            source,
            and_(
                source.c.unit_key == target.c.unit_key,
                source.c.position == funnel.stage_index(from_stage),
            ),
        )
        .where(
            target.c.position == funnel.stage_index(to_stage),
            target.c.reached_at >= span.start,
            target.c.reached_at < span.end,
        )
        .subquery("conversions")
    )
    c = conversions.c
    overall: dict[Key, tuple[int, list[float | None]]] = {}
    trends: dict[Key, dict[datetime, tuple[int, list[float | None]]]] = defaultdict(dict)
    for period_at, segment, period_out, segment_out, count, *values in await session.execute(
        select(
            c.period,
            c.segment,
            func.grouping(c.period),
            func.grouping(c.segment),
            func.count(),
            *percentiles(c.seconds),
        ).group_by(
            func.grouping_sets(
                tuple_(c.segment), tuple_(), tuple_(c.period, c.segment), tuple_(c.period)
            )
        )
    ):
        key = segment_key(segment, segment_out)
        if period_out:
            overall[key] = (count, values)
        else:
            trends[key][period_at] = (count, values)

    buckets: dict[Key, list[int]] = defaultdict(lambda: [0] * len(BUCKET_LABELS))
    by_bucket = select(c.segment, bucket_of(c.seconds).label("bucket")).subquery("by_bucket")
    for segment, grouped_out, index, count in await session.execute(
        select(
            by_bucket.c.segment,
            func.grouping(by_bucket.c.segment),
            by_bucket.c.bucket,
            func.count(),
        ).group_by(
            func.grouping_sets(
                tuple_(by_bucket.c.segment, by_bucket.c.bucket), tuple_(by_bucket.c.bucket)
            )
        )
    ):
        buckets[segment_key(segment, grouped_out)][index] = count

    nothing = f"no unit reached {to_stage} in the range"

    def figures(key: Key) -> TimeToConvertFigures:
        count, values = overall.get(key, (0, [None, None, None]))
        trend = []
        for start in starts:
            n, at_period = trends[key].get(start, (0, [None, None, None]))
            quiet = f"no unit reached {to_stage} in this period"
            trend.append(
                PeriodDurations(
                    period_start=start,
                    count=n,
                    median_seconds=measure(at_period[0], n, quiet),
                    p75_seconds=measure(at_period[1], n, quiet),
                    p90_seconds=measure(at_period[2], n, quiet),
                )
            )
        return TimeToConvertFigures(
            count=count,
            median_seconds=measure(values[0], count, nothing),
            p75_seconds=measure(values[1], count, nothing),
            p90_seconds=measure(values[2], count, nothing),
            histogram=histogram(buckets[key]),
            trend=trend,
        )

    segments, omitted = ordered_segments(segment_values(overall))
    total = figures(TOTAL)
    return TimeToConvertReport(
        funnel=funnel.name,
        funnel_version=funnel.version,
        range_from=span.start,
        range_to=span.end,
        **segmentation.echo(),
        segments_omitted=omitted,
        from_stage=from_stage,
        to_stage=to_stage,
        period=period,
        **total.model_dump(exclude={"histogram", "trend"}),
        histogram=total.histogram,
        trend=total.trend,
        segments=None
        if segmentation.breakdown is None
        else [
            TimeToConvertSegment(value=value, **figures((False, value)).model_dump())
            for value, _ in segments
        ],
    )
