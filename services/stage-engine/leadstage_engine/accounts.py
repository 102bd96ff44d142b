"""Account (buying-group) state: each account's stage and history in each funnel.

An account's state in a funnel is a pure function of two inputs:

* its contacts: the leads ``lead_accounts`` (ingest) attaches to it that the
  engine has folded in that funnel (a ``lead_stages`` row);
* their lead transitions in that funnel.

The fold takes every contact transition in the account order ``(occurred_at,
lead_key, source, event_id)`` (each lead's own transitions keep their order),
starting with every contact in no stage. After each one it recomputes the
account's stage with the funnel's account rule (:meth:`Funnel.account_stage_of`)
and records an account transition whenever the stage changes, naming the contact
event that changed it. A contact attached after the fact counts from its first
transition, as if it had always belonged to the account.

Contacts of one account live on different partitions, so different engine
processes may change them at once. Every transaction that changes a contact (a
transition, a rewritten history, a new or moved contact) takes the account's
advisory lock, in one global order, and only then reads the account's stored
state and its contacts' transitions. Under READ COMMITTED each statement after
the lock sees everything committed before it, so whoever commits last has folded
every contact transition committed before it plus its own: the stored state
always equals the pure function of what is committed, whatever the interleaving.

Three ways to take a batch, all giving the same state. *Append*: every new contact
transition sorts after the last one folded; the fold continues from the stored
counts. *Rewind*: some sort before it (contacts on partitions that lag each other);
the folded contact transitions after the earliest new one are undone from the
counts, the stage is taken back to the history row before them, and that tail is
folded again with the new ones. *Refold* from all contacts' transitions: no stored
state, or a contact attached after the fact, moved away, or whose own history was
rewritten.

Published: an ``AccountStageChanged`` (to the account topic, keyed by account)
for each account transition that is new relative to the stored history, and an
``AccountHistoryCorrected`` listing the ``withdrawn_change_ids`` when a refold
drops stored transitions (a contact's late event, a contact on another partition
whose earlier transitions were committed after later ones of another contact, a
contact attached or moved after the fact). Change ids are deterministic, so a
replay after a crash writes the same facts; which intermediate facts are
published (and later withdrawn) can depend on how partitions interleave, the
final history never does.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, tuple_, union
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.bulk import copy_rows, upsert_rows
from leadstage.db.models import (
    AccountContact,
    AccountStage,
    AccountTransition,
    LeadAccount,
    LeadStage,
    LeadTransition,
    OutboxRecord,
    table,
)
from leadstage.funnels import Funnel
from leadstage_engine.changes import change_id, outbox_row

logger = logging.getLogger(__name__)

#: How far back the membership sweep looks before its previous run: ``attached_at``
#: is the start of ingest's transaction, which commits up to a produce timeout later.
SWEEP_MARGIN = timedelta(minutes=10)

ContactKey = tuple[datetime, str, str, str]  # occurred_at, lead_key, source, event_id
Row = Mapping[Any, Any]  # a result row's mapping


@dataclass(frozen=True)
class ContactTransition:
    """A lead transition, as the account fold reads it."""

    lead_key: str
    source: str
    event_id: str
    event_type: str
    from_stage: str | None
    to_stage: str
    occurred_at: datetime

    @property
    def key(self) -> ContactKey:
        return (self.occurred_at, self.lead_key, self.source, self.event_id)

    @classmethod
    def of(cls, transition: Row) -> ContactTransition:
        return cls(
            lead_key=transition["lead_key"],
            source=transition["source"],
            event_id=transition["event_id"],
            event_type=transition["event_type"],
            from_stage=transition["from_stage"],
            to_stage=transition["to_stage"],
            occurred_at=transition["occurred_at"].astimezone(UTC),
        )


@dataclass(frozen=True)
class LeadChanges:
    """What one batch did to its leads, as the account step needs it."""

    leads: Sequence[str]
    # (funnel, lead) -> the transitions this batch appended, in the lead's order.
    transitions: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]
    # (funnel, lead) whose stored history was rewritten (a late event).
    rewritten: Collection[tuple[str, str]]
    # (funnel, lead) folded for the first time in this batch.
    new: Collection[tuple[str, str]]
    # Leads merged into another now: they are no one's contact any more.
    merged: Collection[str] = ()

    def moved(self, lead: str, funnels: Iterable[Funnel]) -> bool:
        return any(
            self.transitions.get((f.name, lead))
            or (f.name, lead) in self.rewritten
            or (f.name, lead) in self.new
            for f in funnels
        )


class _InconsistentStateError(Exception):
    """A stored account state does not match its contacts: refold it."""


@dataclass
class AccountFold:
    """One account's state in one funnel, folded contact transition by transition."""

    funnel: Funnel
    account_id: str
    stage: str | None = None
    stage_entered_at: datetime | None = None
    # Contacts per current stage or exit; None: no stage yet.
    contacts: dict[str | None, int] = field(default_factory=dict)
    last_key: ContactKey | None = None
    seq: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # transitions folded here

    def join(self, count: int = 1) -> None:
        self.contacts[None] = self.contacts.get(None, 0) + count

    def undo(self, transition: ContactTransition) -> None:
        """Take a folded contact transition back out of the contact counts (rewinding)."""
        self._move_contact(transition.to_stage, transition.from_stage)

    def _move_contact(self, stage: str | None, to: str | None) -> None:
        held = self.contacts.get(stage, 0)
        if held <= 0:
            raise _InconsistentStateError(stage)
        if held == 1:
            del self.contacts[stage]
        else:
            self.contacts[stage] = held - 1
        self.contacts[to] = self.contacts.get(to, 0) + 1

    def apply(self, transition: ContactTransition) -> None:
        self._move_contact(transition.from_stage, transition.to_stage)
        self.last_key = transition.key
        funnel = self.funnel
        stage = funnel.account_stage_of([self.contacts.get(s, 0) for s in funnel.stages])
        if stage == self.stage:
            return
        kind = funnel.account_move(self.stage, stage)
        self.seq += 1
        self.history.append(
            {
                "funnel": funnel.name,
                "account_id": self.account_id,
                "seq": self.seq,
                "from_stage": self.stage,
                "to_stage": stage,
                "kind": kind,
                "lead_key": transition.lead_key,
                "source": transition.source,
                "event_id": transition.event_id,
                "event_type": transition.event_type,
                "occurred_at": transition.occurred_at,
                "change_id": change_id(
                    "account",
                    funnel.name,
                    self.account_id,
                    transition.lead_key,
                    transition.source,
                    transition.event_id,
                    self.stage,
                    stage,
                    kind,
                ),
            }
        )
        self.stage, self.stage_entered_at = stage, transition.occurred_at

    @classmethod
    def stored(cls, funnel: Funnel, row: Row) -> AccountFold:
        """The fold as an ``account_stages`` row stored it."""
        contacts: dict[str | None, int] = {k: int(v) for k, v in row["contacts_by_stage"].items()}
        if row["contacts_without_stage"]:
            contacts[None] = row["contacts_without_stage"]
        last = (
            (
                row["last_contact_at"].astimezone(UTC),
                row["last_contact_lead"],
                row["last_contact_source"],
                row["last_contact_event_id"],
            )
            if row["last_contact_at"] is not None
            else None
        )
        return cls(
            funnel,
            row["account_id"],
            row["stage"],
            row["stage_entered_at"],
            contacts,
            last,
            row["transitions"],
        )

    def row(self) -> dict[str, Any]:
        last = self.last_key
        return {
            "funnel": self.funnel.name,
            "account_id": self.account_id,
            "funnel_version": self.funnel.version,
            "stage": self.stage,
            "stage_entered_at": self.stage_entered_at,
            "contacts": sum(self.contacts.values()),
            "contacts_without_stage": self.contacts.get(None, 0),
            "contacts_by_stage": {
                stage: count
                for stage, count in sorted(self.contacts.items(), key=_by_name)
                if stage
            },
            "transitions": self.seq,
            "last_contact_at": last[0] if last else None,
            "last_contact_lead": last[1] if last else None,
            "last_contact_source": last[2] if last else None,
            "last_contact_event_id": last[3] if last else None,
        }


