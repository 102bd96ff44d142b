"""Moves between states (stages and exits) per period: who came in, who left, and to where.

Every recorded transition in [from, to) is one *entry* into its ``to_stage`` and (unless
it entered the funnel) one *departure* from its ``from_stage``, in the period of its
``occurred_at``. Departures are split by kind: into an exit (``exited``), back to an
earlier stage (``regressed``), looping back (``looped``), forward (``advanced``,
``skipped``), and out of an exit back into the funnel (``reentered``). ``destinations``
answers "who left Engagement last month, and to where": departures by the state moved
to. Counts are moves; ``leads_left`` counts distinct leads. Per lead only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import LeadTransition
from leadstage.funnels import Funnel
from leadstage_api.analytics_schemas import (
    StatePeriod,
    StateTransitions,
    TransitionsFigures,
    TransitionsReport,
    TransitionsSegment,
)
from leadstage_api.periods import Period, Range, period_start, period_starts
from leadstage_api.segments import Segmentation, members, ordered_segments


class _States:
    """Move counts of one population: per state and period, by kind."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, datetime], Counter[str]] = defaultdict(Counter)
        self.departures: dict[tuple[str, datetime], Counter[str]] = defaultdict(Counter)
        self.destinations: dict[str, Counter[str]] = defaultdict(Counter)
        self.leads_left: dict[str, int] = {}

    def add(self, at: datetime, origin: str | None, target: str, kind: str, moves: int) -> None:
        self.arrivals[(target, at)][kind] += moves
        if origin is not None:
            self.departures[(origin, at)][kind] += moves
            self.destinations[origin][target] += moves


async def transitions(
    session: AsyncSession,
    funnel: Funnel,
    *,
    span: Range,
    period: Period,
    state: str | None,
    segmentation: Segmentation,
) -> TransitionsReport:
    starts = period_starts(span, period)
    population = members(funnel, segmentation)
    t = LeadTransition
    conditions = [t.funnel == funnel.name, t.occurred_at >= span.start, t.occurred_at < span.end]
    if state is not None:
        conditions.append(or_(t.to_stage == state, t.from_stage == state))
    moves = (
        select(
            population.c.segment,
            period_start(t.occurred_at, period).label("period"),
            t.from_stage,
            t.to_stage,
            t.kind,
            t.lead_key,
        )
        .join(population, population.c.lead_key == t.lead_key)
        .where(*conditions)
        .subquery("moves")
    )
    m = moves.c
    total = _States()
    by_segment: dict[str | None, _States] = defaultdict(_States)
    for segment, at, origin, target, kind, count in await session.execute(
        select(m.segment, m.period, m.from_stage, m.to_stage, m.kind, func.count()).group_by(
            m.segment, m.period, m.from_stage, m.to_stage, m.kind
        )
    ):
        for states in (total, by_segment[segment]):
            states.add(at, origin, target, kind, count)
    for origin, segment, grouped_out, leads in await session.execute(
        select(m.from_stage, m.segment, func.grouping(m.segment), func.count(m.lead_key.distinct()))
        .where(m.from_stage.is_not(None))
        .group_by(func.grouping_sets(tuple_(m.from_stage, m.segment), tuple_(m.from_stage)))
    ):
        (total if grouped_out else by_segment[segment]).leads_left[origin] = leads

    names = [state] if state is not None else [*funnel.stages, *sorted(funnel.exits)]
    segments, omitted = ordered_segments(by_segment)
    return TransitionsReport(
        funnel=funnel.name,
        funnel_version=funnel.version,
        range_from=span.start,
        range_to=span.end,
        **segmentation.echo(),
        segments_omitted=omitted,
        period=period,
        states=_figures(funnel, total, names, starts).states,
        segments=None
        if segmentation.breakdown is None
        else [
            TransitionsSegment(value=value, states=_figures(funnel, states, names, starts).states)
            for value, states in segments
        ],
    )


def _figures(
    funnel: Funnel, counts: _States, names: list[str], starts: list[datetime]
) -> TransitionsFigures:
    result = []
    for name in names:
        periods = []
        for start in starts:
            arrivals = counts.arrivals.get((name, start), Counter())
            departures = counts.departures.get((name, start), Counter())
            periods.append(
                StatePeriod(
                    period_start=start,
                    entries=arrivals.total(),
                    departures=departures.total(),
                    exits=departures["exited"],
                    regressions=departures["regressed"],
                    loops=departures["looped"],
                    arrivals_by_kind=dict(sorted(arrivals.items())),
                    departures_by_kind=dict(sorted(departures.items())),
                )
            )
        result.append(
            StateTransitions(
                state=name,
                kind="exit" if name in funnel.exits else "stage",
                entries=sum(p.entries for p in periods),
                departures=sum(p.departures for p in periods),
                leads_left=counts.leads_left.get(name, 0),
                destinations=dict(sorted(counts.destinations.get(name, Counter()).items())),
                periods=periods,
            )
        )
    return TransitionsFigures(states=result)
