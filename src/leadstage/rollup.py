"""The funnel summary rollup: per-lead facts and counts per funnel, day and segment,
kept equal to a recomputation from the stored transitions.

Writers *mark* the leads whose contribution may have changed
(:func:`mark_leads`, :func:`mark_account_contacts`, in the transaction of the change:
the engine's batch and merge sweep, ingest's account links and firmographics) or
*invalidate* a whole funnel (:func:`invalidate`, a replay's switch-over). A rollup
*round* (:func:`roll_up`, the engine's periodic task and ``leadstage rollup``):

1. takes a transaction-level advisory lock, so rounds run one at a time (two engine
   processes never apply deltas to the same counts concurrently);
2. rebuilds, set-based, each funnel with an active version whose ``funnel_rollups``
   row is missing or was computed with another definition;
3. takes up to ``limit`` marked leads (``DELETE ... FOR UPDATE SKIP LOCKED``),
   recomputes their facts from the current state (``lead_stages``, their
   ``lead_transitions``, their first touchpoint, ``lead_accounts``/``accounts``),
   compares them with the stored facts and applies the difference, -1 for the old
   contribution and +1 for the new, to ``funnel_stage_counts`` in key order, and the
   same deltas summed by month to ``funnel_stage_month_counts`` (a summary reads whole
   months there and only its partial months by day).

A round's cost follows the marked leads, not the stored history. The facts follow the
summary's definitions exactly (see ``leadstage_api.funnel_metrics`` and
``leadstage_api.segments``): entry is the first transition into the funnel, the
furthest stage is the furthest non-exit stage a transition reached, the current state
is ``lead_stages.stage``, firmographics come from the lead's account and channel,
campaign and source from its first stored touchpoint (by time, then source and event
id).

Each writer inserts marks of its own, one row per lead (migration 0017), with no
conflict to wait on: a round holds the marks it takes until it commits, and an upsert
of one of those leads waited for the whole round. A round cannot lose a change either:
the writer's own mark is uncommitted, so invisible to the round, until the change is
committed, and the round after that takes it. (Marks were ``ON CONFLICT DO UPDATE``
before, for the same guarantee with one row per lead; ``DO NOTHING`` would have lost
the change.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import (
    FunnelRollup,
    FunnelVersion,
    LeadFunnelFact,
)
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.firmographics import SIZE_BAND_FLOORS
from leadstage.funnels import Funnel
from leadstage.funnels.registry import from_registry

logger = logging.getLogger(__name__)

#: The breakdown dimensions the rollup counts by, in ``lead_funnel_facts`` column names
#: (the metrics API's ``Dimension`` values); '' is the total.
SEGMENT_COLUMNS = ("industry", "size_band", "country", "tier", "channel", "campaign", "source")
TOTAL = ""
DEFAULT_LIMIT = 5000
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('leadstage-rollup', 0))"


# -- Marking ------------------------------------------------------------------------------


async def mark_leads(session: AsyncSession, leads: Iterable[str]) -> None:
    """Mark leads for the next round, in the caller's transaction."""
    keys = sorted(set(leads))
    if not keys:
        return
    await session.execute(
        text("INSERT INTO rollup_dirty_leads (lead_key) SELECT unnest(CAST(:leads AS text[]))"),
        {"leads": keys},
    )


async def mark_account_contacts(session: AsyncSession, accounts: Iterable[str]) -> None:
    """Mark every contact of these accounts (their firmographics changed)."""
    ids = sorted(set(accounts))
    if not ids:
        return
    await session.execute(
        text(
            "INSERT INTO rollup_dirty_leads (lead_key)"
            " SELECT DISTINCT lead_id FROM lead_accounts"
            " WHERE account_id = ANY(CAST(:ids AS text[]))"
        ),
        {"ids": ids},
    )


async def invalidate(session: AsyncSession, funnel: str) -> None:
    """Every lead of the funnel may have changed (a replay replaced them): the summary
    reads the raw tables until the next round has rebuilt the funnel."""
    # The rounds' lock: a round in progress finishes first, and the next one sees the
    # replaced rows (a rebuild reading the rows from before could not be told apart).
    await session.execute(text(_LOCK_SQL))
    await session.execute(delete(FunnelRollup).where(FunnelRollup.funnel == funnel))


# -- Computing facts -----------------------------------------------------------------------