def _by_name(item: tuple[str | None, int]) -> str:
    return item[0] or ""


def fold_account(
    funnel: Funnel,
    account_id: str,
    contacts: Collection[str],
    transitions: Iterable[ContactTransition],
) -> AccountFold:
    """The account's state and whole history from its contacts' transitions."""
    fold = AccountFold(funnel, account_id)
    fold.join(len(contacts))
    for transition in sorted(transitions, key=lambda t: t.key):
        fold.apply(transition)
    return fold


# -- the batch step -----------------------------------------------------------------------


async def lock_accounts(session: AsyncSession, account_ids: Iterable[str]) -> None:
    """Take the accounts' advisory locks (until the transaction ends), in one global order.

    Advisory, not ``SELECT ... FOR UPDATE`` on ``accounts``: ingest upserts that row
    on every event that names the account, and must not wait for the engine. Locks
    are taken in the order of their keys, so two processes never wait in a cycle.
    """
    ids = sorted(set(account_ids))
    if ids:
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(k) FROM ("
                " SELECT DISTINCT hashtextextended('leadstage-account:' || a, 0) AS k"
                " FROM unnest(CAST(:ids AS text[])) AS a) AS keys ORDER BY k"
            ),
            {"ids": ids},
        )


async def advance_accounts(
    session: AsyncSession,
    funnels: Sequence[Funnel],
    changes: LeadChanges,
    topic: str | None,
) -> int:
    """Bring the accounts of the batch's changed leads up to date; return the number of
    account transitions added. Runs after the leads' rows are written, in their
    transaction. ``topic``: where account changes are published (None: not published)."""
    leads = sorted(set(changes.leads))
    if not leads:
        return 0
    rows = await session.execute(
        text(
            "SELECT l.lead, la.account_id, ac.account_id"
            " FROM unnest(CAST(:leads AS text[])) AS l(lead)"
            " LEFT JOIN lead_accounts la ON la.lead_id = l.lead"
            " LEFT JOIN account_contacts ac ON ac.lead_key = l.lead"
        ),
        {"leads": leads},
    )
    current: dict[str, str] = {}
    recorded: set[tuple[str, str]] = set()
    for lead, account, counted_in in rows:
        if account is not None:
            current[lead] = account
        if counted_in is not None:
            recorded.add((counted_in, lead))
    accounts = {current[lead] for lead in leads if lead in current and changes.moved(lead, funnels)}
    accounts |= {
        account
        for account, lead in recorded
        if current.get(lead) != account or lead in changes.merged
    }
    accounts |= {account for lead, account in current.items() if (account, lead) not in recorded}
    if not accounts:
        return 0
    await lock_accounts(session, accounts)
    return await _update_accounts(session, funnels, sorted(accounts), current, changes, topic)


