"""How fast the stage engine's batch step applies touchpoints to PostgreSQL.

Measures `apply_batch` (store touchpoints, move leads, store offsets, one
transaction per batch) against a baseline in the same run: inserting the same
touchpoint rows alone, in the same batches (the storage floor). Prints events/s
for both and their ratio.

    .venv/bin/python bench/engine_batch.py [--events 20000] [--leads 2000] [--batch 500]

Needs the local PostgreSQL (`make services-up`); uses a throwaway database.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert

from leadstage.db.models import StoredTouchpoint
from leadstage.db.session import create_engine, create_session_factory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn, TouchpointType
from leadstage.funnels import load_presets
from leadstage.local import services
from leadstage.settings import EngineSettings
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch

B2B_SIX_STAGE = load_presets()["b2b-six-stage"]
# Changes these tests make are not published by any running engine.
OUTBOX_TOPIC = "tests.unpublished.lead-stage-changed.v1"
JOURNEY = [
    TouchpointType.PAGE_VIEW,
    TouchpointType.EMAIL_OPENED,
    TouchpointType.CONTENT_DOWNLOAD,
    TouchpointType.PAGE_VIEW,
    TouchpointType.DEMO_REQUESTED,
    TouchpointType.CALL,
    TouchpointType.MEETING_SCHEDULED,
    TouchpointType.DEAL_WON,
]


def generate(events: int, leads: int) -> list[Record]:
    rng = random.Random(42)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    step = {f"lead-{i}": 0 for i in range(leads)}
    records = []
    for offset in range(events):
        lead = f"lead-{rng.randrange(leads)}"
        kind = JOURNEY[min(step[lead], len(JOURNEY) - 1)]
        step[lead] += 1
        touchpoint = Touchpoint.accept(
            TouchpointIn(
                type=kind,
                lead_id=lead,
                occurred_at=start + timedelta(minutes=offset),
                properties={"page_url": "https://example.com/pricing"},
            ),
            source="bench",
            received_at=start,
        )
        records.append(Record("bench", 0, offset, lead.encode(), touchpoint.to_record()))
    return records


async def measure(url: str, records: list[Record], batch: int) -> tuple[float, float]:
    settings = EngineSettings(database_url=url)
    engine = create_engine(settings, application_name="bench")
    sessions = create_session_factory(engine)
    batches = [records[i : i + batch] for i in range(0, len(records), batch)]

    started = time.perf_counter()
    for chunk in batches:
        async with unit_of_work(sessions) as session:
            await apply_batch(
                session,
                chunk,
                consumer_group="bench",
                funnels=[B2B_SIX_STAGE],
                outbox_topic=OUTBOX_TOPIC,
            )
    engine_seconds = time.perf_counter() - started

    async with unit_of_work(sessions) as session:
        await session.execute(text("TRUNCATE touchpoints CASCADE"))
    started = time.perf_counter()
    for chunk in batches:
        rows = []
        for record in chunk:
            tp = Touchpoint.from_record(record.value)  # same parsing work as the engine
            rows.append(
                {
                    "event_id": tp.event_id,
                    "lead_key": tp.lead_key,
                    "type": tp.type,
                    "occurred_at": tp.occurred_at,
                    "received_at": tp.received_at,
                    "source": tp.source,
                    "payload": tp.model_dump(mode="json", exclude_none=True),
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                }
            )
        async with unit_of_work(sessions) as session:
            await session.execute(insert(StoredTouchpoint), rows)
    baseline_seconds = time.perf_counter() - started
    await engine.dispose()
    return engine_seconds, baseline_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--leads", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    postgres = services.local_postgres()
    database = f"bench_{secrets.token_hex(4)}"
    postgres.create_database(database)
    url = postgres.url(database)
    try:
        subprocess.run(
            [sys.executable, "-m", "leadstage", "migrate"],
            check=True,
            env={"LEADSTAGE_DATABASE_URL": url, "PATH": ""},
            capture_output=True,
        )
        records = generate(args.events, args.leads)
        engine_s, baseline_s = asyncio.run(measure(url, records, args.batch))
    finally:
        postgres.drop_database(database)
    engine_rate, baseline_rate = args.events / engine_s, args.events / baseline_s
    print(f"events={args.events} leads={args.leads} batch={args.batch}")
    print(f"apply_batch (state + history + offsets): {engine_rate:10,.0f} events/s")
    print(f"baseline (insert touchpoints only):      {baseline_rate:10,.0f} events/s")
    print(f"ratio engine/baseline: {engine_rate / baseline_rate:.2f}")


if __name__ == "__main__":
    main()
