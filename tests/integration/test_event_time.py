"""Event time, not arrival time: however events arrive (late, shuffled, split into any
batches, redelivered), the lead's state and history equal processing them in time order."""

from __future__ import annotations

import asyncio
import random
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from leadstage.db.models import LeadStage, LeadTransition
from leadstage.db.session import create_engine, create_session_factory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch
from tests.conftest import Environment

B2B_SIX_STAGE = load_presets()["b2b-six-stage"]
# Changes these tests make are not published by any running engine.
OUTBOX_TOPIC = "tests.unpublished.lead-stage-changed.v1"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
TYPES = [
    "page_view",
    "content_download",
    "demo_requested",
    "call",
    "meeting_scheduled",
    "deal_won",
    "deal_lost",
    "email_opened",
    "churned",
]


def record(lead: str, n: int, event_type: str, minute: int) -> Record:
    touchpoint = Touchpoint.accept(
        TouchpointIn(
            event_id=f"{lead}/e{n:03d}",
            type=event_type,
            lead_id=lead,
            occurred_at=T0 + timedelta(minutes=minute),
        ),
        source="test",
        received_at=T0,
    )
    return Record("t", 0, n, lead.encode(), touchpoint.to_record())


async def canonical(environment: Environment, lead: str) -> dict[str, Any]:
    database = create_engine(environment.settings(), application_name="event-time")
    sessions = create_session_factory(database)
    try:
        async with sessions() as session:
            stage = await session.get(LeadStage, (B2B_SIX_STAGE.name, lead))
            rows = await session.execute(
                select(
                    LeadTransition.from_stage,
                    LeadTransition.to_stage,
                    LeadTransition.kind,
                    LeadTransition.event_id,
                    LeadTransition.occurred_at,
                )
                .where(LeadTransition.lead_key == lead)
                .order_by(
                    LeadTransition.occurred_at, LeadTransition.source, LeadTransition.event_id
                )
            )
            return {
                "stage": None
                if stage is None
                else (
                    stage.stage,
                    stage.stage_entered_at,
                    stage.first_touch_at,
                    stage.last_touch_at,
                ),
                # Event ids carry the lead as a prefix: compare what follows it.
                "transitions": [
                    (f, t, k, event_id.split("/", 1)[1], at) for f, t, k, event_id, at in rows
                ],
            }
    finally:
        await database.dispose()


async def process(environment: Environment, batches: list[list[Record]]) -> None:
    database = create_engine(environment.settings(), application_name="event-time")
    sessions = create_session_factory(database)
    try:
        for batch in batches:
            async with unit_of_work(sessions) as session:
                await apply_batch(
                    session,
                    batch,
                    consumer_group=f"g-{secrets.token_hex(3)}",
                    funnels=[B2B_SIX_STAGE],
                    outbox_topic=OUTBOX_TOPIC,
                )
    finally:
        await database.dispose()


journeys = st.lists(
    st.tuples(st.sampled_from(TYPES), st.integers(min_value=0, max_value=500)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(journey=journeys, seed=st.integers(0, 2**32 - 1))
def test_any_arrival_order_equals_time_order(
    environment: Environment, journey: list[tuple[str, int]], seed: int
) -> None:
    run = secrets.token_hex(4)
    ordered_lead, shuffled_lead = f"ordered-{run}", f"shuffled-{run}"
    timeline = sorted(enumerate(journey), key=lambda item: (item[1][1], item[0]))
    in_order = [record(ordered_lead, n, kind, minute) for n, (kind, minute) in timeline]

    rng = random.Random(seed)
    arrivals = [record(shuffled_lead, n, kind, minute) for n, (kind, minute) in enumerate(journey)]
    rng.shuffle(arrivals)
    batches: list[list[Record]] = []
    while arrivals:
        size = rng.randint(1, 4)
        batches.append(arrivals[:size])
        arrivals = arrivals[size:]
    if batches and rng.random() < 0.5:
        batches.append(list(batches[0]))  # a redelivery

    asyncio.run(process(environment, [in_order]))
    asyncio.run(process(environment, batches))
    assert asyncio.run(canonical(environment, shuffled_lead)) == asyncio.run(
        canonical(environment, ordered_lead)
    )


async def test_a_late_event_is_placed_where_it_belongs(environment: Environment) -> None:
    lead = f"late-{secrets.token_hex(4)}"
    await process(environment, [[record(lead, 2, "demo_requested", 30)]])
    first = await canonical(environment, lead)
    assert [t[:3] for t in first["transitions"]] == [(None, "Action", "entered")]
    # The page view happened before the demo request, but arrives after it.
    await process(environment, [[record(lead, 1, "page_view", 10)]])
    corrected = await canonical(environment, lead)
    assert [t[:3] for t in corrected["transitions"]] == [
        (None, "Awareness", "entered"),
        ("Awareness", "Action", "skipped"),
    ]
    assert corrected["stage"][0] == "Action"
    assert corrected["stage"][2] == T0 + timedelta(minutes=10)  # first touch moved back
