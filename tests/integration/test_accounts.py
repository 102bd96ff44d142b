"""Account (buying-group) state in the engine, against the real PostgreSQL: stages by the
account rule, history, late contact events, attachment after the fact, determinism
across batchings and concurrent processes, and the published AccountStageChanged."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from leadstage.db.models import (
    Account,
    AccountContact,
    AccountStage,
    AccountTransition,
    LeadAccount,
    OutboxRecord,
)
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import Funnel, load_presets
from leadstage.transport.base import Record
from leadstage_engine.accounts import sweep_memberships
from leadstage_engine.processing import apply_batch

PRESETS = load_presets()
B2B = PRESETS["b2b-six-stage"]  # quorum: 2 contacts at Engagement or beyond
LOYALTY = PRESETS["six-stage-loyalty"]  # furthest contact
# Changes these tests make are not published by any running engine.
LEAD_TOPIC = "tests.unpublished.lead-stage-changed.v1"
ACCOUNT_TOPIC = "tests.unpublished.account-stage-changed.v1"
T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def record(run: str, lead: str, event_type: str, minute: int, offset: int = 0) -> Record:
    touchpoint = Touchpoint.accept(
        TouchpointIn(
            event_id=f"{run}/{lead}/{event_type}/{minute}",
            type=event_type,
            occurred_at=at(minute),
            lead_id=f"{run}-{lead}",
        ),
        source="accounts-test",
        received_at=T0,
    )
    return Record("touchpoints", 0, offset, lead.encode(), touchpoint.to_record())


async def attach(sessions: SessionFactory, account: str, leads: Sequence[str]) -> None:
    """What ingest's identity step writes: the account and each contact's link."""
    async with unit_of_work(sessions) as session:
        session.add(Account(id=account, name=account))
        await session.flush()
        for lead in leads:
            await session.merge(
                LeadAccount(lead_id=lead, account_id=account, attached_by="explicit")
            )


async def apply(
    sessions: SessionFactory,
    batches: Sequence[Sequence[Record]],
    funnels: Sequence[Funnel],
    run: str,
) -> None:
    for batch in batches:
        async with unit_of_work(sessions) as session:
            await apply_batch(
                session,
                batch,
                consumer_group=f"accounts-{run}",
                funnels=funnels,
                outbox_topic=LEAD_TOPIC,
                account_topic=ACCOUNT_TOPIC,
            )


def plain(run: str, value: str | None) -> str | None:
    """An id without the run's prefix, to compare runs."""
    return None if value is None else value.removeprefix(f"{run}-").removeprefix(f"{run}/")


async def account_state(
    sessions: SessionFactory, run: str, account: str, funnel: Funnel
) -> dict[str, Any]:
    async with sessions() as session:
        row = await session.get(AccountStage, (funnel.name, account))
        transitions = await session.scalars(
            select(AccountTransition)
            .where(AccountTransition.account_id == account, AccountTransition.funnel == funnel.name)
            .order_by(AccountTransition.seq)
        )
        history = [
            (
                t.seq,
                t.from_stage,
                t.to_stage,
                t.kind,
                plain(run, t.lead_key),
                plain(run, t.event_id),
                t.occurred_at,
            )
            for t in transitions
        ]
        contacts = await session.scalars(
            select(AccountContact.lead_key)
            .where(AccountContact.account_id == account)
            .order_by(AccountContact.lead_key)
        )
        contact_list = [plain(run, lead) for lead in contacts]
    return {
        "stage": None
        if row is None
        else {
            "stage": row.stage,
            "entered": row.stage_entered_at,
            "contacts": row.contacts,
            "by_stage": row.contacts_by_stage,
            "without_stage": row.contacts_without_stage,
            "transitions": row.transitions,
            "last": (row.last_contact_at, plain(run, row.last_contact_lead)),
        },
        "history": history,
        "contacts": contact_list,
    }


async def published(sessions: SessionFactory, account: str) -> list[dict[str, Any]]:
    async with sessions() as session:
        payloads = await session.scalars(
            select(OutboxRecord.payload)
            .where(OutboxRecord.topic == ACCOUNT_TOPIC, OutboxRecord.key == account.encode())
            .order_by(OutboxRecord.id)
        )
        return [json.loads(p) for p in payloads]


async def history_ids(sessions: SessionFactory, account: str) -> set[str]:
    async with sessions() as session:
        return set(
            await session.scalars(
                select(AccountTransition.change_id).where(AccountTransition.account_id == account)
            )
        )