@dataclass
class _Plan:
    """How one account's fold in one funnel takes the batch's contact transitions:
    appended to the stored fold, or (``rewind_from``) after rewinding the stored fold
    to just before the earliest of them."""

    fold: AccountFold
    arriving: list[ContactTransition]
    rewind_from: ContactKey | None
    replaced: list[Row] = field(default_factory=list)  # stored history rows


@dataclass
class _Tail:
    """What a rewind reads: the folded contact transitions and the account transitions
    from ``since``'s time on, and when the account entered its stage before them."""

    contact: list[ContactTransition] = field(default_factory=list)
    history: list[Row] = field(default_factory=list)
    entered_before: dict[int, datetime] = field(default_factory=dict)  # seq -> occurred_at


async def _update_accounts(
    session: AsyncSession,
    funnels: Sequence[Funnel],
    accounts: Sequence[str],
    current: Mapping[str, str],
    changes: LeadChanges,
    topic: str | None,
) -> int:
    names = [f.name for f in funnels]
    batch_leads = sorted(changes.leads)
    # Read after the lock: what the account states count now, committed by anyone.
    contacts_table, stages_table = table(AccountContact), table(AccountStage)
    counted = {
        (account, lead)
        for account, lead in await session.execute(
            select(contacts_table.c.account_id, contacts_table.c.lead_key).where(
                contacts_table.c.account_id.in_(accounts),
                contacts_table.c.lead_key.in_(batch_leads),
            )
        )
    }
    stored = {
        (row["account_id"], row["funnel"]): row
        for row in (
            await session.execute(
                select(stages_table).where(
                    stages_table.c.account_id.in_(accounts), stages_table.c.funnel.in_(names)
                )
            )
        ).mappings()
    }
    members_in_batch: dict[str, list[str]] = {}
    for lead in batch_leads:
        if lead in current:
            members_in_batch.setdefault(current[lead], []).append(lead)

    refold = {
        account
        for account, lead in counted
        if current.get(lead) != account or lead in changes.merged
    }
    plans: dict[tuple[str, str], _Plan] = {}
    joined: dict[str, list[str]] = {}
    for account in accounts:
        if account in refold:
            continue
        members = members_in_batch.get(account, [])
        account_plans: dict[tuple[str, str], _Plan] = {}
        for funnel in funnels:
            plan = _plan(
                funnel, account, members, counted, stored.get((account, funnel.name)), changes
            )
            if plan is None:
                refold.add(account)
                break
            account_plans[(account, funnel.name)] = plan
        else:
            plans.update(account_plans)
            joiners = [lead for lead in members if (account, lead) not in counted]
            if joiners:
                joined[account] = joiners

    rewinding = {key: plan for key, plan in plans.items() if plan.rewind_from is not None}
    tails = await _read_tails(session, rewinding) if rewinding else {}
    for key, plan in sorted(plans.items()):
        try:
            if plan.rewind_from is not None:
                _rewind(plan, tails.get(key, _Tail()))
            for transition in plan.arriving:
                plan.fold.apply(transition)
        except _InconsistentStateError:
            logger.warning("account state of %s in %s does not match its contacts; refolding", *key)
            refold.add(key[0])

    by_name = {f.name: f for f in funnels}
    folds: dict[tuple[str, str], AccountFold] = {}
    inserted: list[dict[str, Any]] = []
    replaced: list[int] = []
    outbox: list[dict[str, Any]] = []
    for key, plan in sorted(plans.items()):
        if key[0] in refold:
            continue
        folds[key] = plan.fold
        inserted.extend(plan.fold.history)
        replaced.extend(row["id"] for row in plan.replaced)
        if topic is not None:
            outbox.extend(
                _facts(topic, by_name[key[1]], plan.fold, {r["change_id"] for r in plan.replaced})
            )
    joined = {account: leads for account, leads in joined.items() if account not in refold}
    if refold:
        refolded, facts, added = await _refold(session, funnels, sorted(refold), stored, topic)
        folds.update(refolded)
        outbox.extend(facts)
        inserted.extend(added)
    if joined:
        await upsert_rows(
            session,
            contacts_table,
            [
                {"account_id": account, "lead_key": lead}
                for account, leads in sorted(joined.items())
                for lead in leads
            ],
            key=("account_id", "lead_key"),
            on_conflict="nothing",
        )
    if replaced:
        await session.execute(delete(AccountTransition).where(AccountTransition.id.in_(replaced)))
    await _write(session, folds, inserted, outbox)
    return len(inserted)


