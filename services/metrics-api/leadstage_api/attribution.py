"""Touchpoint attribution: credit for conversions, shared among the touches before them.

A *conversion* is a unit first reaching ``stage`` (counting skips) in [from, to). Its
touches are the unit's stored touchpoints at or before the conversion (for an account,
every contact's), in time order (ties by source and event id); the touch that caused
the move is the last of them. Each conversion's credit adds up to 1 over its touches:

- ``first_touch``: all to the first; ``last_touch``: all to the last;
- ``linear``: 1/n each;
- ``position_based``: 40% first, 40% last, 20% shared by the middle; one touch gets
  100%, two get 50% each;
- ``time_decay``: weight 2^(-age / half_life) with age = conversion time - touch time,
  normalised to sum to 1.

Credit is reported per channel, campaign (utm_campaign) or touch type. ``revenue``
weights each conversion's credit by the unit's won-deal amount: the numeric
``properties.amount`` of its ``deal_won`` and ``purchase`` touches (any time), 0 if none.
Everything is computed in one SQL statement with window functions.
"""

from __future__ import annotations

from collections import defaultdict
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import StoredTouchpoint
from leadstage.funnels import Funnel
from leadstage_api.analytics_schemas import (
    AttributionFigures,
    AttributionReport,
    AttributionSegment,
    Credit,
)
from leadstage_api.periods import Range
from leadstage_api.reach import unit_reach
from leadstage_api.schemas import Ratio
from leadstage_api.segments import Segmentation, members, ordered_segments

DEAL_TYPES = ("deal_won", "purchase")
# Older touches than this many half-lives get weight 0 (2^-1000 is below any share
# worth reporting, and it keeps PostgreSQL's power() clear of underflow).
MAX_HALF_LIVES = 1000.0


class Model(StrEnum):
    FIRST_TOUCH = "first_touch"
    LAST_TOUCH = "last_touch"
    LINEAR = "linear"
    TIME_DECAY = "time_decay"
    POSITION_BASED = "position_based"


class By(StrEnum):
    CHANNEL = "channel"
    CAMPAIGN = "campaign"
    TYPE = "type"


def _by(by: By) -> ColumnElement[Any]:
    touch = StoredTouchpoint
    expression: ColumnElement[Any] = touch.type.expression
    if by is By.CHANNEL:
        expression = touch.payload["channel"].astext
    elif by is By.CAMPAIGN:
        expression = touch.payload[("utm", "name")].astext
    return expression


def _credit(model: Model, position: Any, count: Any, decay: Any, decay_sum: Any) -> Any:
    """SQL: the share of a conversion credited to the touch at ``position`` of ``count``."""
    if model is Model.FIRST_TOUCH:
        return case((position == 1, 1.0), else_=0.0)
    if model is Model.LAST_TOUCH:
        return case((position == count, 1.0), else_=0.0)
    if model is Model.LINEAR:
        return 1.0 / cast(count, Float)
    if model is Model.TIME_DECAY:
        return decay / decay_sum
    return case(
        (count == 1, 1.0),
        (count == 2, 0.5),
        (position == 1, 0.4),
        (position == count, 0.4),
        else_=0.2 / cast(count - 2, Float),
    )


