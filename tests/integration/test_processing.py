"""The engine's batch step against the real PostgreSQL: state, offsets, idempotence."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from leadstage.db.models import ConsumerOffset, LeadStage, LeadTransition, StoredTouchpoint
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_engine.processing import BatchOutcome, apply_batch

B2B_SIX_STAGE = load_presets()["b2b-six-stage"]
# Changes these tests make are not published by any running engine.
OUTBOX_TOPIC = "tests.unpublished.lead-stage-changed.v1"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def touchpoint_record(
    lead: str,
    event_type: str,
    minute: int,
    *,
    offset: int,
    event_id: str | None = None,
    partition: int = 0,
    topic: str = "touchpoints",
) -> Record:
    touchpoint = Touchpoint.accept(
        TouchpointIn(
            event_id=event_id or f"{lead}-{event_type}-{minute}",
            type=event_type,
            occurred_at=T0 + timedelta(minutes=minute),
            lead_id=lead,
        ),
        source="test",
        received_at=T0,
    )
    return Record(topic, partition, offset, lead.encode(), touchpoint.to_record())


async def apply(sessions: SessionFactory, records: Sequence[Record], group: str) -> BatchOutcome:
    async with unit_of_work(sessions) as session:
        return await apply_batch(
            session,
            records,
            consumer_group=group,
            funnels=[B2B_SIX_STAGE],
            outbox_topic=OUTBOX_TOPIC,
        )


async def lead_state(sessions: SessionFactory, lead: str) -> dict[str, Any]:
    async with sessions() as session:
        stage = await session.get(LeadStage, (B2B_SIX_STAGE.name, lead))
        transitions = await session.execute(
            select(
                LeadTransition.from_stage,
                LeadTransition.to_stage,
                LeadTransition.kind,
                LeadTransition.event_id,
            )
            .where(LeadTransition.lead_key == lead)
            .order_by(LeadTransition.occurred_at, LeadTransition.id)
        )
        touchpoints = await session.scalar(
            select(text("count(*)"))
            .select_from(StoredTouchpoint)
            .where(StoredTouchpoint.lead_key == lead)
        )
    return {
        "stage": stage.stage if stage else None,
        "entered": stage.stage_entered_at if stage else None,
        "first_touch": stage.first_touch_at if stage else None,
        "transitions": [tuple(row) for row in transitions],
        "touchpoints": touchpoints,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def test_a_batch_moves_leads_and_records_history_and_offsets(
    sessions: SessionFactory,
) -> None:
    lead, group = unique("lead"), unique("group")
    records = [
        touchpoint_record(lead, "email_opened", 0, offset=7),  # no rule: stored, no move
        touchpoint_record(lead, "page_view", 1, offset=8),
        touchpoint_record(lead, "demo_requested", 5, offset=9),
    ]
    outcome = await apply(sessions, records, group)

    assert (outcome.stored, outcome.transitions, outcome.rejected) == (3, 2, [])
    state = await lead_state(sessions, lead)
    assert state["stage"] == "Action"
    assert state["entered"] == T0 + timedelta(minutes=5)
    assert state["first_touch"] == T0  # the email open, though it moved nothing
    assert [(f, t, k) for f, t, k, _ in state["transitions"]] == [
        (None, "Awareness", "entered"),
        ("Awareness", "Action", "skipped"),
    ]
    async with sessions() as session:
        stored = await session.get(ConsumerOffset, (group, "touchpoints", 0))
    assert stored is not None
    assert stored.next_offset == 10


async def test_redelivered_records_change_nothing(sessions: SessionFactory) -> None:
    lead, group = unique("lead"), unique("group")
    records = [
        touchpoint_record(lead, "page_view", 1, offset=0),
        touchpoint_record(lead, "meeting_scheduled", 2, offset=1),
    ]
    await apply(sessions, records, group)
    before = await lead_state(sessions, lead)

    again = await apply(sessions, records, group)  # e.g. a crash before the Kafka commit
    assert (again.stored, again.duplicates, again.transitions) == (0, 2, 0)
    assert await lead_state(sessions, lead) == before


async def test_the_same_event_id_twice_in_one_batch_counts_once(sessions: SessionFactory) -> None:
    lead, group = unique("lead"), unique("group")
    first = touchpoint_record(lead, "page_view", 1, offset=0, event_id=f"{lead}-dup")
    repeat = touchpoint_record(lead, "page_view", 1, offset=1, event_id=f"{lead}-dup")
    outcome = await apply(sessions, [first, repeat], group)
    assert (outcome.stored, outcome.duplicates) == (1, 1)
    assert (await lead_state(sessions, lead))["touchpoints"] == 1


async def test_a_failed_transaction_leaves_neither_state_nor_offsets(
    sessions: SessionFactory,
) -> None:
    lead, group = unique("lead"), unique("group")

    async def crash_before_commit() -> None:
        async with unit_of_work(sessions) as session:
            await apply_batch(
                session,
                [touchpoint_record(lead, "page_view", 1, offset=0)],
                consumer_group=group,
                funnels=[B2B_SIX_STAGE],
                outbox_topic=OUTBOX_TOPIC,
            )
            raise RuntimeError("crash after the work, before the commit")

    with pytest.raises(RuntimeError, match="crash"):
        await crash_before_commit()
    assert (await lead_state(sessions, lead))["stage"] is None
    async with sessions() as session:
        assert await session.get(ConsumerOffset, (group, "touchpoints", 0)) is None


async def test_batch_by_batch_equals_all_at_once(sessions: SessionFactory) -> None:
    """Reprocessing from any cut gives the state of one clean run."""
    events = [
        "page_view",
        "content_download",
        "demo_requested",
        "email_opened",
        "call",
        "page_view",
        "meeting_scheduled",
        "deal_lost",
        "demo_requested",
        "deal_won",
    ]
    leads = [unique("cut"), unique("clean")]
    batches: dict[str, list[Record]] = {
        lead: [touchpoint_record(lead, kind, i, offset=i) for i, kind in enumerate(events)]
        for lead in leads
    }
    cut_lead, clean_lead = leads
    cut = batches[cut_lead]
    await apply(sessions, cut[:3], unique("g"))
    await apply(sessions, cut[2:7], unique("g"))  # overlaps: redelivery after a crash
    await apply(sessions, cut[5:], unique("g"))
    await apply(sessions, batches[clean_lead], unique("g"))

    def shape(state: dict[str, Any]) -> dict[str, Any]:
        return {
            **state,
            "transitions": [(f, t, k, e.split("-", 2)[2]) for f, t, k, e in state["transitions"]],
        }

    cut_state, clean_state = (
        await lead_state(sessions, cut_lead),
        await lead_state(sessions, clean_lead),
    )
    assert shape(cut_state) == shape(clean_state)
    assert clean_state["stage"] == "Customer"
    kinds = [k for _, _, k, _ in clean_state["transitions"]]
    assert kinds == [
        "entered",
        "advanced",
        "advanced",
        "advanced",
        "advanced",
        "exited",
        "reentered",
        "skipped",
    ]


async def test_unreadable_records_are_rejected_with_a_reason_and_do_not_block(
    sessions: SessionFactory,
) -> None:
    lead, group = unique("lead"), unique("group")
    records = [
        Record("touchpoints", 0, 0, b"k", b"{not json"),
        Record("touchpoints", 0, 1, b"k", b'{"type": "page_view"}'),
        touchpoint_record(lead, "page_view", 1, offset=2),
    ]
    outcome = await apply(sessions, records, group)
    assert [(r.record.offset, r.error_kind) for r in outcome.rejected] == [
        (0, "json_invalid"),
        (1, "schema_violation"),
    ]
    assert outcome.rejected[1].field is not None
    assert (await lead_state(sessions, lead))["stage"] == "Awareness"
    assert outcome.next_offsets[records[0].topic_partition] == 3


def page_view(lead: str, url: str, minute: int, *, offset: int) -> Record:
    touchpoint = Touchpoint.accept(
        TouchpointIn(
            event_id=f"{lead}-view-{minute}",
            type="page_view",
            occurred_at=T0 + timedelta(minutes=minute),
            lead_id=lead,
            properties={"page_url": url, "title": "a page"},
        ),
        source="test",
        received_at=T0,
    )
    return Record("touchpoints", 0, offset, lead.encode(), touchpoint.to_record())


async def test_a_counted_rule_counts_the_properties_of_events_from_earlier_batches(
    sessions: SessionFactory,
) -> None:
    """The lead continuing its fold reads only its history's properties; the counted
    rule (3 pricing-page views in 14 days) must still see them, and only matching ones."""
    pricing, browsing, group = unique("pricing"), unique("browsing"), unique("group")
    batches = [
        [
            page_view(pricing, "https://example.com/pricing", 1, offset=0),
            page_view(browsing, "https://example.com/blog", 1, offset=1),
        ],
        [
            page_view(pricing, "https://example.com/pricing?plan=team", 2, offset=2),
            page_view(browsing, "https://example.com/blog/2", 2, offset=3),
        ],
        [
            page_view(pricing, "https://example.com/pricing#faq", 3, offset=4),
            page_view(browsing, "https://example.com/pricing", 3, offset=5),
        ],
    ]
    for batch in batches:
        await apply(sessions, batch, group)

    assert (await lead_state(sessions, pricing))["stage"] == "Interest"
    assert (await lead_state(sessions, browsing))["stage"] == "Awareness"