def live_changes(facts: Sequence[dict[str, Any]]) -> list[str]:
    """The AccountStageChanged ids a consumer applying the facts in order ends with;
    asserts that no change is announced twice while it stands."""
    live: list[str] = []
    for fact in facts:
        if fact["event"] == "AccountHistoryCorrected":
            for withdrawn in fact["withdrawn_change_ids"]:
                live.remove(withdrawn)
        else:
            assert fact["event"] == "AccountStageChanged"
            assert fact["change_id"] not in live, "published twice"
            live.append(fact["change_id"])
    return live


# -- a buying group of 8 on b2b-six-stage (quorum: 2 contacts at Engagement) ------------

BUYING_GROUP = [  # (contact, type, minute): contact moves in the comments
    ("c1", "page_view", 1),  # c1 Awareness
    ("c2", "page_view", 2),  # c2 Awareness
    ("c3", "content_download", 3),  # c3 Interest
    ("c4", "page_view", 4),  # c4 Awareness
    ("c1", "demo_requested", 5),  # c1 Action
    ("c1", "call", 6),  # c1 Engagement: alone there, no quorum
    ("c1", "meeting_scheduled", 7),  # c1 Opportunity: still alone past Action
    ("c5", "page_view", 8),
    ("c2", "webinar_attended", 9),  # c2 Engagement: quorum (c1, c2)
    ("c6", "content_download", 10),  # c6 Interest
    ("c7", "page_view", 11),
    ("c8", "page_view", 12),
    ("c1", "deal_lost", 13),  # c1 Lost: only c2 left past Action
    ("c3", "call", 14),  # c3 Engagement: quorum again (c2, c3)
    ("c2", "meeting_scheduled", 15),  # c2 Opportunity
    ("c2", "deal_won", 16),  # c2 Customer
]
CONTACTS = [f"c{n}" for n in range(1, 9)]

# Hand-computed: the account's stage after each contact event that changes it.
BUYING_GROUP_HISTORY = [
    (1, None, "Awareness", "entered", "c1", 1),
    (2, "Awareness", "Interest", "advanced", "c3", 3),
    (3, "Interest", "Action", "advanced", "c1", 5),
    # c2 reaches Engagement: two contacts at Engagement or beyond, so the account
    # goes to its furthest contact's stage, c1's Opportunity.
    (4, "Action", "Opportunity", "skipped", "c2", 9),
    # c1 lost: one contact past Action, so back to the stage before the quorum's.
    (5, "Opportunity", "Action", "regressed", "c1", 13),
    (6, "Action", "Engagement", "advanced", "c3", 14),
    (7, "Engagement", "Opportunity", "advanced", "c2", 15),
    (8, "Opportunity", "Customer", "advanced", "c2", 16),
]


def buying_group_records(run: str) -> list[Record]:
    return [
        record(run, lead, kind, minute, offset)
        for offset, (lead, kind, minute) in enumerate(BUYING_GROUP)
    ]


