"""Identity resolution and account attachment against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.models import Account, Identity, IdentityMerge, LeadAccount
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Account as AccountIn
from leadstage.events import Touchpoint, TouchpointIn
from leadstage_ingest.identity import (
    Alias,
    Driver,
    attach_accounts,
    resolve_leads,
    revert_merge,
)
from leadstage_ingest.service import claim_and_resolve_single

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def touch(**fields: Any) -> Touchpoint:
    return Touchpoint.accept(
        TouchpointIn(type="page_view", occurred_at=NOW, **fields),
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


async def attach(sessions: SessionFactory, *events: Touchpoint) -> dict[str, AccountIn]:
    async with unit_of_work(sessions) as session:
        leads = await resolve_leads(session, events)
        return await attach_accounts(session, events, leads)


async def link_of(sessions: SessionFactory, lead: str) -> tuple[str, str]:
    async with sessions() as session:
        link = await session.get(LeadAccount, lead)
    assert link is not None
    return link.account_id, link.attached_by


async def test_a_merged_leads_account_follows_it_to_the_known_lead(
    sessions: SessionFactory,
) -> None:
    # A browser's usual order: `group` for the anonymous visitor, then `identify`.
    anonymous, user, group = f"anon-{t()}", f"u-{t()}", f"acct-{t()}"
    await attach(sessions, touch(anonymous_id=anonymous, account={"id": group}))
    assert await resolve(sessions, touch(lead_id=user, anonymous_id=anonymous)) == [user]
    assert await link_of(sessions, user) == (group, "explicit")

    # An explicit link of the absorbed lead replaces the known lead's email-domain one,
    # and never the other way round.
    other_anonymous, other_user = f"anon-{t()}", f"u-{t()}"
    await attach(
        sessions,
        touch(lead_id=other_user, email=f"x@d-{t()}.example"),
        touch(anonymous_id=other_anonymous, account={"id": group}),
    )
    await resolve(sessions, touch(lead_id=other_user, anonymous_id=other_anonymous))
    assert await link_of(sessions, other_user) == (group, "explicit")

    # Never the other way round: the known lead's explicit link stays, and so does its
    # link by email domain against the absorbed lead's by email domain.
    for kept in ("explicit", "email_domain"):
        anonymous_b, user_b = f"anon-{t()}", f"u-{t()}"
        own: dict[str, Any] = (
            {"account": {"id": f"own-{t()}"}}
            if kept == "explicit"
            else {"email": f"x@own-{t()}.example"}
        )
        known = touch(lead_id=user_b, **own)
        attached = await attach(
            sessions, known, touch(anonymous_id=anonymous_b, email=f"y@other-{t()}.example")
        )
        await resolve(sessions, touch(lead_id=user_b, anonymous_id=anonymous_b))
        assert await link_of(sessions, user_b) == (attached[known.event_id].id, kept)


async def claim_single(
    database: AsyncEngine, *events: Touchpoint
) -> tuple[set[tuple[str, str]], dict[str, str]]:
    """Ingest's one-call path for single-identifier groups, in its own transaction."""
    async with database.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: Driver | None = raw.driver_connection
        assert driver is not None
        async with driver.transaction():
            return await claim_and_resolve_single(driver, list(events))


async def test_the_single_identifier_path_resolves_as_the_session_path_does(
    database: AsyncEngine, sessions: SessionFactory
) -> None:
    anonymous, other, known, merged = f"anon-{t()}", f"anon-{t()}", f"l-{t()}", f"m-{t()}"
    # The identifiers already known: an anonymous visitor who filled in a form (merged
    # into the known lead), and a lead merged into the known one by an alias.
    await resolve(sessions, touch(anonymous_id=anonymous))
    await resolve(sessions, touch(anonymous_id=anonymous, lead_id=known))
    alias = touch(lead_id=known)
    await resolve(sessions, touch(lead_id=merged))
    await resolve(sessions, alias, aliases=[Alias(alias.event_id, merged)])

    events = [
        touch(anonymous_id=anonymous),  # owned by the known lead since the form fill
        touch(lead_id=merged),  # merged into the known lead
        touch(anonymous_id=other),  # first sighting: a provisional lead
        touch(anonymous_id=other),  # the same visitor again, in the same group
        touch(lead_id=f"new-{t()}"),  # first sighting of a lead id
    ]
    claimed, leads = await claim_single(database, *events)
    assert claimed == {(e.source, e.event_id) for e in events}
    expected = [known, known, f"anon:{other}", f"anon:{other}", events[4].lead_id]
    assert [leads[e.event_id] for e in events] == expected
    # The new identities are recorded: the session path now finds the same owners.
    new_lead = events[4].lead_id
    assert new_lead is not None
    found = await resolve(sessions, touch(anonymous_id=other), touch(lead_id=new_lead))
    assert found == expected[3:]

    # A repeat is not claimed again and not resolved; a fresh event in its group is.
    again = touch(anonymous_id=other)
    claimed, leads = await claim_single(database, events[0], again)
    assert claimed == {(again.source, again.event_id)}
    assert leads == {again.event_id: f"anon:{other}"}