_SIZE_BAND = (
    "CASE "
    + " ".join(
        f"WHEN a.employee_count >= :floor_{n} THEN :band_{n}" for n in range(len(SIZE_BAND_FLOORS))
    )
    + " END"
)
_SIZE_BAND_PARAMS = {
    **{f"floor_{n}": floor for n, (_, floor) in enumerate(SIZE_BAND_FLOORS)},
    **{f"band_{n}": str(band) for n, (band, _) in enumerate(SIZE_BAND_FLOORS)},
}
_FACT_COLUMNS = (
    "lead_key",
    "entered_at",
    "entered_day",
    "furthest_position",
    "current_state",
    "last_touch_at",
    "exited",
    "account_id",
    *SEGMENT_COLUMNS,
)


def _facts_sql(*, every_lead: bool) -> str:
    """Each lead's facts in one funnel: for the leads ``:leads``, or every lead (a rebuild,
    with the first touches from one ordered pass over the touchpoints)."""
    only = "" if every_lead else " AND t.lead_key = ANY(CAST(:leads AS text[]))"
    if every_lead:
        first_touch = (
            # Qualified: a bare ``source`` in ORDER BY would name the output column
            # (the UTM source) rather than the touchpoint's source, and break ties on
            # ``occurred_at`` differently from the incremental path and the raw reports.
            " LEFT JOIN (SELECT DISTINCT ON (tp.lead_key) tp.lead_key,"
            "  tp.payload ->> 'channel' AS channel, tp.payload #>> '{utm,name}' AS campaign,"
            "  tp.payload #>> '{utm,source}' AS source"
            "  FROM touchpoints tp"
            "  ORDER BY tp.lead_key, tp.occurred_at, tp.source, tp.event_id) ft"
            " ON ft.lead_key = m.lead_key"
        )
    else:
        first_touch = (
            " LEFT JOIN LATERAL (SELECT tp.payload ->> 'channel' AS channel,"
            "  tp.payload #>> '{utm,name}' AS campaign,"
            "  tp.payload #>> '{utm,source}' AS source"
            "  FROM touchpoints tp WHERE tp.lead_key = m.lead_key"
            "  ORDER BY tp.occurred_at, tp.source, tp.event_id LIMIT 1) ft ON true"
        )
    return (
        "WITH moves AS ("  # noqa: S608 - constants only, values bound
        " SELECT t.lead_key, min(t.occurred_at) AS entered_at,"
        "  max(array_position(CAST(:stages AS text[]), t.to_stage::text)) - 1"
        "   AS furthest_position"
        " FROM lead_transitions t WHERE t.funnel = :funnel" + only + " GROUP BY t.lead_key)"
        " SELECT m.lead_key, m.entered_at, (m.entered_at AT TIME ZONE 'UTC')::date AS entered_day,"
        "  m.furthest_position, s.stage AS current_state, s.last_touch_at,"
        "  coalesce(s.stage = ANY(CAST(:exits AS text[])), true) AS exited,"
        "  la.account_id, a.industry, " + _SIZE_BAND + " AS size_band,"
        "  a.country, a.tier::text AS tier, ft.channel, ft.campaign, ft.source"
        " FROM moves m"
        " JOIN lead_stages s ON s.funnel = :funnel AND s.lead_key = m.lead_key"
        " LEFT JOIN lead_accounts la ON la.lead_id = m.lead_key"
        " LEFT JOIN accounts a ON a.id = la.account_id"
        + first_touch
        + " WHERE m.furthest_position IS NOT NULL"
    )


def _funnel_params(funnel: Funnel) -> dict[str, Any]:
    return {
        "funnel": funnel.name,
        "stages": list(funnel.stages),
        "exits": sorted(funnel.exits),
        **_SIZE_BAND_PARAMS,
    }


# -- Rounds ---------------------------------------------------------------------------------


@dataclass
class RollupOutcome:
    """What one round did."""

    taken: int = 0  # marked leads taken
    marks: int = 0  # marks taken (a lead marked by several writers has several)
    changed: int = 0  # (funnel, lead) facts written or removed
    rebuilt: list[str] = field(default_factory=list)  # funnels rebuilt from scratch


_DEFINITIONS: dict[str, Funnel] = {}  # fingerprint -> parsed definition


async def _maintained_funnels(session: AsyncSession) -> list[tuple[Funnel, int]]:
    """Every funnel with an active version in the registry, at that version."""
    rows = await session.scalars(
        select(FunnelVersion).where(FunnelVersion.status == "active").order_by(FunnelVersion.funnel)
    )
    funnels: list[tuple[Funnel, int]] = []
    for row in rows:
        definition = _DEFINITIONS.get(row.fingerprint)
        if definition is None:
            definition = _DEFINITIONS[row.fingerprint] = from_registry(row)
        funnels.append((definition, row.version))
    return funnels