def _plan(
    funnel: Funnel,
    account: str,
    members: Sequence[str],
    counted: Collection[tuple[str, str]],
    row: Row | None,
    changes: LeadChanges,
) -> _Plan | None:
    """How the account's stored fold takes the batch's contact transitions, or None if
    the account must be refolded (no stored state; a contact attached after the fact
    or with a rewritten history)."""
    if row is None:
        return None
    fold = AccountFold.stored(funnel, row)
    arriving: list[ContactTransition] = []
    for lead in members:
        key = (funnel.name, lead)
        if key in changes.rewritten:
            return None
        if key in changes.new:
            fold.join()  # no transitions before this batch: counts from the start
        elif (account, lead) not in counted:
            return None  # attached after the fact: its whole history counts
        arriving.extend(ContactTransition.of(t) for t in changes.transitions.get(key, ()))
    arriving.sort(key=lambda t: t.key)
    last = fold.last_key
    rewind = arriving[0].key if arriving and last is not None and arriving[0].key <= last else None
    return _Plan(fold, arriving, rewind)


async def _read_tails(
    session: AsyncSession, rewinding: Mapping[tuple[str, str], _Plan]
) -> dict[tuple[str, str], _Tail]:
    """For each rewinding fold, from its ``rewind_from`` time on: its counted contacts'
    transitions and its stored account transitions (two set-based reads, plus one for
    the times the accounts entered their stage before)."""
    keys = sorted(rewinding)
    windows = {
        "accounts": [account for account, _ in keys],
        "funnels": [funnel for _, funnel in keys],
        "sinces": [rewinding[key].rewind_from[0] for key in keys],  # type: ignore[index]
    }
    tails: dict[tuple[str, str], _Tail] = {key: _Tail() for key in keys}
    for row in (
        await session.execute(
            text(
                "SELECT w.account_id, lt.funnel, lt.lead_key, lt.source, lt.event_id,"
                " lt.event_type, lt.from_stage, lt.to_stage, lt.occurred_at"
                " FROM unnest(CAST(:accounts AS text[]), CAST(:funnels AS text[]),"
                " CAST(:sinces AS timestamptz[])) AS w(account_id, funnel, since)"
                " JOIN account_contacts ac ON ac.account_id = w.account_id"
                " JOIN lead_transitions lt ON lt.funnel = w.funnel"
                " AND lt.lead_key = ac.lead_key AND lt.occurred_at >= w.since"
            ),
            windows,
        )
    ).mappings():
        tails[(row["account_id"], row["funnel"])].contact.append(ContactTransition.of(row))
    for row in (
        await session.execute(
            text(
                "SELECT t.id, t.account_id, t.funnel, t.seq, t.from_stage, t.lead_key, t.source,"
                " t.event_id, t.occurred_at, t.change_id"
                " FROM unnest(CAST(:accounts AS text[]), CAST(:funnels AS text[]),"
                " CAST(:sinces AS timestamptz[])) AS w(account_id, funnel, since)"
                " JOIN account_transitions t ON t.account_id = w.account_id"
                " AND t.funnel = w.funnel AND t.occurred_at >= w.since"
            ),
            windows,
        )
    ).mappings():
        tail = tails[(row["account_id"], row["funnel"])]
        tail.history.append(row)
        tail.entered_before[row["seq"]] = row["occurred_at"]
    wanted = []
    for key, tail in tails.items():
        since = rewinding[key].rewind_from
        assert since is not None  # noqa: S101 - only rewinding plans are read
        tail.history = sorted(
            (r for r in tail.history if _cause(r) > since), key=lambda r: r["seq"]
        )
        if tail.history and tail.history[0]["seq"] > 1:
            previous = tail.history[0]["seq"] - 1
            if previous not in tail.entered_before:
                wanted.append((key[0], key[1], previous))
    if wanted:
        history_table = table(AccountTransition)
        for account, funnel, seq, occurred_at in await session.execute(
            select(
                history_table.c.account_id,
                history_table.c.funnel,
                history_table.c.seq,
                history_table.c.occurred_at,
            ).where(
                tuple_(history_table.c.account_id, history_table.c.funnel, history_table.c.seq).in_(
                    wanted
                )
            )
        ):
            tails[(account, funnel)].entered_before[seq] = occurred_at
    return tails