async def attribution(
    session: AsyncSession,
    funnel: Funnel,
    *,
    stage: str,
    model: Model,
    half_life_days: float,
    by: By,
    span: Range,
    segmentation: Segmentation,
) -> AttributionReport:
    population = members(funnel, segmentation)
    reach = unit_reach(funnel, population)
    conversions = (
        select(reach.c.unit_key, reach.c.segment, reach.c.reached_at.label("converted_at"))
        .where(
            reach.c.position == funnel.stage_index(stage),
            reach.c.reached_at >= span.start,
            reach.c.reached_at < span.end,
        )
        .cte("conversions")
    )
    touch = StoredTouchpoint
    amount = touch.payload[("properties", "amount")]
    revenue = (
        select(
            population.c.unit_key,
            func.sum(
                case((func.jsonb_typeof(amount) == "number", cast(amount.astext, Float)), else_=0.0)
            ).label("revenue"),
        )
        .join(touch, touch.lead_key == population.c.lead_key)
        .where(touch.type.in_(DEAL_TYPES))
        .group_by(population.c.unit_key)
        .subquery("revenue")
    )
    # Age in half-lives, relative to the unit's latest touch so the last weight is 1.
    age = func.extract("epoch", conversions.c.converted_at - touch.occurred_at) / (
        half_life_days * 86_400.0
    )
    touches = (
        select(
            conversions.c.unit_key,
            conversions.c.segment,
            _by(by).label("value"),
            func.row_number()
            .over(
                partition_by=conversions.c.unit_key,
                order_by=(touch.occurred_at, touch.source, touch.event_id),
            )
            .label("position"),
            func.count().over(partition_by=conversions.c.unit_key).label("touch_count"),
            cast(age, Float).label("age"),
            func.coalesce(revenue.c.revenue, 0.0).label("revenue"),
        )
        .select_from(conversions)
        .join(population, population.c.unit_key == conversions.c.unit_key)
        .join(touch, touch.lead_key == population.c.lead_key)
        .outerjoin(revenue, revenue.c.unit_key == conversions.c.unit_key)
        .where(touch.occurred_at <= conversions.c.converted_at)
        .subquery("touches")
    )
    # Ages relative to the unit's latest touch: its weight is 1, so the sum is >= 1.
    relative_age = func.least(
        touches.c.age - func.min(touches.c.age).over(partition_by=touches.c.unit_key),
        MAX_HALF_LIVES,
    )
    weighted = select(
        touches.c.unit_key,
        touches.c.segment,
        touches.c.value,
        touches.c.revenue,
        touches.c.position,
        touches.c.touch_count,
        func.power(literal(0.5, Float), relative_age).label("decay"),
    ).subquery("weighted")
    w = weighted.c
    decay_sum = func.sum(w.decay).over(partition_by=w.unit_key)
    credited = select(
        w.segment,
        w.value,
        w.revenue,
        _credit(model, w.position, w.touch_count, w.decay, decay_sum).label("credit"),
    ).subquery("credited")
    c = credited.c
    credits: dict[Key, list[tuple[str | None, float, int, float]]] = defaultdict(list)
    for segment, value, grouped_out, credit, touch_count, credited_revenue in await session.execute(
        select(
            c.segment,
            c.value,
            func.grouping(c.segment),
            func.sum(c.credit),
            func.count(),
            func.sum(c.credit * c.revenue),
        ).group_by(func.grouping_sets(tuple_(c.segment, c.value), tuple_(c.value)))
    ):
        credits[_key(segment, grouped_out)].append(
            (value, float(credit), touch_count, float(credited_revenue))
        )

    converted: dict[Key, tuple[int, float]] = {}
    for segment, grouped_out, count, converted_revenue in await session.execute(
        select(
            conversions.c.segment,
            func.grouping(conversions.c.segment),
            func.count(),
            func.coalesce(func.sum(revenue.c.revenue), 0.0),
        )
        .outerjoin(revenue, revenue.c.unit_key == conversions.c.unit_key)
        .group_by(func.grouping_sets(tuple_(conversions.c.segment), tuple_()))
    ):
        converted[_key(segment, grouped_out)] = (count, float(converted_revenue))
    attributed: dict[Key, int] = {}
    for segment, grouped_out, units in await session.execute(
        select(
            touches.c.segment,
            func.grouping(touches.c.segment),
            func.count(touches.c.unit_key.distinct()),
        ).group_by(func.grouping_sets(tuple_(touches.c.segment), tuple_()))
    ):
        attributed[_key(segment, grouped_out)] = units

    def figures(key: Key) -> AttributionFigures:
        count, converted_revenue = converted.get(key, (0, 0.0))
        return AttributionFigures(
            conversions=count,
            unattributed=count - attributed.get(key, 0),
            revenue=round(converted_revenue, 2),
            credits=[
                Credit(
                    value=value,
                    credit=round(credit, 6),
                    share=ratio(credit, count),
                    touches=touch_count,
                    revenue=round(credited_revenue, 2),
                )
                for value, credit, touch_count, credited_revenue in sorted(
                    credits.get(key, []), key=lambda row: (row[0] is None, row[0] or "")
                )
            ],
        )

    total = figures(TOTAL)
    segments, omitted = ordered_segments(
        {value: None for is_total, value in converted if not is_total}
    )
    return AttributionReport(
        funnel=funnel.name,
        funnel_version=funnel.version,
        range_from=span.start,
        range_to=span.end,
        **segmentation.echo(),
        segments_omitted=omitted,
        stage=stage,
        model=model,
        half_life_days=half_life_days,
        by=by,
        conversions=total.conversions,
        unattributed=total.unattributed,
        revenue=total.revenue,
        credits=total.credits,
        segments=None
        if segmentation.breakdown is None
        else [
            AttributionSegment(value=value, **figures((False, value)).model_dump())
            for value, _ in segments
        ],
    )


Key = tuple[bool, str | None]
TOTAL: Key = (True, None)


def _key(segment: str | None, grouped_out: int) -> Key:
    return TOTAL if grouped_out else (False, segment)


def ratio(credit: float, conversions: int) -> Ratio:
    if conversions == 0:
        return Ratio(value=None, reason="no conversions")
    return Ratio(value=round(credit / conversions, 6))