async def roll_up(session: AsyncSession, *, limit: int = DEFAULT_LIMIT) -> RollupOutcome:
    """One round, in the caller's transaction (see the module's description)."""
    await session.execute(text(_LOCK_SQL))
    outcome = RollupOutcome()
    started = await session.scalar(select(func.now()))
    funnels = await _maintained_funnels(session)
    stored = {row.funnel: row.fingerprint for row in await session.scalars(select(FunnelRollup))}
    for funnel, version in funnels:
        if stored.get(funnel.name) != funnel.fingerprint:
            await _rebuild(session, funnel, version)
            outcome.rebuilt.append(funnel.name)
    # Marks, not leads: a lead marked by several writers has several rows.
    marks = list(
        await session.scalars(
            text(
                "DELETE FROM rollup_dirty_leads WHERE id IN ("
                " SELECT id FROM rollup_dirty_leads"
                " FOR UPDATE SKIP LOCKED LIMIT :limit)"
                " RETURNING lead_key"
            ),
            {"limit": limit},
        )
    )
    taken = sorted(set(marks))
    outcome.taken, outcome.marks = len(taken), len(marks)
    if taken:
        for funnel, _ in funnels:
            outcome.changed += await _refresh(session, funnel, taken)
    if outcome.marks < limit:  # nothing was left behind: all committed before is counted
        await session.execute(
            update(FunnelRollup)
            .where(FunnelRollup.funnel.in_([f.name for f, _ in funnels]))
            .values(aggregated_through=started)
        )
    return outcome


async def _rebuild(session: AsyncSession, funnel: Funnel, version: int) -> None:
    """Recompute a funnel's facts and counts from scratch, set-based."""
    params = _funnel_params(funnel)
    await session.execute(delete(LeadFunnelFact).where(LeadFunnelFact.funnel == funnel.name))
    for counts in ("funnel_stage_counts", "funnel_stage_month_counts"):
        await session.execute(
            text(f"DELETE FROM {counts} WHERE funnel = :funnel"),  # noqa: S608 - constants only
            {"funnel": funnel.name},
        )
    await session.execute(
        text(
            f"INSERT INTO lead_funnel_facts (funnel, {', '.join(_FACT_COLUMNS)})"  # noqa: S608 - constants only, values bound
            f" SELECT :funnel, {', '.join(_FACT_COLUMNS)} FROM ({_facts_sql(every_lead=True)}) f"
        ),
        params,
    )
    dimensions = ", ".join(
        ["(:total, NULL::text)", *(f"('{column}', f.{column})" for column in SEGMENT_COLUMNS)]
    )
    await session.execute(
        text(
            "INSERT INTO funnel_stage_counts"  # noqa: S608 - constants only, values bound
            " (funnel, dimension, entered_day, value, furthest_position, current_state, units)"
            " SELECT f.funnel, d.dimension, f.entered_day, d.value, f.furthest_position,"
            "  f.current_state, count(*)"
            " FROM lead_funnel_facts f"
            f" CROSS JOIN LATERAL (VALUES {dimensions}) d(dimension, value)"
            " WHERE f.funnel = :funnel GROUP BY 1, 2, 3, 4, 5, 6"
        ),
        {"funnel": funnel.name, "total": TOTAL},
    )
    await session.execute(
        text(
            "INSERT INTO funnel_stage_month_counts"
            " (funnel, dimension, entered_month, value, furthest_position, current_state, units)"
            " SELECT funnel, dimension, date_trunc('month', entered_day)::date, value,"
            "  furthest_position, current_state, sum(units)"
            " FROM funnel_stage_counts WHERE funnel = :funnel GROUP BY 1, 2, 3, 4, 5, 6"
        ),
        {"funnel": funnel.name},
    )
    statement = insert(FunnelRollup)
    await session.execute(
        statement.values(
            funnel=funnel.name,
            funnel_version=version,
            fingerprint=funnel.fingerprint,
            rebuilt_at=func.now(),
            aggregated_through=func.now(),
        ).on_conflict_do_update(
            index_elements=["funnel"],
            set_={
                "funnel_version": statement.excluded.funnel_version,
                "fingerprint": statement.excluded.fingerprint,
                "rebuilt_at": statement.excluded.rebuilt_at,
                "aggregated_through": statement.excluded.aggregated_through,
            },
        )
    )
    logger.info("rolled up funnel %s version %s from scratch", funnel.name, version)