async def domain_of(sessions: SessionFactory, account_id: str) -> str | None:
    async with sessions() as session:
        account = await session.get(Account, account_id)
    assert account is not None
    return account.domain


async def test_a_named_account_takes_its_domain_and_contacts_from_the_made_up_one(
    sessions: SessionFactory,
) -> None:
    # Contacts known by their work email first: LeadStage makes up "domain:<domain>".
    domain, named = f"acme-{t()}.example", f"crm-{t()}"
    bob, carol, dave = f"bob-{t()}", f"carol-{t()}", f"dave-{t()}"
    await attach(sessions, touch(lead_id=bob, email=f"bob@{domain}"))
    assert await link_of(sessions, bob) == (f"domain:{domain}", "email_domain")

    # Then a group call names the company's account, with its website.
    attached = await attach(sessions, touch(lead_id=carol, account={"id": named, "domain": domain}))
    assert [a.id for a in attached.values()] == [named]
    assert await link_of(sessions, carol) == (named, "explicit")
    # One company, one account: the earlier contact moved, and the domain with it.
    assert await link_of(sessions, bob) == (named, "email_domain")
    assert await domain_of(sessions, named) == domain
    assert await domain_of(sessions, f"domain:{domain}") is None
    # A later colleague joins the named account by email.
    await attach(sessions, touch(lead_id=dave, email=f"dave@{domain}"))
    assert await link_of(sessions, dave) == (named, "email_domain")


async def test_in_one_group_the_named_account_owns_the_domain_whatever_the_order(
    sessions: SessionFactory,
) -> None:
    domain, named = f"acme-{t()}.example", f"crm-{t()}"
    by_email, by_group = f"l-{t()}", f"l-{t()}"
    await attach(
        sessions,
        touch(lead_id=by_email, email=f"x@{domain}"),
        touch(lead_id=by_group, account={"id": named, "domain": domain}),
    )
    assert await link_of(sessions, by_email) == (named, "email_domain")
    assert await link_of(sessions, by_group) == (named, "explicit")
    assert await domain_of(sessions, named) == domain


async def test_a_domain_another_named_account_owns_stays_with_it(
    sessions: SessionFactory,
) -> None:
    domain, first, second = f"acme-{t()}.example", f"crm-{t()}", f"crm-{t()}"
    early, late, colleague = f"l-{t()}", f"l-{t()}", f"l-{t()}"
    await attach(sessions, touch(lead_id=early, account={"id": first, "domain": domain}))
    await attach(sessions, touch(lead_id=late, account={"id": second, "domain": domain}))
    assert await link_of(sessions, late) == (second, "explicit")
    assert await domain_of(sessions, first) == domain
    assert await domain_of(sessions, second) is None
    await attach(sessions, touch(lead_id=colleague, email=f"c@{domain}"))
    assert await link_of(sessions, colleague) == (first, "email_domain")


async def test_a_takeover_and_groups_using_the_same_accounts_run_concurrently(
    sessions: SessionFactory,
) -> None:
    # A takeover locks the made-up account, then the named one; a group attaching a
    # contact by email and another by the named id locks them in id order. Without the
    # domain lock these deadlocked, or re-attached the handed-over domain (a unique
    # violation). Several rounds, each on a fresh company, all at once.
    async def round_of_groups() -> tuple[str, list[str]]:
        domain, named = f"acme-{t()}.example", f"crm-{t()}"
        await attach(sessions, touch(lead_id=f"bob-{t()}", email=f"bob@{domain}"))
        colleagues = [f"c-{t()}" for _ in range(3)]
        await asyncio.gather(
            attach(
                sessions, touch(lead_id=f"carol-{t()}", account={"id": named, "domain": domain})
            ),
            *(
                attach(
                    sessions,
                    touch(lead_id=f"g-{t()}", account={"id": named}),
                    touch(lead_id=colleague, email=f"{colleague}@{domain}"),
                )
                for colleague in colleagues
            ),
        )
        return named, colleagues

    for named, colleagues in await asyncio.gather(*(round_of_groups() for _ in range(6))):
        # Whichever committed first, the domain ends with the named account, and so do
        # the colleagues attached by it (moved by the takeover, or found by the domain).
        assert await domain_of(sessions, named) is not None
        for colleague in colleagues:
            assert await link_of(sessions, colleague) == (named, "email_domain")
