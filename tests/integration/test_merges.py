"""Identity merges re-home a lead's history, against the real PostgreSQL: ingest's
identity step records the merge, the engine's batch step (or its sweep) moves the
absorbed lead's touchpoints to the canonical lead and refolds it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from leadstage.db.models import (
    AccountTransition,
    LeadStage,
    LeadTransition,
    MergedLead,
    OutboxRecord,
    StoredTouchpoint,
)
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch, sweep_merges
from leadstage_ingest.identity import Alias, attach_accounts, resolve_leads

B2B = load_presets()["b2b-six-stage"]
LEAD_TOPIC = "tests.unpublished.lead-stage-changed.v1"
ACCOUNT_TOPIC = "tests.unpublished.account-stage-changed.v1"
D0 = datetime(2026, 8, 3, 9, 0, tzinfo=UTC)


def event(event_type: str, at: datetime, **ids: str) -> Touchpoint:
    return Touchpoint.accept(
        TouchpointIn(type=event_type, occurred_at=at, **ids), source="merges", received_at=at
    )


async def ingest(
    sessions: SessionFactory, touchpoint: Touchpoint, aliases: Sequence[Alias] = ()
) -> Touchpoint:
    """What ingest does before producing an event: resolve its lead (recording any
    merge) and attach its account."""
    async with unit_of_work(sessions) as session:
        leads = await resolve_leads(session, [touchpoint], aliases)
        accounts = await attach_accounts(session, [touchpoint], leads)
    return touchpoint.model_copy(
        update={
            "resolved_lead_id": leads[touchpoint.event_id],
            "account": accounts.get(touchpoint.event_id, touchpoint.account),
        }
    )


async def fold(sessions: SessionFactory, *touchpoints: Touchpoint) -> None:
    """The engine's batch step over these events, one batch."""
    records = [
        Record("touchpoints", 0, n, tp.lead_key.encode(), tp.to_record())
        for n, tp in enumerate(touchpoints)
    ]
    async with unit_of_work(sessions) as session:
        await apply_batch(
            session,
            records,
            consumer_group=f"merges-{secrets.token_hex(3)}",
            funnels=[B2B],
            outbox_topic=LEAD_TOPIC,
            account_topic=ACCOUNT_TOPIC,
        )


async def lead_view(sessions: SessionFactory, lead: str) -> dict[str, Any]:
    async with sessions() as session:
        row = await session.get(LeadStage, (B2B.name, lead))
        transitions = await session.execute(
            select(
                LeadTransition.from_stage,
                LeadTransition.to_stage,
                LeadTransition.kind,
                LeadTransition.rule,
                LeadTransition.event_type,
                LeadTransition.occurred_at,
            )
            .where(LeadTransition.funnel == B2B.name, LeadTransition.lead_key == lead)
            .order_by(LeadTransition.occurred_at)
        )
        touchpoints = await session.scalar(
            select(func.count()).where(StoredTouchpoint.lead_key == lead)
        )
    return {
        "state": None
        if row is None
        else (row.stage, row.stage_entered_at, row.first_touch_at, row.last_touch_at, row.state),
        "transitions": [tuple(t) for t in transitions],
        "touchpoints": touchpoints,
    }


async def published(sessions: SessionFactory, key: str) -> list[dict[str, Any]]:
    async with sessions() as session:
        payloads = await session.scalars(
            select(OutboxRecord.payload)
            .where(OutboxRecord.topic == LEAD_TOPIC, OutboxRecord.key == key.encode())
            .order_by(OutboxRecord.id)
        )
        return [json.loads(p) for p in payloads]