async def _refresh(session: AsyncSession, funnel: Funnel, leads: Sequence[str]) -> int:
    """Recompute these leads' facts in one funnel and apply the difference to its counts;
    returns the number of leads whose facts changed.

    One statement (``_REFRESH_SQL``) compares the recomputed facts with the stored ones,
    writes the changed facts, removes the facts of leads gone from the funnel, adds the
    count deltas to the day counts and, summed by month, to the month counts, and
    returns the count rows that reached 0, which a second statement deletes. Nothing
    per lead travels to this process: fetching both sets of facts and comparing and
    summing them here, two dictionaries of fifteen columns per lead and sixteen count
    keys per changed lead, was most of a round's CPU, and a sixth of the engine's under
    a steady load.
    """
    rows = (
        await session.execute(
            text(_REFRESH_SQL),
            {**_funnel_params(funnel), "leads": list(leads), "total": TOTAL},
        )
    ).all()
    for counts, period in _COUNTS_TABLES:
        emptied = [row for row in rows if row.counts == counts]
        if emptied:
            await session.execute(
                text(_delete_emptied_sql(counts, period)),
                {
                    "funnel": funnel.name,
                    "dimensions": [row.dimension for row in emptied],
                    "periods": [row.period for row in emptied],
                    "vals": [row.value for row in emptied],
                    "furthest": [row.furthest_position for row in emptied],
                    "states": [row.current_state for row in emptied],
                },
            )
    return int(rows[0].changed)


#: The count tables a round keeps, with their period column (constants of this module).
_COUNTS_TABLES = (
    ("funnel_stage_counts", "entered_day"),
    ("funnel_stage_month_counts", "entered_month"),
)
_COUNT_KEY = "dimension, {period}, value, furthest_position, current_state"


def _refresh_sql() -> str:
    """The statement of :func:`_refresh` (see there)."""
    facts = ", ".join(_FACT_COLUMNS[1:])  # lead_key aside
    new, old = (", ".join(f"{side}.{column}" for column in _FACT_COLUMNS[1:]) for side in "no")
    stored = ", ".join(f"{column} = excluded.{column}" for column in _FACT_COLUMNS[1:])
    # What a lead's count keys are made of: a lead whose facts changed in other columns
    # only (its last touch, most often) adds to the same counts as before.
    counted = ("entered_day", "furthest_position", "current_state", *SEGMENT_COLUMNS)
    new_counted, old_counted = (
        ", ".join(f"{side}.{column}" for column in counted) for side in "no"
    )
    dimensions = ", ".join(
        ["(:total, NULL::text)", *(f"('{column}', x.{column})" for column in SEGMENT_COLUMNS)]
    )
    day_key, month_key = (_COUNT_KEY.format(period=period) for _, period in _COUNTS_TABLES)
    return (
        f"WITH new AS ({_facts_sql(every_lead=False)}),"  # noqa: S608 - constants only, values bound
        f" old AS (SELECT lead_key, {facts} FROM lead_funnel_facts"
        "  WHERE funnel = :funnel AND lead_key = ANY(CAST(:leads AS text[])) FOR UPDATE),"
        " changed AS (SELECT coalesce(n.lead_key, o.lead_key) AS lead_key,"
        "  n.lead_key IS NULL AS gone,"
        f"  ({new_counted}) IS DISTINCT FROM ({old_counted}) AS moved"
        "  FROM new n FULL JOIN old o ON o.lead_key = n.lead_key"
        f"  WHERE ({new}) IS DISTINCT FROM ({old})),"
        f" written AS (INSERT INTO lead_funnel_facts (funnel, lead_key, {facts})"
        f"  SELECT :funnel, n.lead_key, {new} FROM new n JOIN changed c USING (lead_key)"
        "  ORDER BY n.lead_key"
        f"  ON CONFLICT (funnel, lead_key) DO UPDATE SET {stored}),"
        " removed AS (DELETE FROM lead_funnel_facts f USING changed c"
        "  WHERE f.funnel = :funnel AND f.lead_key = c.lead_key AND c.gone),"
        # A lead that moved takes its old contribution off the counts and adds its new one.
        f" contributions AS (SELECT -1 AS sign, {old_counted}"
        "  FROM old o JOIN changed c USING (lead_key) WHERE c.moved"
        f"  UNION ALL SELECT 1, {new_counted}"
        "  FROM new n JOIN changed c USING (lead_key) WHERE c.moved),"
        " deltas AS (SELECT d.dimension, x.entered_day, d.value, x.furthest_position,"
        "  x.current_state, sum(x.sign) AS units"
        f"  FROM contributions x CROSS JOIN LATERAL (VALUES {dimensions}) d(dimension, value)"
        "  GROUP BY 1, 2, 3, 4, 5 HAVING sum(x.sign) <> 0),"
        " days AS (INSERT INTO funnel_stage_counts"
        f"  (funnel, {day_key}, units) SELECT :funnel, {day_key}, units FROM deltas"
        # Count rows are written in key order (NULL values first).
        "  ORDER BY 2, 3, 4 NULLS FIRST, 5, 6 NULLS FIRST"
        f"  ON CONFLICT (funnel, {day_key})"
        "  DO UPDATE SET units = funnel_stage_counts.units + excluded.units"
        f"  RETURNING {day_key}, units),"
        " months AS (INSERT INTO funnel_stage_month_counts"
        f"  (funnel, {month_key}, units)"
        "  SELECT :funnel, dimension, date_trunc('month', entered_day)::date, value,"
        "   furthest_position, current_state, sum(units) FROM deltas"
        "  GROUP BY 2, 3, 4, 5, 6 HAVING sum(units) <> 0"
        "  ORDER BY 2, 3, 4 NULLS FIRST, 5, 6 NULLS FIRST"
        f"  ON CONFLICT (funnel, {month_key})"
        "  DO UPDATE SET units = funnel_stage_month_counts.units + excluded.units"
        f"  RETURNING {month_key}, units),"
        # The count rows that reached 0, for the statement after this one to delete (this
        # one cannot: its parts all see the rows as they were before it).
        " emptied AS (SELECT 'funnel_stage_counts' AS counts, dimension,"
        "  entered_day AS period, value, furthest_position, current_state"
        "  FROM days WHERE units = 0"
        "  UNION ALL SELECT 'funnel_stage_month_counts', dimension, entered_month, value,"
        "  furthest_position, current_state FROM months WHERE units = 0)"
        # One row at least (the count of changed leads), and one per emptied count row.
        " SELECT (SELECT count(*) FROM changed) AS changed, e.*"
        " FROM (SELECT) AS one LEFT JOIN emptied e ON true"
    )