def _cause(row: Row) -> ContactKey:
    return (row["occurred_at"].astimezone(UTC), row["lead_key"], row["source"], row["event_id"])


def _rewind(plan: _Plan, tail: _Tail) -> None:
    """Rewind the stored fold to just before ``plan.rewind_from``, and make the folded
    contact transitions after it arrive again with the batch's, in order."""
    since = plan.rewind_from
    assert since is not None  # noqa: S101 - only called for rewinding plans
    fold = plan.fold
    arriving = {(t.lead_key, t.source, t.event_id) for t in plan.arriving}
    folded = sorted(
        (
            t
            for t in tail.contact
            if t.key > since and (t.lead_key, t.source, t.event_id) not in arriving
        ),
        key=lambda t: t.key,
    )
    for transition in reversed(folded):
        fold.undo(transition)
    if tail.history:
        first = tail.history[0]
        fold.stage = first["from_stage"]
        fold.seq = first["seq"] - 1
        fold.stage_entered_at = tail.entered_before[fold.seq] if fold.seq else None
        plan.replaced = tail.history
    plan.arriving = sorted([*folded, *plan.arriving], key=lambda t: t.key)


def _facts(
    topic: str, funnel: Funnel, fold: AccountFold, replaced: Collection[str]
) -> list[dict[str, Any]]:
    """The outbox rows for a fold whose history ``replaced`` (change ids) was rewritten:
    a correction withdrawing what is gone, then each transition that is new."""
    new_ids = {t["change_id"] for t in fold.history}
    withdrawn = sorted(c for c in replaced if c not in new_ids)
    facts = [_outbox_row(topic, _corrected(funnel, fold, withdrawn))] if withdrawn else []
    facts.extend(
        _outbox_row(topic, _changed(funnel, t))
        for t in fold.history
        if t["change_id"] not in replaced
    )
    return facts


