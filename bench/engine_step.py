"""The stage engine's batch step in process, on bench/engine.py's data: CPU per event.

`bench/engine.py` measures the whole engine from Kafka; this script isolates the
batch step (`apply_batch`, both default funnels, accounts, outbox) so that its CPU
can be compared between two versions of the code, and profiled. It runs the
generated records through `apply_batch` in batches, as the consumer would hand them
over, against a throwaway database. The first ``--skip`` events only warm the state
up (leads with history, accounts with contacts); the rest are measured:
- events/s (wall clock);
- the engine's CPU per event (this process's CPU time);
- PostgreSQL's CPU per event (every PostgreSQL process's CPU time, from ``/proc``).

The baseline, in the same run: the same measured records stored by the engine's own
touchpoint insert alone (parsing included), the storage floor of this data.

    .venv/bin/python bench/engine_step.py [--events 60000] [--leads 6000] [--accounts 600]
        [--skip 10000] [--batch 500] [--profile FILE]

``--profile FILE`` writes a cProfile of the measured part (it slows the step down; its
figures are not comparable with a run without it). Needs the local PostgreSQL
(`make services-up`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import engine as dataset  # bench/engine.py: the generated journeys and accounts

from leadstage.db.session import SessionFactory, create_engine, create_session_factory
from leadstage.db.session import unit_of_work as transaction
from leadstage.funnels import load_presets
from leadstage.gc_tuning import tune_garbage_collector
from leadstage.local import services
from leadstage.settings import EngineSettings
from leadstage.transport.base import Record
from leadstage_engine.processing import _store_touchpoints, apply_batch, parse_records

PARTITIONS = 6


def postgres_cpu_ticks() -> dict[int, int]:
    """CPU time (clock ticks) of every PostgreSQL process on the machine, by pid."""
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    return ticks


def postgres_cpu_since(before: dict[int, int]) -> float:
    """PostgreSQL's CPU seconds since ``before``, over the processes alive now (a
    process that exited meanwhile, such as an autovacuum worker, is left out rather
    than subtracted)."""
    now = postgres_cpu_ticks()
    used = sum(ticks - before.get(pid, 0) for pid, ticks in now.items())
    return used / os.sysconf("SC_CLK_TCK")


def build_records(events: int, leads: int, accounts: int) -> tuple[list[Record], dataset.Dataset]:
    data = dataset.generate(events, leads, accounts, 0.005)
    next_offsets: dict[int, int] = {}
    out = []
    for record in dataset.records(data, random.Random(11)):
        partition = int.from_bytes(record.key or b"", "big") % PARTITIONS
        offset = next_offsets.get(partition, 0)
        next_offsets[partition] = offset + 1
        out.append(Record("bench.touchpoints", partition, offset, record.key, record.value))
    return out, data


def migrated_database(name: str) -> str:
    postgres = services.local_postgres()
    postgres.create_database(name)
    url = postgres.url(name)
    subprocess.run(
        [sys.executable, "-m", "leadstage", "migrate"],
        env={**os.environ, "LEADSTAGE_DATABASE_URL": url},
        check=True,
        capture_output=True,
    )
    return url


class Measured:
    """Wall clock, this process's CPU and PostgreSQL's CPU over a ``with`` block that
    handles ``events`` events."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.wall = self.cpu = self.postgres = 0.0

    def __enter__(self) -> Measured:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._postgres = postgres_cpu_ticks()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.postgres = postgres_cpu_since(self._postgres)

    def line(self, label: str) -> str:
        return (
            f"{label}: {self.events:,} events in {self.wall:.2f}s = {self.rate:,.0f}/s;"
            f" CPU per event {self.cpu / self.events * 1e6:.0f} us,"
            f" PostgreSQL CPU per event {self.postgres / self.events * 1e6:.0f} us"
        )

    @property
    def rate(self) -> float:
        return self.events / self.wall


async def run_step(
    sessions: SessionFactory, batches: Sequence[Sequence[Record]], profile: cProfile.Profile | None
) -> None:
    funnels = [load_presets()["b2b-six-stage"], load_presets()["aida"]]
    for batch in batches:
        if profile is not None:
            profile.enable()
        async with transaction(sessions) as session:
            await apply_batch(
                session,
                batch,
                consumer_group="bench-step",
                funnels=funnels,
                outbox_topic="bench.unpublished.lead-stage-changed.v1",
                account_topic="bench.unpublished.account-stage-changed.v1",
            )
        if profile is not None:
            profile.disable()


async def run_baseline(sessions: SessionFactory, batches: Sequence[Sequence[Record]]) -> None:
    for batch in batches:
        async with transaction(sessions) as session:
            parsed, _ = parse_records(batch)
            await _store_touchpoints(session, parsed)


async def measure(
    args: argparse.Namespace, records: Sequence[Record], step_url: str, floor_url: str
) -> None:
    batches = [records[i : i + args.batch] for i in range(0, len(records), args.batch)]
    warm_up, measured = batches[: args.skip // args.batch], batches[args.skip // args.batch :]
    count = sum(len(batch) for batch in measured)
    step_engine = create_engine(EngineSettings(database_url=step_url), application_name="bench")
    floor_engine = create_engine(EngineSettings(database_url=floor_url), application_name="bench")
    try:
        await run_step(create_session_factory(step_engine), warm_up, None)
        tune_garbage_collector()  # as the engine process does once it has started
        profile = cProfile.Profile() if args.profile else None
        with Measured(count) as step:
            await run_step(create_session_factory(step_engine), measured, profile)
        with Measured(count) as floor:
            await run_baseline(create_session_factory(floor_engine), measured)
    finally:
        await step_engine.dispose()
        await floor_engine.dispose()
    if profile is not None:
        profile.dump_stats(args.profile)
    print(
        f"events={args.events:,} leads={args.leads:,} accounts={args.accounts:,}"
        f" batch={args.batch} measured after the first {len(warm_up) * args.batch:,}"
    )
    print(step.line("batch step (apply_batch)"))
    print(floor.line("baseline (touchpoint insert alone)"))
    print(f"ratio batch step / baseline: {step.rate / floor.rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--leads", type=int, default=6_000)
    parser.add_argument("--accounts", type=int, default=600)
    parser.add_argument("--skip", type=int, default=10_000, help="warm-up events, not measured")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--profile", default="", help="write a cProfile of the measured part")
    args = parser.parse_args()

    postgres = services.local_postgres()
    run_id = secrets.token_hex(4)
    step_db, floor_db = f"bench_step_{run_id}", f"bench_step_floor_{run_id}"
    records, data = build_records(args.events, args.leads, args.accounts)
    try:
        step_url, floor_url = migrated_database(step_db), migrated_database(floor_db)
        dataset.seed_accounts(step_url.replace("+asyncpg", ""), data)
        asyncio.run(measure(args, records, step_url, floor_url))
    finally:
        postgres.drop_database(step_db)
        postgres.drop_database(floor_db)


if __name__ == "__main__":
    main()