async def test_an_anonymous_visitors_page_views_join_the_lead_that_identifies(
    sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(4)
    visitor, lead, email = f"visitor-{run}", f"lead-{run}", f"ada@{run}.example"
    views = [
        await ingest(sessions, event("page_view", D0 + timedelta(hours=h), anonymous_id=visitor))
        for h in range(3)
    ]
    assert {v.lead_key for v in views} == {f"anon:{visitor}"}
    await fold(sessions, *views)
    assert (await lead_view(sessions, f"anon:{visitor}"))["transitions"][0][1] == "Awareness"

    # A day later the visitor fills the contact form: ingest links the anonymous id to
    # the known lead and records the merge; the engine folds the form event.
    form = await ingest(
        sessions,
        event(
            "contact_form_submitted",
            D0 + timedelta(days=1),
            lead_id=lead,
            anonymous_id=visitor,
            email=email,
        ),
    )
    assert form.lead_key == lead
    # A fourth page view, produced before the merge under the anonymous key, is
    # still in flight: it arrives after the form.
    straggler = event("page_view", D0 + timedelta(hours=3), anonymous_id=visitor).model_copy(
        update={"resolved_lead_id": f"anon:{visitor}"}
    )
    await fold(sessions, form)
    await fold(sessions, straggler)

    merged = await lead_view(sessions, lead)
    assert merged["transitions"] == [
        (None, "Awareness", "entered", "first-visit", "page_view", D0),
        (
            "Awareness",
            "Action",
            "skipped",
            "converted-on-cta",
            "contact_form_submitted",
            D0 + timedelta(days=1),
        ),
    ]
    assert merged["touchpoints"] == 5
    assert merged["state"] is not None
    assert merged["state"][2] == D0  # first touch: the first anonymous page view
    assert await lead_view(sessions, f"anon:{visitor}") == {
        "state": None,
        "transitions": [],
        "touchpoints": 0,
    }
    async with sessions() as session:
        record = await session.get(MergedLead, f"anon:{visitor}")
    assert record is not None
    assert (record.into_lead, record.reason) == (lead, "identified")

    # The same five events sent with the lead id from the start give the same lead.
    control = f"control-{run}"
    await fold(
        sessions,
        *(event("page_view", D0 + timedelta(hours=h), lead_id=control) for h in range(3)),
        event("contact_form_submitted", D0 + timedelta(days=1), lead_id=control),
        event("page_view", D0 + timedelta(hours=3), lead_id=control),
    )
    assert merged == await lead_view(sessions, control)

    assert [f["event"] for f in await published(sessions, f"anon:{visitor}")] == [
        "LeadStageChanged",
        "LeadMerged",
    ]
    merged_fact = (await published(sessions, f"anon:{visitor}"))[1]
    assert (merged_fact["into_lead_id"], merged_fact["reason"]) == (lead, "identified")
    assert merged_fact["caused_by"] == {"event_id": form.event_id}
    lead_facts = await published(sessions, lead)
    changed = [
        (f["to_stage"], f["caused_by"]["type"])
        for f in lead_facts
        if f["event"] == "LeadStageChanged"
    ]
    assert changed == [("Awareness", "page_view"), ("Action", "contact_form_submitted")]

    # The lead's account (its email's domain) counts the re-homed history too.
    async with sessions() as session:
        account_history = await session.execute(
            select(
                AccountTransition.to_stage,
                AccountTransition.lead_key,
                AccountTransition.occurred_at,
            )
            .where(
                AccountTransition.account_id == f"domain:{run}.example",
                AccountTransition.funnel == B2B.name,
            )
            .order_by(AccountTransition.seq)
        )
        assert [tuple(t) for t in account_history] == [
            ("Awareness", lead, D0),
            ("Action", lead, D0 + timedelta(days=1)),
        ]


async def test_a_merge_committed_after_its_event_was_folded_is_applied_by_the_sweep(
    sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(4)
    visitor, lead = f"visitor-{run}", f"lead-{run}"
    view = await ingest(sessions, event("page_view", D0, anonymous_id=visitor))
    form = event("demo_requested", D0 + timedelta(days=1), lead_id=lead, anonymous_id=visitor)
    # The engine folds the form before ingest's transaction (and its merge) commits.
    await fold(sessions, view, form.model_copy(update={"resolved_lead_id": lead}))
    before = await lead_view(sessions, lead)
    assert [t[:3] for t in before["transitions"]] == [(None, "Action", "entered")]
    withdrawn = (await published(sessions, lead))[0]["change_id"]

    await ingest(sessions, form)  # now the merge is recorded
    async with unit_of_work(sessions) as session:
        applied, _ = await sweep_merges(
            session,
            [B2B],
            outbox_topic=LEAD_TOPIC,
            account_topic=ACCOUNT_TOPIC,
            since=D0.replace(year=2000),
        )
    assert applied == [lead]
    after = await lead_view(sessions, lead)
    assert [t[:3] for t in after["transitions"]] == [
        (None, "Awareness", "entered"),
        ("Awareness", "Action", "skipped"),
    ]
    assert after["touchpoints"] == 2
    facts = await published(sessions, lead)
    correction = next(f for f in facts if f["event"] == "LeadHistoryCorrected")
    assert correction["withdrawn_change_ids"] == [withdrawn]
    assert correction["caused_by"] == {"merged_lead_ids": [f"anon:{visitor}"]}
    assert correction["stage"] == "Action"

    async with unit_of_work(sessions) as session:
        again, _ = await sweep_merges(
            session,
            [B2B],
            outbox_topic=LEAD_TOPIC,
            account_topic=ACCOUNT_TOPIC,
            since=D0.replace(year=2000),
        )
    assert lead not in again  # applied once
    assert await lead_view(sessions, lead) == after


async def test_an_alias_merges_two_known_leads_histories_in_event_time(
    sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(4)
    old, new = f"old-{run}", f"new-{run}"
    first = [
        await ingest(sessions, event("page_view", D0, lead_id=old)),
        await ingest(sessions, event("content_download", D0 + timedelta(days=1), lead_id=new)),
        await ingest(sessions, event("demo_requested", D0 + timedelta(days=2), lead_id=old)),
    ]
    await fold(sessions, *first)
    call = event("call", D0 + timedelta(days=3), lead_id=new)
    call = await ingest(sessions, call, [Alias(call.event_id, old)])
    await fold(sessions, call)

    assert [t[:3] for t in (await lead_view(sessions, new))["transitions"]] == [
        (None, "Awareness", "entered"),
        ("Awareness", "Interest", "advanced"),
        ("Interest", "Action", "advanced"),
        ("Action", "Engagement", "advanced"),
    ]
    assert (await lead_view(sessions, old))["state"] is None
    # An event still carrying the old lead's key follows it to the new lead.
    await fold(
        sessions,
        event("meeting_scheduled", D0 + timedelta(days=4), lead_id=old).model_copy(
            update={"resolved_lead_id": old}
        ),
    )
    view = await lead_view(sessions, new)
    assert view["transitions"][-1][:3] == ("Engagement", "Opportunity", "advanced")
    assert view["touchpoints"] == 5
    assert (await lead_view(sessions, old))["state"] is None