async def _refold(
    session: AsyncSession,
    funnels: Sequence[Funnel],
    accounts: Sequence[str],
    stored: Mapping[tuple[str, str], Row],
    topic: str | None,
) -> tuple[dict[tuple[str, str], AccountFold], list[dict[str, Any]], list[dict[str, Any]]]:
    """Fold the accounts again from all their contacts' transitions; replace their
    history and contacts. Returns the folds, the outbox rows, and the transitions to
    insert."""
    names = [f.name for f in funnels]
    links, positions = table(LeadAccount), table(LeadStage)
    members: dict[tuple[str, str], list[str]] = {}
    for account, funnel_name, lead in await session.execute(
        select(links.c.account_id, positions.c.funnel, positions.c.lead_key)
        .join(positions, positions.c.lead_key == links.c.lead_id)
        .where(links.c.account_id.in_(accounts), positions.c.funnel.in_(names))
    ):
        members.setdefault((account, funnel_name), []).append(lead)
    account_of = {
        (funnel_name, lead): account
        for (account, funnel_name), leads in members.items()
        for lead in leads
    }
    transitions: dict[tuple[str, str], list[ContactTransition]] = {}
    if account_of:
        moves = table(LeadTransition)
        for row in (
            await session.execute(
                select(
                    moves.c.funnel,
                    moves.c.lead_key,
                    moves.c.source,
                    moves.c.event_id,
                    moves.c.event_type,
                    moves.c.from_stage,
                    moves.c.to_stage,
                    moves.c.occurred_at,
                ).where(
                    moves.c.funnel.in_(names),
                    moves.c.lead_key.in_(sorted({lead for _, lead in account_of})),
                )
            )
        ).mappings():
            owner = account_of.get((row["funnel"], row["lead_key"]))
            if owner is not None:
                transitions.setdefault((owner, row["funnel"]), []).append(ContactTransition.of(row))
    history_table = table(AccountTransition)
    before: dict[tuple[str, str], set[str]] = {}
    for account, funnel_name, change in await session.execute(
        select(history_table.c.account_id, history_table.c.funnel, history_table.c.change_id).where(
            history_table.c.account_id.in_(accounts), history_table.c.funnel.in_(names)
        )
    ):
        before.setdefault((account, funnel_name), set()).add(change)

    folds: dict[tuple[str, str], AccountFold] = {}
    outbox: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for account in accounts:
        for funnel in funnels:
            key = (account, funnel.name)
            contacts = members.get(key, [])
            fold = fold_account(funnel, account, contacts, transitions.get(key, []))
            if contacts or key in stored:
                folds[key] = fold
            if topic is not None:
                outbox.extend(_facts(topic, funnel, fold, before.get(key, set())))
            rows.extend(fold.history)
    await session.execute(
        delete(AccountTransition).where(
            AccountTransition.account_id.in_(accounts), AccountTransition.funnel.in_(names)
        )
    )
    await session.execute(delete(AccountContact).where(AccountContact.account_id.in_(accounts)))
    contacts_now = sorted(
        {(account, lead) for (account, _), leads in members.items() for lead in leads}
    )
    if contacts_now:
        await copy_rows(
            session,
            table(AccountContact),
            [{"account_id": account, "lead_key": lead} for account, lead in contacts_now],
        )
    return folds, outbox, rows


async def _write(
    session: AsyncSession,
    folds: Mapping[tuple[str, str], AccountFold],
    transitions: Sequence[Mapping[str, Any]],
    outbox: Sequence[Mapping[str, Any]],
) -> None:
    gone = sorted(key for key, fold in folds.items() if not sum(fold.contacts.values()))
    if gone:
        await session.execute(
            delete(AccountStage).where(
                tuple_(AccountStage.account_id, AccountStage.funnel).in_(gone)
            )
        )
    upserts = [fold.row() for key, fold in sorted(folds.items()) if sum(fold.contacts.values())]
    await upsert_rows(session, table(AccountStage), upserts, key=("funnel", "account_id"))
    await copy_rows(session, table(AccountTransition), transitions)
    await copy_rows(session, table(OutboxRecord), outbox)


