"""The funnel summary's rollup on the real PostgreSQL, fed by the engine's apply_batch:

- for random journeys (late events included, and accounts with firmographics), the
  summary read from the rollup equals the one recomputed from the transitions, in
  total and per value of every breakdown dimension, for closed and open periods;
- the incrementally maintained counts equal a rebuild from scratch;
- a late event, an identity merge, an account link and a firmographic change each
  move a lead between count rows;
- rolling up twice, or a marked lead whose state did not change, changes nothing.

The tests use a copy of b2b-six-stage registered under a name of their own (the
rollup maintains every funnel with an active version), and each example writes into
a time window of its own (year 2400 onwards).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, text

import leadstage.funnels
from leadstage.db.models import (
    Account,
    FunnelRollup,
    FunnelStageCount,
    FunnelStageMonthCount,
    IdentityMerge,
    LeadAccount,
    LeadFunnelFact,
)
from leadstage.db.session import SessionFactory, create_engine, create_session_factory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import parse_funnel
from leadstage.rollup import drain, mark_leads, roll_up
from leadstage.transport.base import Record
from leadstage_api import funnel_metrics
from leadstage_api.segments import Dimension, Segmentation
from leadstage_engine.processing import apply_batch
from leadstage_engine.versions import register_all
from leadstage_ingest.identity import attach_accounts
from tests.conftest import Environment

pytestmark = pytest.mark.integration

PRESET = Path(leadstage.funnels.__file__).parent / "presets" / "b2b-six-stage.yaml"
NAME = f"rollup-b2b-{secrets.token_hex(3)}"
FUNNEL = parse_funnel(
    PRESET.read_text(encoding="utf-8").replace("name: b2b-six-stage", f"name: {NAME}", 1),
    f"{NAME}.yaml",
)
WINDOWS = itertools.count()
TYPES = [
    "page_view",
    "ad_click",
    "email_opened",
    "content_download",
    "demo_requested",
    "meeting_scheduled",
    "deal_won",
    "deal_lost",
    "custom:disqualified",
]


def window() -> datetime:
    """A fresh 40-day window of event time for one test or example."""
    return datetime(2400, 1, 1, tzinfo=UTC) + timedelta(days=40 * next(WINDOWS))


def record(run: str, offset: int, lead: str, kind: str, at: datetime, **extra: Any) -> Record:
    body = {
        "event_id": f"{run}-{offset}",
        "type": kind,
        "lead_id": lead,
        "occurred_at": at,
        **extra,
    }
    return Record(
        "rollup",
        0,
        offset,
        None,
        Touchpoint.accept(
            TouchpointIn.model_validate(body), source=f"r-{run}", received_at=at
        ).to_record(),
    )


async def feed(sessions: SessionFactory, batches: Sequence[Sequence[Record]], run: str) -> None:
    for batch in batches:
        async with unit_of_work(sessions) as session:
            await apply_batch(
                session,
                batch,
                consumer_group=f"r-{run}",
                funnels=[FUNNEL],
                outbox_topic="tests.unpublished.v1",
            )


async def counts(sessions: SessionFactory, since: date, until: date) -> dict[tuple[Any, ...], int]:
    c = FunnelStageCount
    async with unit_of_work(sessions) as session:
        rows = await session.execute(
            select(
                c.dimension, c.value, c.entered_day, c.furthest_position, c.current_state, c.units
            ).where(c.funnel == NAME, c.entered_day >= since, c.entered_day < until)
        )
        return {tuple(row[:5]): row[5] for row in rows}


async def summaries(
    sessions: SessionFactory,
    segmentation: Segmentation,
    *,
    entered_from: datetime,
    entered_to: datetime | None,
    as_of: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(from the rollup, recomputed), without the fields saying which."""
    answers = []
    async with unit_of_work(sessions) as session:
        for read_rollup in (True, False):
            answer = await funnel_metrics.summary(
                session,
                FUNNEL,
                entered_from=entered_from,
                entered_to=entered_to,
                as_of=as_of,
                window=timedelta(days=7),
                segmentation=segmentation,
                read_rollup=read_rollup,
            )
            assert answer.source == ("rollup" if read_rollup else "raw")
            answers.append(answer.model_dump(exclude={"source", "aggregated_through"}))
    return answers[0], answers[1]


