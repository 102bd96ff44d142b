"""A funnel rollup round in process, on bench/engine.py's data: CPU per marked lead.

The stage engine marks every lead a batch touched, and its periodic rollup round
recomputes those leads' facts and moves the funnel counts by the difference
(`leadstage.rollup`). This script builds the state with the engine's own batch step
(both default funnels, accounts), rolls it all up once, and then measures rounds: before
each, ``--round-leads`` random leads are marked, and their stored facts are aged by a
second, as a new touch (a later ``last_touch_at``) would leave them. Per marked lead:
- the wall clock;
- this process's CPU;
- PostgreSQL's CPU (every PostgreSQL process's, from ``/proc``).

The baseline, in the same run: the same leads' facts recomputed alone, the one query
a round cannot do without (the floor of a round).

    .venv/bin/python bench/rollup.py [--events 60000] [--leads 6000] [--accounts 600]
        [--rounds 10] [--round-leads 2000]

Needs the local PostgreSQL (`make services-up`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import time
from collections.abc import Sequence

import engine as dataset  # bench/engine.py: the generated journeys and accounts
from engine_step import Measured, build_records, migrated_database, run_step
from sqlalchemy import text

from leadstage.db.session import SessionFactory, create_engine, create_session_factory
from leadstage.db.session import unit_of_work as transaction
from leadstage.funnels import load_presets
from leadstage.gc_tuning import tune_garbage_collector
from leadstage.local import services
from leadstage.rollup import _facts_sql, _funnel_params, drain, mark_leads, roll_up
from leadstage.settings import EngineSettings
from leadstage.transport.base import Record
from leadstage_engine.versions import register_all

FUNNELS = [load_presets()["b2b-six-stage"], load_presets()["aida"]]  # as run_step's


class Totals:
    """Wall clock, this process's CPU and PostgreSQL's CPU summed over several blocks."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.postgres = 0.0

    def add(self, block: Measured) -> None:
        self.wall += block.wall
        self.cpu += block.cpu
        self.postgres += block.postgres

    def line(self, label: str, leads: int) -> str:
        return (
            f"{label}: {leads:,} marked leads in {self.wall:.2f}s = {leads / self.wall:,.0f}/s;"
            f" CPU per lead {self.cpu / leads * 1e6:.0f} us,"
            f" PostgreSQL CPU per lead {self.postgres / leads * 1e6:.0f} us"
        )


async def age_and_mark(sessions: SessionFactory, leads: Sequence[str]) -> None:
    """What a touch leaves for the next round: the leads marked, their facts stale."""
    async with transaction(sessions) as session:
        await session.execute(
            text(
                "UPDATE lead_funnel_facts SET last_touch_at = last_touch_at - interval '1 second'"
                " WHERE lead_key = ANY(CAST(:leads AS text[]))"
            ),
            {"leads": list(leads)},
        )
        await mark_leads(session, leads)


async def facts_alone(sessions: SessionFactory, leads: Sequence[str]) -> None:
    """The baseline: the leads' facts recomputed, in every maintained funnel."""
    async with transaction(sessions) as session:
        for funnel in FUNNELS:
            rows = await session.execute(
                text(_facts_sql(every_lead=False)), {**_funnel_params(funnel), "leads": leads}
            )
            rows.all()


async def measure(args: argparse.Namespace, url: str, records: Sequence[Record]) -> None:
    batches = [records[i : i + 500] for i in range(0, len(records), 500)]
    engine = create_engine(EngineSettings(database_url=url), application_name="bench")
    sessions = create_session_factory(engine)
    try:
        began = time.perf_counter()
        async with transaction(sessions) as session:  # as the engine does at its start
            await register_all(session, FUNNELS, may_activate=True)
        await run_step(sessions, batches, None)
        await drain(sessions)
        print(f"state built and rolled up in {time.perf_counter() - began:.1f}s")
        tune_garbage_collector()  # as the engine process does once it has started
        async with transaction(sessions) as session:
            keys = list(
                await session.scalars(text("SELECT DISTINCT lead_key FROM lead_funnel_facts"))
            )
        rng = random.Random(5)
        rounds, floors = Totals(), Totals()
        marked = 0
        for _ in range(args.rounds):
            leads = sorted(rng.sample(keys, min(args.round_leads, len(keys))))
            marked += len(leads)
            await age_and_mark(sessions, leads)
            with Measured(len(leads)) as round_:
                async with transaction(sessions) as session:
                    outcome = await roll_up(session, limit=len(leads))
            if outcome.taken != len(leads):
                raise RuntimeError(f"the round took {outcome.taken} leads, not {len(leads)}")
            rounds.add(round_)
            with Measured(len(leads)) as floor:
                await facts_alone(sessions, leads)
            floors.add(floor)
    finally:
        await engine.dispose()
    print(
        f"events={args.events:,} leads={args.leads:,} accounts={args.accounts:,}"
        f" rounds={args.rounds} of {args.round_leads:,} marked leads, two funnels"
    )
    print(rounds.line("rollup round (roll_up)", marked))
    print(floors.line("baseline (the facts query alone)", marked))
    print(f"ratio round / baseline (wall): {rounds.wall / floors.wall:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--leads", type=int, default=6_000)
    parser.add_argument("--accounts", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--round-leads", type=int, default=2_000)
    args = parser.parse_args()

    postgres = services.local_postgres()
    database = f"bench_rollup_{secrets.token_hex(4)}"
    try:
        url = migrated_database(database)
        records, data = build_records(args.events, args.leads, args.accounts)
        dataset.seed_accounts(url.replace("+asyncpg", ""), data)
        asyncio.run(measure(args, url, records))
    finally:
        postgres.drop_database(database)


if __name__ == "__main__":
    main()
