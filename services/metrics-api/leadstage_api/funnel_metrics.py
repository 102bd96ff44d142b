"""Funnel summary: per stage, who is there, who reached it, conversion and drop-off.

"Reached stage k" counts a lead whose furthest stage is at or beyond k, so a lead
that jumped from Interest to Opportunity has passed Action and Engagement too (the
domain's cumulative counting). Filters, one breakdown and the account unit come from
:mod:`leadstage_api.segments`. Module-level functions that take the session.

Two ways to the same figures: leads with no filter, at most one breakdown and a
period on UTC midnights (or open) are read from the rollup (:mod:`leadstage.rollup`:
counts per entry day, furthest stage, current state and segment, and the recently
touched leads for "in progress"), when it was computed with this funnel's definition;
anything else is recomputed from the transitions. The rollup trails the engine by
about a rollup interval; the answer says which way it was computed and how fresh.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Date,
    DateTime,
    Integer,
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from leadstage.db.models import (
    FunnelRollup,
    FunnelStageCount,
    FunnelStageMonthCount,
    LeadFunnelFact,
    LeadStage,
    LeadTransition,
    table,
)
from leadstage.funnels import Funnel
from leadstage.rollup import TOTAL
from leadstage_api.reach import stage_positions
from leadstage_api.schemas import FunnelSummary, Ratio, SegmentSummary, StageSummary
from leadstage_api.segments import Segmentation, Unit, members, ordered_segments


def ratio(numerator: int, denominator: int) -> Ratio:
    if denominator == 0:
        return Ratio(value=None, reason="no leads reached the previous stage")
    return Ratio(value=round(numerator / denominator, 6), reason=None)


async def summary(
    session: AsyncSession | AsyncConnection,
    funnel: Funnel,
    *,
    entered_from: datetime | None,
    entered_to: datetime | None,
    as_of: datetime,
    window: timedelta,
    segmentation: Segmentation | None = None,
    read_rollup: bool = True,
) -> FunnelSummary:
    """Units that entered the funnel in [entered_from, entered_to), as of ``as_of``.

    A unit that reached stage k-1 but not k is *dropped* if it exited, or if its
    last touch is older than ``window``; otherwise it is still *in progress*. An
    account (unit ``account``) reached its furthest contact's furthest stage; it is
    now in its furthest contact's current stage (or, with every contact in an exit,
    in the exit its latest-moving contact took), and in progress while any contact is.

    Each way is one statement (one snapshot), so ``session`` may be a connection
    without a transaction.
    """
    segmentation = segmentation or Segmentation()
    if read_rollup and _rollup_answers(segmentation, entered_from, entered_to):
        rolled = await _rollup_tallies(
            session,
            funnel,
            segmentation,
            entered_from=entered_from,
            entered_to=entered_to,
            active_since=as_of - window,
        )
        if rolled is not None:
            rolled_total, rolled_segments, aggregated_through = rolled
            return _summary(
                funnel,
                segmentation,
                rolled_total,
                rolled_segments,
                entered_from=entered_from,
                entered_to=entered_to,
                as_of=as_of,
                window=window,
                source="rollup",
                aggregated_through=aggregated_through,
            )
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
    return _summary(
        funnel,
        segmentation,
        total,
        tallies,
        entered_from=entered_from,
        entered_to=entered_to,
        as_of=as_of,
        window=window,
        source="raw",
        aggregated_through=None,
    )


def _summary(
    funnel: Funnel,
    segmentation: Segmentation,
    total: _Tally,
    tallies: dict[str | None, _Tally],
    *,
    entered_from: datetime | None,
    entered_to: datetime | None,
    as_of: datetime,
    window: timedelta,
    source: str,
    aggregated_through: datetime | None,
) -> FunnelSummary:
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
            SegmentSummary(value=value, leads=part.leads, exits=part.exits, stages=part.stages)
            for value, part in ((value, tally.figures()) for value, tally in segments)
        ],
        segments_omitted=omitted,
        source=source,
        aggregated_through=aggregated_through,
    )


def _midnight(moment: datetime | None) -> bool:
    if moment is None:
        return True
    utc = moment.astimezone(UTC)
    return (utc.hour, utc.minute, utc.second, utc.microsecond) == (0, 0, 0, 0)


def _rollup_answers(
    segmentation: Segmentation, entered_from: datetime | None, entered_to: datetime | None
) -> bool:
    """Whether the rollup holds this summary: leads, no filter, whole UTC days."""
    return (
        segmentation.unit is Unit.LEAD
        and not segmentation.filters
        and _midnight(entered_from)
        and _midnight(entered_to)
    )


_ACTIVE = "active"  # not a dimension's name
_ROLLUP = "rollup"  # nor this
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.cache
def _rollup_statement(dimension: str) -> CompoundSelect[Any]:
    """The rollup's answer for one breakdown dimension (or the total), as one statement:
    the funnel's ``funnel_rollups`` row (its definition and freshness), the counts of
    the period's whole months and of its partial months' days, and the leads still in
    a stage touched since ``:active_since``.

    Built once per dimension with bind parameters only, so SQLAlchemy memoises its cache
    key and compiled form: a request costs one round trip and no statement building.
    Open period ends are bound as the first and last representable dates.
    """
    months, days = table(FunnelStageMonthCount), table(FunnelStageCount)
    facts, rollups = table(LeadFunnelFact), table(FunnelRollup)
    funnel = bindparam("funnel", type_=String)
    wanted = (TOTAL, bindparam("dimension", type_=String))
    segment: ColumnElement[Any] = facts.c[dimension] if dimension != TOTAL else cast(null(), Text)

    def counted(counts: Table, *period: ColumnElement[bool]) -> Select[Any]:
        return (
            select(
                counts.c.dimension.label("kind"),
                counts.c.value,
                counts.c.furthest_position,
                counts.c.current_state,
                cast(func.sum(counts.c.units), BigInteger).label("units"),
            )
            .where(counts.c.funnel == funnel, counts.c.dimension.in_(wanted), *period)
            .group_by(
                counts.c.dimension,
                counts.c.value,
                counts.c.furthest_position,
                counts.c.current_state,
            )
        )

    day = days.c.entered_day
    return union_all(
        select(
            literal(_ROLLUP).label("kind"),
            cast(rollups.c.fingerprint, Text),
            cast(null(), Integer),
            cast(null(), String),
            cast(func.extract("epoch", rollups.c.aggregated_through) * 1_000_000, BigInteger),
        ).where(rollups.c.funnel == funnel),
        counted(
            months,
            months.c.entered_month >= bindparam("month_from", type_=Date),
            months.c.entered_month < bindparam("month_to", type_=Date),
        ),
        counted(
            days,
            or_(
                and_(
                    day >= bindparam("day_from", type_=Date),
                    day < bindparam("month_from", type_=Date),
                ),
                and_(
                    day >= bindparam("month_to", type_=Date),
                    day < bindparam("day_to", type_=Date),
                ),
            ),
        ),
        select(
            literal(_ACTIVE).label("kind"),
            segment,
            facts.c.furthest_position,
            cast(null(), String),
            cast(func.count(), BigInteger),
        )
        .where(
            facts.c.funnel == funnel,
            ~facts.c.exited,
            facts.c.last_touch_at >= bindparam("active_since", type_=DateTime(timezone=True)),
            facts.c.entered_at >= bindparam("entered_from", type_=DateTime(timezone=True)),
            facts.c.entered_at < bindparam("entered_to", type_=DateTime(timezone=True)),
        )
        .group_by(segment, facts.c.furthest_position),
    )


def _period_bounds(entered_from: datetime | None, entered_to: datetime | None) -> dict[str, Any]:
    """The bind parameters of a period on UTC midnights: its entry days [day_from,
    day_to), read as whole months [month_from, month_to) and the days around them."""
    day_from = entered_from.astimezone(UTC).date() if entered_from is not None else date.min
    day_to = entered_to.astimezone(UTC).date() if entered_to is not None else date.max
    month_from = day_from if day_from.day == 1 else _next_month(day_from)
    month_to = day_to.replace(day=1) if entered_to is not None else date.max
    if month_from >= month_to:  # no whole month: every day is read by day
        month_from = month_to = day_to
    return {
        "day_from": day_from,
        "month_from": month_from,
        "month_to": month_to,
        "day_to": day_to,
        "entered_from": entered_from or datetime.min.replace(tzinfo=UTC),
        "entered_to": entered_to or datetime.max.replace(tzinfo=UTC),
    }


def _next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


async def _rollup_tallies(
    session: AsyncSession | AsyncConnection,
    funnel: Funnel,
    segmentation: Segmentation,
    *,
    entered_from: datetime | None,
    entered_to: datetime | None,
    active_since: datetime,
) -> tuple[_Tally, dict[str | None, _Tally], datetime] | None:
    """The tallies from the rollup and how fresh it is; None if the funnel's rollup is
    missing or was computed with another definition."""
    dimension = str(segmentation.breakdown) if segmentation.breakdown is not None else TOTAL
    rows = await session.execute(
        _rollup_statement(dimension),
        {
            "funnel": funnel.name,
            "dimension": dimension,
            "active_since": active_since,
            **_period_bounds(entered_from, entered_to),
        },
    )
    total = _Tally(funnel)
    tallies: dict[str | None, _Tally] = {}
    aggregated_through: datetime | None = None
    fingerprint: str | None = None
    for kind, value, position, state, units in rows:
        if kind == _ROLLUP:
            fingerprint = value
            aggregated_through = _EPOCH + timedelta(microseconds=units)
            continue
        if kind == TOTAL:
            total.add(position, state, units, 0)
            continue
        tally = tallies.get(value)
        if tally is None:
            tally = tallies[value] = _Tally(funnel)
        if kind == _ACTIVE:
            total.add(position, None, 0, units)
            if segmentation.breakdown is not None:
                tally.add(position, None, 0, units)
        else:
            tally.add(position, state, units, 0)
    if fingerprint != funnel.fingerprint or aggregated_through is None:
        return None
    return total, tallies, aggregated_through


@dataclass(frozen=True)
class _Figures:
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