_REFRESH_SQL = _refresh_sql()


def _delete_emptied_sql(counts: str, period: str) -> str:
    """Delete the given count rows of one counts table if they hold 0 units."""
    return (
        f"DELETE FROM {counts} c USING unnest(CAST(:dimensions AS text[]),"  # noqa: S608 - constants only, values bound
        " CAST(:periods AS date[]), CAST(:vals AS text[]), CAST(:furthest AS int[]),"
        " CAST(:states AS text[])) AS z(dimension, period, value, furthest_position,"
        " current_state)"
        " WHERE c.funnel = :funnel AND c.units = 0"
        f" AND c.dimension = z.dimension AND c.{period} = z.period"
        " AND c.value IS NOT DISTINCT FROM z.value"
        " AND c.furthest_position = z.furthest_position"
        " AND c.current_state IS NOT DISTINCT FROM z.current_state"
    )


# -- Running --------------------------------------------------------------------------------


async def drain(
    sessions: SessionFactory, *, limit: int = DEFAULT_LIMIT, rebuild: bool = False
) -> RollupOutcome:
    """Rounds until no marked lead is left (each its own transaction); ``rebuild``
    first rebuilds every funnel from scratch (a backfill)."""
    total = RollupOutcome()
    if rebuild:
        async with unit_of_work(sessions) as session:
            await session.execute(text(_LOCK_SQL))
            await session.execute(delete(FunnelRollup))
    while True:
        async with unit_of_work(sessions) as session:
            outcome = await roll_up(session, limit=limit)
        total.taken += outcome.taken
        total.marks += outcome.marks
        total.changed += outcome.changed
        total.rebuilt.extend(outcome.rebuilt)
        if outcome.marks < limit:
            return total


async def roll_up_forever(
    sessions: SessionFactory,
    stopping: asyncio.Event,
    *,
    every_seconds: float,
    limit: int = DEFAULT_LIMIT,
) -> None:
    """The engine's periodic task: a round every ``every_seconds`` (at once again while
    rounds come back full) until ``stopping`` is set."""
    while not stopping.is_set():
        full = False
        try:
            async with unit_of_work(sessions) as session:
                outcome = await roll_up(session, limit=limit)
            full = outcome.marks >= limit
            if outcome.rebuilt:
                logger.info("rollup rebuilt %s", ", ".join(outcome.rebuilt))
        except Exception:
            # Not fatal: the marks stay, and the summary reports how fresh it is.
            logger.exception("funnel rollup round failed; retrying later")
        if full:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=every_seconds)