def expected_history(
    events: Sequence[tuple[str, str, int]], rows: Sequence[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """The hand-computed rows, with the causing event's id and time filled in."""
    kinds = {(lead, minute): kind for lead, kind, minute in events}
    return [
        (seq, f, t, k, lead, f"{lead}/{kinds[(lead, m)]}/{m}", at(m))
        for seq, f, t, k, lead, m in rows
    ]


async def test_a_buying_group_of_eight_moves_by_the_quorum_rule(sessions: SessionFactory) -> None:
    run = secrets.token_hex(4)
    account = f"{run}-acme"
    await attach(sessions, account, [f"{run}-{c}" for c in CONTACTS])
    records = buying_group_records(run)
    await apply(sessions, [records[i : i + 3] for i in range(0, len(records), 3)], [B2B], run)

    state = await account_state(sessions, run, account, B2B)
    assert state["history"] == expected_history(BUYING_GROUP, BUYING_GROUP_HISTORY)
    assert state["stage"] == {
        "stage": "Customer",
        "entered": at(16),
        "contacts": 8,
        "by_stage": {"Awareness": 4, "Interest": 1, "Engagement": 1, "Customer": 1, "Lost": 1},
        "without_stage": 0,
        "transitions": 8,
        "last": (at(16), "c2"),
    }
    assert state["contacts"] == CONTACTS

    facts = await published(sessions, account)
    assert [f["event"] for f in facts] == ["AccountStageChanged"] * 8
    assert [(f["from_stage"], f["to_stage"], f["transition"]) for f in facts] == [
        (f, t, k) for _, f, t, k, _, _ in BUYING_GROUP_HISTORY
    ]
    assert {f["change_id"] for f in facts} == await history_ids(sessions, account)
    assert facts[3] == {
        "event": "AccountStageChanged",
        "schema_version": 1,
        "change_id": facts[3]["change_id"],
        "funnel": "b2b-six-stage",
        "funnel_version": 2,
        "account_id": account,
        "from_stage": "Action",
        "to_stage": "Opportunity",
        "transition": "skipped",
        "account_rule": {"kind": "quorum", "stage": "Engagement", "contacts": 2},
        "caused_by": {
            "lead_id": f"{run}-c2",
            "source": "accounts-test",
            "event_id": f"{run}/c2/webinar_attended/9",
            "type": "webinar_attended",
        },
        "occurred_at": at(9).isoformat(),
    }

    # Redelivered: nothing changes, nothing more is published.
    await apply(sessions, [records], [B2B], run)
    assert await account_state(sessions, run, account, B2B) == state
    assert len(await published(sessions, account)) == 8


# -- the furthest rule on six-stage-loyalty ----------------------------------------------

LOYALTY_EVENTS = [
    ("a", "page_view", 1),  # a Awareness
    ("b", "demo_requested", 2),  # b Evaluation
    ("a", "webinar_attended", 3),  # a Engagement
    ("c", "deal_won", 4),  # c Purchase
    ("c", "referral", 5),  # c Loyalty
    ("c", "renewal", 6),  # c back to Purchase: the loyalty loop
    ("c", "deal_lost", 7),  # c Lost
    ("a", "deal_lost", 8),  # a Lost
    ("b", "deal_lost", 9),  # b Lost: nobody counts any more
]
LOYALTY_HISTORY = [
    (1, None, "Awareness", "entered", "a", 1),
    (2, "Awareness", "Evaluation", "skipped", "b", 2),
    (3, "Evaluation", "Engagement", "advanced", "a", 3),
    (4, "Engagement", "Purchase", "advanced", "c", 4),
    (5, "Purchase", "Loyalty", "advanced", "c", 5),
    (6, "Loyalty", "Purchase", "looped", "c", 6),
    (7, "Purchase", "Engagement", "regressed", "c", 7),
    (8, "Engagement", "Evaluation", "regressed", "a", 8),
    (9, "Evaluation", None, "exited", "b", 9),
]


async def test_the_furthest_contact_sets_the_account_stage(sessions: SessionFactory) -> None:
    run = secrets.token_hex(4)
    account = f"{run}-globex"
    await attach(sessions, account, [f"{run}-{c}" for c in "abc"])
    records = [
        record(run, lead, kind, minute, n) for n, (lead, kind, minute) in enumerate(LOYALTY_EVENTS)
    ]
    await apply(sessions, [records[:4], records[4:]], [LOYALTY], run)

    state = await account_state(sessions, run, account, LOYALTY)
    assert state["history"] == expected_history(LOYALTY_EVENTS, LOYALTY_HISTORY)
    assert state["stage"] is not None
    assert (state["stage"]["stage"], state["stage"]["by_stage"]) == (None, {"Lost": 3})
    facts = await published(sessions, account)
    assert [(f["to_stage"], f["transition"]) for f in facts] == [
        (t, k) for _, _, t, k, _, _ in LOYALTY_HISTORY
    ]


# -- a late contact event rewrites the account's history ---------------------------------


async def test_a_late_contact_event_rewrites_the_account_history(sessions: SessionFactory) -> None:
    run = secrets.token_hex(4)
    account = f"{run}-initech"
    await attach(sessions, account, [f"{run}-x", f"{run}-y"])
    first = [
        record(run, "x", "page_view", 1),
        record(run, "y", "page_view", 2),
        record(run, "x", "call", 10),  # x Engagement alone: the account is at Action
    ]
    await apply(sessions, [first], [B2B], run)
    before = await account_state(sessions, run, account, B2B)
    assert [(f, t, k, lead) for _, f, t, k, lead, _, _ in before["history"]] == [
        (None, "Awareness", "entered", "x"),
        ("Awareness", "Action", "skipped", "x"),
    ]
    withdrawn = (await published(sessions, account))[1]["change_id"]

    # y's call happened at minute 5, before x's: it arrives now. For lead y it is in
    # order; for the account it sorts before what is folded.
    await apply(sessions, [[record(run, "y", "call", 5)]], [B2B], run)
    after = await account_state(sessions, run, account, B2B)
    assert [(s, f, t, k, lead, m) for s, f, t, k, lead, _, m in after["history"]] == [
        (1, None, "Awareness", "entered", "x", at(1)),
        (2, "Awareness", "Action", "skipped", "y", at(5)),
        (3, "Action", "Engagement", "advanced", "x", at(10)),
    ]
    assert after["stage"] is not None
    assert after["stage"]["stage"] == "Engagement"
    facts = await published(sessions, account)
    assert [f["event"] for f in facts] == [
        "AccountStageChanged",
        "AccountStageChanged",
        "AccountHistoryCorrected",
        "AccountStageChanged",
        "AccountStageChanged",
    ]
    assert facts[2]["withdrawn_change_ids"] == [withdrawn]
    assert facts[2]["stage"] == "Engagement"
    assert sorted(live_changes(facts)) == sorted(await history_ids(sessions, account))

    # The same events in time order, in one batch, for another account: the same state.
    other = secrets.token_hex(4)
    await attach(sessions, f"{other}-initech", [f"{other}-x", f"{other}-y"])
    in_order = [
        record(other, "x", "page_view", 1),
        record(other, "y", "page_view", 2),
        record(other, "y", "call", 5),
        record(other, "x", "call", 10),
    ]
    await apply(sessions, [in_order], [B2B], other)
    assert await account_state(sessions, other, f"{other}-initech", B2B) == after


# -- any batching, order or interleaving of processes gives the same account state --------


async def test_batchings_orders_and_concurrent_processes_give_the_same_state(
    sessions: SessionFactory,
) -> None:
    clean = secrets.token_hex(4)
    await attach(sessions, f"{clean}-acme", [f"{clean}-{c}" for c in CONTACTS])
    await apply(sessions, [buying_group_records(clean)], [B2B, LOYALTY], clean)
    expected = {
        f.name: await account_state(sessions, clean, f"{clean}-acme", f) for f in (B2B, LOYALTY)
    }

    rng = random.Random(4)
    for attempt in range(3):
        run = secrets.token_hex(4)
        account = f"{run}-acme"
        await attach(sessions, account, [f"{run}-{c}" for c in CONTACTS])
        records = buying_group_records(run)
        # Contacts live on two partitions, each with its own engine process: each
        # partition keeps its contacts' events in order, the two interleave at random.
        partitions: list[list[Record]] = [[], []]
        for r, (lead, _, _) in zip(records, BUYING_GROUP, strict=True):
            partitions[int(lead[1:]) % 2].append(r)
        if attempt == 2:  # and arrival order is not event time within a partition either
            for partition in partitions:
                rng.shuffle(partition)

        async def process(partition: list[Record], run: str = run) -> None:
            while partition:
                size = rng.randint(1, 3)
                batch, partition[:size] = partition[:size], []
                await apply(sessions, [batch], [B2B, LOYALTY], run)
                await asyncio.sleep(rng.random() / 100)

        await asyncio.gather(*(process(p) for p in partitions))
        await apply(sessions, [records[:5]], [B2B, LOYALTY], run)  # a redelivery
        for funnel in (B2B, LOYALTY):
            actual = await account_state(sessions, run, account, funnel)
            assert actual == expected[funnel.name], (attempt, funnel.name)
        facts = await published(sessions, account)
        assert sorted(live_changes(facts)) == sorted(await history_ids(sessions, account))


# -- a contact attached after its events were folded --------------------------------------


async def test_a_contact_attached_after_the_fact_counts_from_its_first_transition(
    sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(4)
    account = f"{run}-hooli"
    await attach(sessions, account, [f"{run}-p"])
    await apply(
        sessions,
        [
            [
                record(run, "p", "page_view", 1),
                record(run, "q", "page_view", 2),  # q has no account yet
                record(run, "q", "webinar_attended", 3),
                record(run, "p", "call", 4),
            ]
        ],
        [B2B],
        run,
    )
    alone = await account_state(sessions, run, account, B2B)
    assert [(t, lead) for _, _, t, _, lead, _, _ in alone["history"]] == [
        ("Awareness", "p"),
        ("Action", "p"),  # p at Engagement, alone: no quorum
    ]

    # Ingest links q to the account later (its link committed after the engine folded
    # q's events): the sweep finds the difference and refolds the account.
    await attach(sessions, f"{run}-other", [])
    async with unit_of_work(sessions) as session:
        await session.merge(
            LeadAccount(lead_id=f"{run}-q", account_id=account, attached_by="explicit")
        )
    async with unit_of_work(sessions) as session:
        refolded, _ = await sweep_memberships(session, [B2B], ACCOUNT_TOPIC, since=T0)
    assert account in refolded
    joined = await account_state(sessions, run, account, B2B)
    assert [(s, f, t, k, lead, m) for s, f, t, k, lead, _, m in joined["history"]] == [
        (1, None, "Awareness", "entered", "p", at(1)),
        (2, "Awareness", "Action", "skipped", "q", at(3)),  # q at Engagement, alone
        (3, "Action", "Engagement", "advanced", "p", at(4)),  # the quorum: p and q
    ]
    assert joined["contacts"] == ["p", "q"]
    async with unit_of_work(sessions) as session:
        again, _ = await sweep_memberships(session, [B2B], ACCOUNT_TOPIC, since=T0)
    assert account not in again  # nothing left to reconcile

    # q moves to another account (an explicit link): both accounts are refolded on
    # q's next event.
    async with unit_of_work(sessions) as session:
        await session.merge(
            LeadAccount(lead_id=f"{run}-q", account_id=f"{run}-other", attached_by="explicit")
        )
    await apply(sessions, [[record(run, "q", "email_opened", 5)]], [B2B], run)
    left = await account_state(sessions, run, account, B2B)
    assert [(t, lead) for _, _, t, _, lead, _, _ in left["history"]] == [
        ("Awareness", "p"),
        ("Action", "p"),
    ]
    assert left["contacts"] == ["p"]
    moved = await account_state(sessions, run, f"{run}-other", B2B)
    assert [(t, lead) for _, _, t, _, lead, _, _ in moved["history"]] == [
        ("Awareness", "q"),
        ("Action", "q"),
    ]
    facts = await published(sessions, account)
    assert sorted(live_changes(facts)) == sorted(await history_ids(sessions, account))


async def test_a_late_contact_exit_can_withdraw_a_later_account_move(
    sessions: SessionFactory,
) -> None:
    run = secrets.token_hex(4)
    account = f"{run}-vandelay"
    await attach(sessions, account, [f"{run}-x", f"{run}-y", f"{run}-z"])
    await apply(
        sessions,
        [
            [record(run, "x", "call", 1)],  # x Engagement alone: account at Action
            [record(run, "y", "demo_requested", 2)],  # y Action
            [record(run, "z", "call", 10)],  # z Engagement: quorum, account Engagement
        ],
        [B2B],
        run,
    )
    before = await account_state(sessions, run, account, B2B)
    assert [(t, k, lead) for _, _, t, k, lead, _, _ in before["history"]] == [
        ("Action", "entered", "x"),
        ("Engagement", "advanced", "z"),
    ]
    # x was lost at minute 5 (in order for x, late for the account): from then on only
    # z is past Action, so z's call no longer makes a quorum and the account stays at
    # Action, where it has been since minute 1.
    await apply(sessions, [[record(run, "x", "deal_lost", 5)]], [B2B], run)
    after = await account_state(sessions, run, account, B2B)
    assert [(s, t, k, lead, m) for s, _, t, k, lead, _, m in after["history"]] == [
        (1, "Action", "entered", "x", at(1))
    ]
    assert after["stage"] is not None
    assert (after["stage"]["stage"], after["stage"]["entered"]) == ("Action", at(1))
    assert after["stage"]["transitions"] == 1
    assert after["stage"]["last"] == (at(10), "z")
    facts = await published(sessions, account)
    assert [f["event"] for f in facts] == [
        "AccountStageChanged",
        "AccountStageChanged",
        "AccountHistoryCorrected",
    ]
    assert facts[2]["withdrawn_change_ids"] == [facts[1]["change_id"]]
    assert (facts[2]["stage"], facts[2]["stage_entered_at"]) == ("Action", at(1).isoformat())

    # The same events in time order give the same state.
    other = secrets.token_hex(4)
    await attach(sessions, f"{other}-vandelay", [f"{other}-x", f"{other}-y", f"{other}-z"])
    in_order = [
        record(other, "x", "call", 1),
        record(other, "y", "demo_requested", 2),
        record(other, "x", "deal_lost", 5),
        record(other, "z", "call", 10),
    ]
    await apply(sessions, [in_order], [B2B], other)
    assert await account_state(sessions, other, f"{other}-vandelay", B2B) == after