@pytest.fixture(scope="module")
async def rollup_sessions(environment: Environment) -> AsyncIterator[SessionFactory]:
    """Sessions on the test database, with the copied funnel registered as active."""
    database = create_engine(environment.settings(), application_name="rollup-tests")
    sessions = create_session_factory(database)
    async with unit_of_work(sessions) as session:
        await register_all(session, [FUNNEL], may_activate=True)
    await drain(sessions)  # the first round builds the funnel's (empty) rollup
    yield sessions
    await database.dispose()


# -- Property: the rollup gives the recomputed summary -----------------------------------

journey = st.lists(
    st.tuples(
        st.integers(0, 30 * 24),  # hour of the window
        st.sampled_from(TYPES),
        st.sampled_from([None, "paid_search", "email"]),
        st.sampled_from([None, "spring", "fall"]),  # utm campaign
    ),
    min_size=1,
    max_size=5,
)
accounts = st.sampled_from([None, "a", "b"])
people = st.lists(st.tuples(accounts, journey), min_size=1, max_size=6)


async def check_equal(
    sessions: SessionFactory, leads: list[tuple[str | None, list[Any]]], split: int
) -> None:
    run = secrets.token_hex(3)
    base = window()
    stream = []
    for index, (_, touches) in enumerate(leads):
        for number, (hour, kind, channel, campaign) in enumerate(touches):
            stream.append(
                (
                    base + timedelta(hours=hour),
                    f"{run}-{index}",
                    kind,
                    {
                        "channel": channel,
                        "utm": {"name": campaign, "source": "news"} if campaign else None,
                    },
                    number,
                )
            )
    # Arrival order: the first `split` events of the time order come last, so their
    # leads' earlier events arrive late and the engine refolds them.
    stream.sort(key=lambda item: (item[0], item[1], item[4]))
    arrival = stream[split:] + stream[:split]
    records = [
        record(run, offset, lead, kind, at, **extra)
        for offset, (at, lead, kind, extra, _) in enumerate(arrival)
    ]
    async with unit_of_work(sessions) as session:
        for name, industry, employees, country, tier in (
            ("a", "software", 120, "DE", 1),
            ("b", None, 9000, "US", None),
        ):
            await session.execute(
                insert(Account).values(
                    id=f"{run}-{name}",
                    industry=industry,
                    employee_count=employees,
                    country=country,
                    tier=tier,
                )
            )
        for index, (account, _) in enumerate(leads):
            if account is not None:
                await session.execute(
                    insert(LeadAccount).values(
                        lead_id=f"{run}-{index}",
                        account_id=f"{run}-{account}",
                        attached_by="explicit",
                    )
                )
    await feed(sessions, [records[: len(records) // 2], records[len(records) // 2 :]], run)
    async with unit_of_work(sessions) as session:
        await roll_up(session, limit=3)  # a partial round first: rounds compose
    await drain(sessions)

    breakdowns: list[Dimension | None] = [None, *Dimension]
    whole_window: dict[str, Any] = {}
    for breakdown in breakdowns:
        for entered_to, as_of in (
            (base + timedelta(days=31), base + timedelta(days=31)),
            (base + timedelta(days=12), base + timedelta(days=12)),
            (None, base + timedelta(days=20)),  # open period: the window decides
        ):
            rolled, raw = await summaries(
                sessions,
                Segmentation(breakdown=breakdown),
                entered_from=base,
                entered_to=entered_to,
                as_of=as_of,
            )
            assert rolled == raw, (breakdown, entered_to)
            whole_window = whole_window or raw
    # Not a comparison of two empty answers: a page view brings a new lead in.
    viewers = sum(any(t[1] == "page_view" for t in touches) for _, touches in leads)
    assert whole_window["leads"] >= viewers


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(leads=people, split=st.integers(0, 6))
@example(
    leads=[
        ("a", [(0, "page_view", "email", "spring"), (30, "demo_requested", None, None)]),
        ("b", [(5, "ad_click", None, None), (400, "deal_lost", None, None)]),
        (None, [(20, "page_view", None, "fall")]),
    ],
    split=2,
)
async def test_the_rollup_gives_the_recomputed_summary(
    rollup_sessions: SessionFactory, leads: list[tuple[str | None, list[Any]]], split: int
) -> None:
    await check_equal(rollup_sessions, leads, split)


async def test_incremental_counts_equal_a_rebuild(rollup_sessions: SessionFactory) -> None:
    run = secrets.token_hex(3)
    base = window()
    records = [
        record(run, 0, f"{run}-1", "page_view", base + timedelta(days=3)),
        record(run, 1, f"{run}-2", "demo_requested", base + timedelta(days=4)),
        record(run, 2, f"{run}-1", "content_download", base + timedelta(days=5)),
        record(run, 3, f"{run}-2", "ad_click", base + timedelta(days=1)),  # late
    ]
    await feed(rollup_sessions, [records[:2], records[2:]], run)
    await drain(rollup_sessions)
    incremental = await counts(rollup_sessions, base.date(), (base + timedelta(days=40)).date())
    outcome = await drain(rollup_sessions, rebuild=True)
    assert NAME in outcome.rebuilt
    assert await counts(rollup_sessions, base.date(), (base + timedelta(days=40)).date()) == (
        incremental
    )
    # Lead 1 entered on day 3 and reached Interest; lead 2 on day 1 (the late ad click),
    # reaching Action (demo requested).
    day1, day3 = (base + timedelta(days=1)).date(), (base + timedelta(days=3)).date()
    assert {k: v for k, v in incremental.items() if k[0] == ""} == {
        ("", None, day3, 1, "Interest"): 1,
        ("", None, day1, 2, "Action"): 1,
    }


# -- What moves a lead between rows ---------------------------------------------------------


async def test_a_late_event_moves_the_lead_to_an_earlier_day_and_further_stage(
    rollup_sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(3)
    base = window()
    lead = f"{run}-late"
    await feed(
        rollup_sessions, [[record(run, 0, lead, "page_view", base + timedelta(days=5))]], run
    )
    await drain(rollup_sessions)
    span = (base.date(), (base + timedelta(days=40)).date())
    day5, day2 = (base + timedelta(days=5)).date(), (base + timedelta(days=2)).date()
    before = await counts(rollup_sessions, *span)
    assert before[("", None, day5, 0, "Awareness")] == 1
    assert before[("channel", None, day5, 0, "Awareness")] == 1

    late = record(run, 1, lead, "demo_requested", base + timedelta(days=2), channel="email")
    await feed(rollup_sessions, [[late]], run)
    await drain(rollup_sessions)
    after = await counts(rollup_sessions, *span)
    # Entered on day 2 with a demo request (Action, position 2), still in Action (the page
    # view on day 5 moves nobody further); its first touch is now the email.
    expected: dict[tuple[Any, ...], int] = {
        (dim, None, day2, 2, "Action"): 1
        for dim in ("", "industry", "size_band", "country", "tier", "campaign", "source")
    }
    expected[("channel", "email", day2, 2, "Action")] = 1
    assert after == expected


async def test_touches_at_the_same_instant_break_the_tie_alike_in_a_rebuild(
    rollup_sessions: SessionFactory,
) -> None:
    """Two first touches at one instant: the first by (time, source, event id) wins in
    the incremental round, in a rebuild and in the recomputation alike. (The rebuild
    once ordered by the UTM source, an output column named like the touchpoint's
    source, and picked the other touch.)"""
    run = secrets.token_hex(3)
    base = window()
    lead, at = f"{run}-tie", base + timedelta(days=1)
    first = record(run, 0, lead, "page_view", at, channel="email", utm={"source": "zz"})
    second = record(run, 1, lead, "page_view", at, channel="paid_search", utm={"source": "aa"})
    await feed(rollup_sessions, [[first, second]], run)
    await drain(rollup_sessions)
    span = (base.date(), (base + timedelta(days=40)).date())
    incremental = await counts(rollup_sessions, *span)
    assert incremental[("channel", "email", at.date(), 0, "Awareness")] == 1
    await drain(rollup_sessions, rebuild=True)
    assert await counts(rollup_sessions, *span) == incremental
    rolled, raw = await summaries(
        rollup_sessions,
        Segmentation(breakdown=Dimension.CHANNEL),
        entered_from=datetime.combine(base.date(), datetime.min.time(), UTC),
        entered_to=datetime.combine(span[1], datetime.min.time(), UTC),
        as_of=base + timedelta(days=40),
    )
    assert rolled == raw
    assert [segment["value"] for segment in raw["segments"]] == ["email"]


async def test_a_merge_folds_the_absorbed_lead_into_the_canonical_one(
    rollup_sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(3)
    base = window()
    anonymous, known = f"{run}-anon", f"{run}-known"
    await feed(
        rollup_sessions,
        [
            [
                record(run, 0, anonymous, "ad_click", base + timedelta(days=1)),
                record(run, 1, known, "page_view", base + timedelta(days=4)),
            ]
        ],
        run,
    )
    await drain(rollup_sessions)
    span = (base.date(), (base + timedelta(days=40)).date())
    totals = {k: v for k, v in (await counts(rollup_sessions, *span)).items() if k[0] == ""}
    day1, day4 = (base + timedelta(days=1)).date(), (base + timedelta(days=4)).date()
    assert totals == {("", None, day1, 0, "Awareness"): 1, ("", None, day4, 0, "Awareness"): 1}

    async with unit_of_work(rollup_sessions) as session:
        await session.execute(
            insert(IdentityMerge).values(
                from_lead=anonymous, into_lead=known, reason="alias", event_id=f"{run}-m", moved=[]
            )
        )
    await feed(
        rollup_sessions,
        [[record(run, 2, known, "content_download", base + timedelta(days=6))]],
        run,
    )
    await drain(rollup_sessions)
    totals = {k: v for k, v in (await counts(rollup_sessions, *span)).items() if k[0] == ""}
    # One lead now, entered with the anonymous visitor's ad click on day 1, in Interest.
    assert totals == {("", None, day1, 1, "Interest"): 1}
    async with unit_of_work(rollup_sessions) as session:
        gone = await session.scalar(
            select(LeadFunnelFact.lead_key).where(
                LeadFunnelFact.funnel == NAME, LeadFunnelFact.lead_key == anonymous
            )
        )
    assert gone is None


async def test_account_links_and_firmographic_changes_move_contacts(
    rollup_sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(3)
    base = window()
    first, second = f"{run}-first", f"{run}-second"
    await feed(
        rollup_sessions,
        [
            [
                record(run, 0, first, "page_view", base + timedelta(days=1)),
                record(run, 1, second, "page_view", base + timedelta(days=1)),
            ]
        ],
        run,
    )
    await drain(rollup_sessions)
    span = (base.date(), (base + timedelta(days=40)).date())
    day1 = (base + timedelta(days=1)).date()

    def industries(found: dict[tuple[Any, ...], int]) -> dict[str | None, int]:
        return {k[1]: v for k, v in found.items() if k[0] == "industry"}

    assert industries(await counts(rollup_sessions, *span)) == {None: 2}

    async def attach(lead: str, offset: int, **account: Any) -> None:
        touch = Touchpoint.accept(
            TouchpointIn.model_validate(
                {
                    "event_id": f"{run}-{offset}",
                    "type": "page_view",
                    "lead_id": lead,
                    "occurred_at": base + timedelta(days=2),
                    "account": {"id": f"{run}-acme", **account},
                }
            ),
            source=f"r-{run}",
            received_at=base,
        )
        async with unit_of_work(rollup_sessions) as session:
            await attach_accounts(session, [touch], {touch.event_id: lead})

    await attach(first, 10, industry="software", employee_count=40)
    await drain(rollup_sessions)
    found = await counts(rollup_sessions, *span)
    assert industries(found) == {None: 1, "software": 1}
    assert {k[1]: v for k, v in found.items() if k[0] == "size_band"} == {None: 1, "1-49": 1}

    await attach(second, 11)  # the same account, nothing new about it
    await drain(rollup_sessions)
    assert industries(await counts(rollup_sessions, *span)) == {"software": 2}

    await attach(second, 12, industry="fintech")  # every contact of the account moves
    await drain(rollup_sessions)
    found = await counts(rollup_sessions, *span)
    assert industries(found) == {"fintech": 2}
    assert found[("size_band", "1-49", day1, 0, "Awareness")] == 2


# -- Idempotence ------------------------------------------------------------------------------


async def test_rolling_up_again_changes_nothing(rollup_sessions: SessionFactory) -> None:
    run = secrets.token_hex(3)
    base = window()
    lead = f"{run}-same"
    await feed(
        rollup_sessions, [[record(run, 0, lead, "demo_requested", base + timedelta(days=1))]], run
    )
    await drain(rollup_sessions)
    span = (base.date(), (base + timedelta(days=40)).date())
    before = await counts(rollup_sessions, *span)
    assert before[("", None, (base + timedelta(days=1)).date(), 2, "Action")] == 1

    again = await drain(rollup_sessions)
    assert again.changed == 0
    async with unit_of_work(rollup_sessions) as session:
        await mark_leads(session, [lead])
    marked = await drain(rollup_sessions)
    assert marked.taken >= 1
    assert await counts(rollup_sessions, *span) == before
    async with unit_of_work(rollup_sessions) as session:
        stamp = await session.scalar(
            select(FunnelRollup.aggregated_through).where(FunnelRollup.funnel == NAME)
        )
        pending = await session.scalar(
            text("SELECT count(*) FROM rollup_dirty_leads WHERE lead_key = :lead"),
            {"lead": lead},
        )
    assert stamp is not None
    assert pending == 0


async def test_a_writer_marking_a_lead_a_round_holds_does_not_wait_and_is_not_lost(
    rollup_sessions: SessionFactory,
) -> None:
    """A round holds the marks it took until it commits. A writer (an engine batch)
    marking one of those leads meanwhile must neither wait for the round (with one row
    per lead and ``ON CONFLICT``, it waited for the whole round) nor be lost: its mark
    is taken by a later round."""
    lead = f"{secrets.token_hex(3)}-held"
    async with unit_of_work(rollup_sessions) as session:
        await mark_leads(session, [lead])
    async with rollup_sessions() as round_session, round_session.begin():
        taken = await roll_up(round_session)  # holds the lead's mark, uncommitted
        assert taken.marks >= 1
        async with unit_of_work(rollup_sessions) as writer:
            await writer.execute(text("SET LOCAL lock_timeout = '2s'"))
            await mark_leads(writer, [lead])  # before: waited, then a lock timeout
    async with unit_of_work(rollup_sessions) as session:
        pending = await session.scalar(
            text("SELECT count(*) FROM rollup_dirty_leads WHERE lead_key = :lead"),
            {"lead": lead},
        )
    assert pending == 1
    assert (await drain(rollup_sessions)).taken >= 1


# -- Counts by month -----------------------------------------------------------------------


async def month_counts(sessions: SessionFactory) -> dict[tuple[Any, ...], int]:
    c = FunnelStageMonthCount
    async with unit_of_work(sessions) as session:
        rows = await session.execute(
            select(
                c.dimension, c.value, c.entered_month, c.furthest_position, c.current_state, c.units
            ).where(c.funnel == NAME, c.entered_month < date(2400, 1, 1))
        )
        return {tuple(row[:5]): row[5] for row in rows}


def by_month(day_counts: dict[tuple[Any, ...], int]) -> dict[tuple[Any, ...], int]:
    summed: dict[tuple[Any, ...], int] = {}
    for (dimension, value, day, furthest, state), units in day_counts.items():
        key = (dimension, value, day.replace(day=1), furthest, state)
        summed[key] = summed.get(key, 0) + units
    return summed


async def test_month_counts_follow_the_day_counts_across_month_ends(
    rollup_sessions: SessionFactory,
) -> None:
    """The month counts are the day counts summed by month, after deltas that move a lead
    across a month end; a summary over whole months, partial months or both equals the
    recomputation. The only test writing before 2400: its months are its own."""
    run = secrets.token_hex(3)
    jan30 = datetime(2399, 1, 30, 9, tzinfo=UTC)
    at = {
        "jan30": jan30,
        "jan31": jan30 + timedelta(days=1),
        "feb2": jan30 + timedelta(days=3),
        "feb15": jan30 + timedelta(days=16),
        "mar1": jan30 + timedelta(days=30),
    }
    await feed(
        rollup_sessions,
        [
            [
                record(run, 0, f"{run}-1", "page_view", at["jan30"]),
                record(run, 1, f"{run}-2", "ad_click", at["feb2"]),
                record(run, 2, f"{run}-4", "page_view", at["feb15"]),
                record(run, 3, f"{run}-3", "demo_requested", at["mar1"]),
            ]
        ],
        run,
    )
    await drain(rollup_sessions)
    jan, feb, mar = date(2399, 1, 1), date(2399, 2, 1), date(2399, 3, 1)
    totals = {k: v for k, v in (await month_counts(rollup_sessions)).items() if k[0] == ""}
    assert totals == {
        ("", None, jan, 0, "Awareness"): 1,
        ("", None, feb, 0, "Awareness"): 2,
        ("", None, mar, 2, "Action"): 1,
    }

    # Lead 2's late download on Jan 31: it entered then (January), and is in Interest.
    late = record(run, 4, f"{run}-2", "content_download", at["jan31"])
    await feed(rollup_sessions, [[late]], run)
    await drain(rollup_sessions)
    incremental = await month_counts(rollup_sessions)
    assert {k: v for k, v in incremental.items() if k[0] == ""} == {
        ("", None, jan, 0, "Awareness"): 1,
        ("", None, jan, 1, "Interest"): 1,
        ("", None, feb, 0, "Awareness"): 1,
        ("", None, mar, 2, "Action"): 1,
    }
    assert incremental == by_month(await counts(rollup_sessions, jan, date(2400, 1, 1)))
    await drain(rollup_sessions, rebuild=True)
    assert await month_counts(rollup_sessions) == incremental

    midnight = datetime(2399, 1, 1, tzinfo=UTC)
    for since, until, leads in (
        (date(2399, 1, 30), date(2399, 3, 2), 4),  # partial, whole February, partial
        (date(2399, 2, 1), date(2399, 3, 1), 1),  # whole February only
        (date(2399, 1, 31), date(2399, 2, 16), 2),  # partial January and February
        # Open: every month from February, the other tests' years 2400+ included.
        (date(2399, 2, 1), None, None),
    ):
        entered_from = midnight + timedelta(days=(since - jan).days)
        entered_to = None if until is None else midnight + timedelta(days=(until - jan).days)
        for breakdown in (None, Dimension.CHANNEL):
            rolled, raw = await summaries(
                rollup_sessions,
                Segmentation(breakdown=breakdown),
                entered_from=entered_from,
                entered_to=entered_to,
                as_of=entered_to or datetime(2399, 3, 5, tzinfo=UTC),
            )
            assert rolled == raw, (since, until, breakdown)
            if leads is None:
                assert rolled["leads"] >= 2  # leads 3 and 4, and the later tests' leads
            else:
                assert rolled["leads"] == leads, (since, until)
