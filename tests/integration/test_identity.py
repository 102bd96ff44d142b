"""Identity resolution and account attachment against the real PostgreSQL."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import select

from leadstage.db.models import Account, Identity, IdentityMerge
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage_ingest.identity import Alias, attach_accounts, resolve_leads, revert_merge

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def touch(**ids: str) -> Touchpoint:
    return Touchpoint.accept(
        TouchpointIn(type="page_view", occurred_at=NOW, **ids),
        source="test",
        received_at=NOW,
    )


async def resolve(
    sessions: SessionFactory, *events: Touchpoint, aliases: list[Alias] | None = None
) -> list[str]:
    async with unit_of_work(sessions) as session:
        leads = await resolve_leads(session, events, aliases or [])
    return [leads[e.event_id] for e in events]


def t() -> str:
    return secrets.token_hex(4)


async def test_two_known_leads_sharing_an_email_are_not_merged_implicitly(
    sessions: SessionFactory,
) -> None:
    email, a, b = f"{t()}@corp.example", f"a-{t()}", f"b-{t()}"
    assert await resolve(sessions, touch(lead_id=a, email=email)) == [a]
    assert await resolve(sessions, touch(lead_id=b, email=email)) == [b]
    assert await resolve(sessions, touch(email=email)) == [a]  # the email stays with its owner


async def test_alias_merges_and_the_merge_can_be_reverted(sessions: SessionFactory) -> None:
    old, new, anonymous = f"old-{t()}", f"new-{t()}", f"anon-{t()}"
    await resolve(sessions, touch(lead_id=old, anonymous_id=anonymous))
    alias = touch(lead_id=new)
    assert await resolve(sessions, alias, aliases=[Alias(alias.event_id, old)]) == [new]
    # Everything that pointed at the old lead now resolves to the new one.
    assert await resolve(sessions, touch(anonymous_id=anonymous), touch(lead_id=old)) == [new, new]

    async with unit_of_work(sessions) as session:
        merge = await session.scalar(select(IdentityMerge).where(IdentityMerge.from_lead == old))
        assert merge is not None
        assert merge.reason == "alias"
        assert await revert_merge(session, merge.id)
        assert not await revert_merge(session, merge.id)  # only once
    assert await resolve(sessions, touch(anonymous_id=anonymous)) == [old]
    async with sessions() as session:
        owner = await session.scalar(
            select(Identity.lead_id).where(Identity.kind == "lead_id", Identity.value == old)
        )
    assert owner == old


async def test_merges_in_one_batch_follow_to_the_final_lead(sessions: SessionFactory) -> None:
    anonymous, email, lead = f"anon-{t()}", f"{t()}@corp.example", f"lead-{t()}"
    leads = await resolve(
        sessions,
        touch(anonymous_id=anonymous),
        touch(anonymous_id=anonymous, email=email),
        touch(email=email, lead_id=lead),
    )
    assert leads == [lead, lead, lead]


async def test_accounts_keep_known_firmographics_and_domains_stay_unique(
    sessions: SessionFactory,
) -> None:
    domain = f"corp-{t()}.example"
    first = Touchpoint.accept(
        TouchpointIn(
            type="page_view",
            occurred_at=NOW,
            lead_id=f"l-{t()}",
            account={"id": f"acct-{t()}", "domain": domain, "industry": "software", "tier": 1},
        ),
        source="crm",
        received_at=NOW,
    )
    later = Touchpoint.accept(
        TouchpointIn(type="page_view", occurred_at=NOW, lead_id=f"l-{t()}", email=f"eve@{domain}"),
        source="web",
        received_at=NOW,
    )
    async with unit_of_work(sessions) as session:
        leads = await resolve_leads(session, [first, later])
        attached = await attach_accounts(session, [first, later], leads)
    assert first.account is not None
    assert attached[later.event_id].id == first.account.id  # found by the email's domain
    async with sessions() as session:
        account = await session.get(Account, first.account.id)
    assert account is not None
    assert (account.domain, account.industry, account.tier) == (domain, "software", 1)
