"""Properties of the analytics reports on random journeys, on the real PostgreSQL:

- every conversion hands out exactly 1 in attribution credit, whatever the model
  (checked per lead: each lead's first touch carries a campaign of its own, so the
  campaign breakdown has one lead per segment);
- a breakdown's segments add up to the unbroken figures (summary, cohorts, time to
  convert, transitions, attribution), and a filter on one value gives that segment's
  figures.

Each example writes its leads through the engine's apply_batch into a time window of
its own (year 2300 onwards), so examples never see each other's data.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from leadstage.db.models import Account, LeadAccount
from leadstage.db.session import create_engine, create_session_factory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.rollup import drain
from leadstage.transport.base import Record
from leadstage_api import attribution, cohorts, funnel_metrics, timing, transitions_report
from leadstage_api.attribution import By, Model
from leadstage_api.periods import Period, Range
from leadstage_api.segments import Dimension, Segmentation, Unit
from leadstage_engine.processing import apply_batch
from tests.conftest import Environment

pytestmark = pytest.mark.integration

B2B = load_presets()["b2b-six-stage"]
TYPES = [
    "page_view",
    "ad_click",
    "email_opened",
    "content_download",
    "demo_requested",
    "webinar_attended",
    "meeting_scheduled",
    "deal_won",
    "deal_lost",
]
CHANNELS = [None, "paid_search", "email", "direct", "outbound"]
WINDOWS = itertools.count()

events = st.lists(
    st.tuples(
        st.integers(0, 20 * 24),  # hour of the window
        st.sampled_from(TYPES),
        st.sampled_from(CHANNELS),
        st.sampled_from([None, 100, 2500]),  # a deal amount
    ),
    min_size=1,
    max_size=6,
)
journeys = st.lists(
    st.tuples(st.sampled_from([None, "a", "b"]), events),  # (account, events)
    min_size=1,
    max_size=6,
)


def sums(figures: list[list[int]], width: int) -> list[int]:
    """Column sums of segment figures (zeros when there is no segment at all)."""
    return [sum(row[k] for row in figures) for k in range(width)]


async def check(environment: Environment, leads: list[tuple[str | None, list[Any]]]) -> None:
    run = secrets.token_hex(3)
    base = datetime(2300, 1, 1, tzinfo=UTC) + timedelta(days=40 * next(WINDOWS))
    span = Range(base, base + timedelta(days=30))
    stream = []
    for index, (_, touches) in enumerate(leads):
        ordered = sorted(touches, key=lambda e: e[0])
        for number, (hour, kind, channel, amount) in enumerate(ordered):
            stream.append(
                (
                    base + timedelta(hours=hour),
                    number,
                    {
                        "event_id": f"{run}-{index}-{number}",
                        "type": kind,
                        "lead_id": f"{run}-{index}",
                        "occurred_at": base + timedelta(hours=hour),
                        "channel": channel,
                        # The first touch names the lead's own campaign.
                        "utm": {"name": f"lead-{index}"} if number == 0 else None,
                        "properties": {"amount": amount} if amount else {},
                    },
                )
            )
    stream.sort(key=lambda item: (item[0], item[1]))
    records = [
        Record(
            "properties",
            0,
            offset,
            None,
            Touchpoint.accept(
                TouchpointIn.model_validate(body), source=f"p-{run}", received_at=at
            ).to_record(),
        )
        for offset, (at, _, body) in enumerate(stream)
    ]
    database = create_engine(environment.settings(), application_name="analytics-properties")
    sessions = create_session_factory(database)
    try:
        async with unit_of_work(sessions) as session:
            await apply_batch(
                session,
                records,
                consumer_group=f"p-{run}",
                funnels=[B2B],
                outbox_topic="tests.unpublished.v1",
            )
            for name, industry in (("a", "software"), ("b", "retail")):
                await session.execute(insert(Account).values(id=f"{run}-{name}", industry=industry))
            for index, (account, _) in enumerate(leads):
                if account is not None:
                    await session.execute(
                        insert(LeadAccount).values(
                            lead_id=f"{run}-{index}",
                            account_id=f"{run}-{account}",
                            attached_by="explicit",
                        )
                    )
        await drain(sessions)  # the summary reads the rollup when b2b-six-stage has one
        async with unit_of_work(sessions) as session:
            await properties(session, span)
    finally:
        await database.dispose()


async def properties(session: Any, span: Range) -> None:
    for unit in Unit:
        whole = Segmentation(unit=unit)
        for dimension in (Dimension.CHANNEL, Dimension.INDUSTRY):
            split = Segmentation(unit=unit, breakdown=dimension)
            summary = await funnel_metrics.summary(
                session,
                B2B,
                entered_from=span.start,
                entered_to=span.end,
                as_of=span.end,
                window=timedelta(days=30),
                segmentation=whole,
            )
            parts = await funnel_metrics.summary(
                session,
                B2B,
                entered_from=span.start,
                entered_to=span.end,
                as_of=span.end,
                window=timedelta(days=30),
                segmentation=split,
            )
            assert parts.segments is not None
            assert sum(s.leads for s in parts.segments) == summary.leads
            assert sums([[st.reached for st in s.stages] for s in parts.segments], 6) == [
                st.reached for st in summary.stages
            ]
            for segment in parts.segments:
                if segment.value is not None:  # a filter on the value gives the segment
                    only = await funnel_metrics.summary(
                        session,
                        B2B,
                        entered_from=span.start,
                        entered_to=span.end,
                        as_of=span.end,
                        window=timedelta(days=30),
                        segmentation=Segmentation(unit=unit, filters={dimension: (segment.value,)}),
                    )
                    assert [st.reached for st in only.stages] == [
                        st.reached for st in segment.stages
                    ]

            cohort = await cohorts.cohorts(
                session,
                B2B,
                span=span,
                period=Period.WEEK,
                follow_days=30,
                segmentation=whole,
                now=span.end,
            )
            cohort_parts = await cohorts.cohorts(
                session,
                B2B,
                span=span,
                period=Period.WEEK,
                follow_days=30,
                segmentation=split,
                now=span.end,
            )
            assert cohort_parts.segments is not None
            for week, total in enumerate(cohort.cohorts):
                assert sums(
                    [[st.reached for st in s.cohorts[week].stages] for s in cohort_parts.segments],
                    6,
                ) == [st.reached for st in total.stages]

            convert = await timing.time_to_convert(
                session,
                B2B,
                from_stage="Awareness",
                to_stage="Action",
                span=span,
                period=Period.WEEK,
                segmentation=whole,
            )
            convert_parts = await timing.time_to_convert(
                session,
                B2B,
                from_stage="Awareness",
                to_stage="Action",
                span=span,
                period=Period.WEEK,
                segmentation=split,
            )
            assert convert_parts.segments is not None
            assert sum(s.count for s in convert_parts.segments) == convert.count
            assert convert.count == summary.stages[2].reached  # all entered in the window

        for model in Model:
            credited = await attribution.attribution(
                session,
                B2B,
                stage="Interest",
                model=model,
                half_life_days=2.0,
                by=By.CHANNEL,
                span=span,
                segmentation=Segmentation(unit=unit, breakdown=Dimension.CAMPAIGN),
            )
            assert sum(c.credit for c in credited.credits) == pytest.approx(
                credited.conversions, abs=1e-5
            )
            assert credited.segments is not None
            for lead in credited.segments:  # one lead (or account) per campaign
                assert sum(c.credit for c in lead.credits) == pytest.approx(
                    lead.conversions, abs=1e-5
                )
                assert all(c.credit >= 0 for c in lead.credits)

    moves = await transitions_report.transitions(
        session, B2B, span=span, period=Period.WEEK, state=None, segmentation=Segmentation()
    )
    split_moves = await transitions_report.transitions(
        session,
        B2B,
        span=span,
        period=Period.WEEK,
        state=None,
        segmentation=Segmentation(breakdown=Dimension.CHANNEL),
    )
    assert split_moves.segments is not None
    width = len(moves.states)
    assert sums([[s.entries for s in part.states] for part in split_moves.segments], width) == [
        s.entries for s in moves.states
    ]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(leads=journeys)
# Always at least one example with conversions at every stage the checks use, in both
# accounts, several touches per lead and a lead without an account.
@example(
    leads=[
        (
            "a",
            [
                (0, "ad_click", "paid_search", None),
                (5, "content_download", "email", None),
                (30, "demo_requested", None, None),
                (50, "deal_won", "outbound", 2500),
            ],
        ),
        ("a", [(2, "page_view", "direct", None), (3, "webinar_attended", "email", None)]),
        ("b", [(1, "content_download", None, None)]),
        (None, [(4, "page_view", "email", None), (90, "meeting_scheduled", "outbound", 100)]),
    ]
)
def test_breakdowns_add_up_and_credits_sum_to_one(
    environment: Environment, leads: list[tuple[str | None, list[Any]]]
) -> None:
    asyncio.run(check(environment, leads))