async def refold_accounts(
    session: AsyncSession, funnels: Sequence[Funnel], accounts: Iterable[str], topic: str | None
) -> int:
    """Lock the accounts and fold them again from their contacts as they are now; return
    the number of account transitions added."""
    ids = sorted(set(accounts))
    if not ids:
        return 0
    await lock_accounts(session, ids)
    stages_table = table(AccountStage)
    stored = {
        (row["account_id"], row["funnel"]): row
        for row in (
            await session.execute(
                select(stages_table).where(
                    stages_table.c.account_id.in_(ids),
                    stages_table.c.funnel.in_([f.name for f in funnels]),
                )
            )
        ).mappings()
    }
    folds, outbox, added = await _refold(session, funnels, ids, stored, topic)
    await _write(session, folds, added, outbox)
    return len(added)


async def sweep_memberships(
    session: AsyncSession,
    funnels: Sequence[Funnel],
    topic: str | None,
    *,
    since: datetime | None,
    limit: int = 200,
) -> tuple[list[str], datetime | None]:
    """Refold the accounts whose counted contacts differ from ``lead_accounts``: a lead
    attached (or moved) after the engine folded its events, with no event since.

    Looks at links (re)attached since ``since`` (every link if None). Returns the
    accounts refolded (at most ``limit``) and the time to pass as ``since`` next time
    (None while another engine process is sweeping).
    """
    locked = await session.scalar(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended('leadstage-account-sweep', 0))")
    )
    if not locked:
        return [], since
    started = await session.scalar(select(func.now()))
    names = [f.name for f in funnels]
    unattached = select(LeadAccount.account_id).where(
        select(LeadStage.lead_key)
        .where(LeadStage.funnel.in_(names), LeadStage.lead_key == LeadAccount.lead_id)
        .exists(),
        ~select(AccountContact.lead_key)
        .where(
            AccountContact.account_id == LeadAccount.account_id,
            AccountContact.lead_key == LeadAccount.lead_id,
        )
        .exists(),
    )
    moved = (
        select(AccountContact.account_id)
        .join(LeadAccount, LeadAccount.lead_id == AccountContact.lead_key)
        .where(LeadAccount.account_id != AccountContact.account_id)
    )
    if since is not None:
        unattached = unattached.where(LeadAccount.attached_at >= since)
        moved = moved.where(LeadAccount.attached_at >= since)
    stale = union(unattached, moved).subquery()
    accounts = list(
        await session.scalars(select(stale.c.account_id).order_by(stale.c.account_id).limit(limit))
    )
    if accounts:
        await refold_accounts(session, funnels, accounts, topic)
        logger.info("refolded %s accounts whose contacts changed after the fact", len(accounts))
    if len(accounts) == limit or started is None:
        return accounts, since  # more to do: look at the same links again
    return accounts, started - SWEEP_MARGIN


# -- published facts ----------------------------------------------------------------------


def _rule(funnel: Funnel) -> dict[str, Any]:
    rule = funnel.account_rule
    if rule.kind == "quorum":
        return {"kind": rule.kind, "stage": rule.stage, "contacts": rule.contacts}
    return {"kind": rule.kind}


def _changed(funnel: Funnel, transition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event": "AccountStageChanged",
        "schema_version": 1,
        "change_id": transition["change_id"],
        "funnel": funnel.name,
        "funnel_version": funnel.version,
        "account_id": transition["account_id"],
        "from_stage": transition["from_stage"],
        "to_stage": transition["to_stage"],
        "transition": transition["kind"],
        "account_rule": _rule(funnel),
        "caused_by": {
            "lead_id": transition["lead_key"],
            "source": transition["source"],
            "event_id": transition["event_id"],
            "type": transition["event_type"],
        },
        "occurred_at": transition["occurred_at"].isoformat(),
    }


def _corrected(funnel: Funnel, fold: AccountFold, withdrawn: list[str]) -> dict[str, Any]:
    return {
        "event": "AccountHistoryCorrected",
        "schema_version": 1,
        "change_id": change_id("account-corrected", funnel.name, fold.account_id, *withdrawn),
        "funnel": funnel.name,
        "funnel_version": funnel.version,
        "account_id": fold.account_id,
        "stage": fold.stage,
        "stage_entered_at": (
            fold.stage_entered_at.isoformat() if fold.stage_entered_at is not None else None
        ),
        "withdrawn_change_ids": withdrawn,
    }


def _outbox_row(topic: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    return outbox_row(topic, payload["account_id"], payload)
