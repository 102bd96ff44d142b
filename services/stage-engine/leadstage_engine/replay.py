"""``leadstage replay``: recompute every lead of a funnel with one version, then switch over.

The live engine keeps folding with the active version the whole time. The replay:

1. **starts** (registry lock held exclusively, a moment): marks the version as
   being replayed and clears what an earlier, interrupted replay left. Every
   engine batch that commits after this notes the leads it touched
   (``replay_changed_leads``); every batch that committed before is visible to
   the replay's reads.
2. **replays** in batches of leads (keyset over the stored touchpoints' lead
   keys, one short transaction each): reads the leads' touchpoints and folds
   each lead with :func:`leadstage_engine.processing.fold_all`, the code the
   engine folds with, into the shadow tables (``replay_lead_stages``,
   ``replay_lead_transitions``, ``replay_lead_score_changes``).
3. **catches up**: folds again the leads the engine noted meanwhile, until few
   are left.
4. **switches over** in one transaction with the registry lock held
   exclusively, so no engine batch is in progress: folds the last noted leads,
   replaces the funnel's rows in ``lead_stages``, ``lead_transitions`` and
   ``lead_score_changes`` with the shadow rows, retires the previous version,
   activates this one and writes one ``FunnelVersionActivated`` fact to the
   outbox. The engine's next batch reads the registry and folds with the new
   version.

Nothing from the history is published again: the recomputed transitions are
not news (their events happened long ago), and consumers re-read the states
they care about when they see ``FunnelVersionActivated``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from leadstage.db.models import (
    AccountStage,
    FunnelVersion,
    LeadAccount,
    LeadScoreChange,
    LeadStage,
    LeadTransition,
    OutboxRecord,
    ReplayChangedLead,
    ReplayLeadScoreChange,
    ReplayLeadStage,
    ReplayLeadTransition,
    StoredTouchpoint,
    table,
)
from leadstage.db.session import SessionFactory, create_session_factory, unit_of_work
from leadstage.funnels import Funnel, load_funnels
from leadstage.funnels.registry import from_registry
from leadstage.rollup import invalidate as invalidate_rollup
from leadstage.settings import ServiceSettings
from leadstage_engine.accounts import refold_accounts
from leadstage_engine.changes import change_id, outbox_row
from leadstage_engine.processing import FoldedEvent, LeadTimeline, fold_all
from leadstage_engine.versions import (
    active_version,
    lock_registry,
    register,
    versions_of,
)

logger = logging.getLogger(__name__)

#: Catch-up passes run without the lock while more than this many leads were noted.
SWITCH_WHEN_AT_MOST = 500
MAX_CATCH_UP_PASSES = 10

#: ``on_progress(phase, done, total)``: phase is "replaying", "catching up" or "switching".
ProgressCallback = Callable[[str, int, int], None]


class ReplayRefusedError(Exception):
    """The replay cannot run as asked (unknown funnel or version, inactive funnel)."""


class ReplayRunningError(Exception):
    """Another replay of the same funnel holds its lock."""


@dataclass
class ReplayReport:
    funnel: str
    version: int
    fingerprint: str
    previous_version: int | None
    leads: int = 0  # leads folded by the replay pass
    caught_up: int = 0  # leads folded again because the engine changed them meanwhile
    active_leads: int = 0  # rows of the funnel in lead_stages after the switch
    skipped_rules: int = 0  # rule evaluations skipped on malformed properties
    seconds: float = 0.0
    switch_seconds: float = 0.0
    passes: list[int] = field(default_factory=list)  # leads per catch-up pass


async def replay_funnel(
    database: AsyncEngine,
    settings: ServiceSettings,
    name: str,
    version: int | None = None,
    *,
    batch_leads: int = 500,
    on_progress: ProgressCallback | None = None,
    after_batch: Callable[[], Any] | None = None,
) -> ReplayReport:
    """Replay funnel ``name`` at ``version`` (default: the version its file defines)
    and make that version the active one. ``after_batch`` is awaited after each
    committed batch of the replay pass (tests use it to run live batches in between).
    """
    started = time.monotonic()
    sessions = create_session_factory(database)
    funnel = await _resolve(sessions, settings, name, version)
    # A session-level lock on a connection outside any transaction: it lasts as long
    # as this process holds the connection, without holding back vacuum meanwhile.
    async with database.connect() as raw:
        connection = await raw.execution_options(isolation_level="AUTOCOMMIT")
        locked = await connection.scalar(
            text("SELECT pg_try_advisory_lock(hashtextextended(:lock, 0))"),
            {"lock": f"leadstage-replay:{name}"},
        )
        if not locked:
            raise ReplayRunningError(f"a replay of funnel {name!r} is already running")
        try:
            report = await _run(sessions, settings, funnel, batch_leads, on_progress, after_batch)
        except BaseException:
            await _abandon(sessions, funnel)
            raise
        finally:
            await connection.execute(
                text("SELECT pg_advisory_unlock(hashtextextended(:lock, 0))"),
                {"lock": f"leadstage-replay:{name}"},
            )
    report.seconds = time.monotonic() - started
    return report


async def _resolve(
    sessions: SessionFactory, settings: ServiceSettings, name: str, version: int | None
) -> Funnel:
    """The definition to replay: the file's, or a registered one; registers the file's."""
    files = load_funnels(settings.funnels_dir)
    async with unit_of_work(sessions) as session:
        registered = {row.version: row for row in await versions_of(session, name)}
        if name not in files and not registered:
            raise ReplayRefusedError(f"unknown funnel {name!r}; known: {', '.join(sorted(files))}")
        if name not in settings.funnels:
            raise ReplayRefusedError(
                f"funnel {name!r} is not active "
                f"(LEADSTAGE_FUNNELS={json.dumps(settings.funnels)}): "
                "the engine would not keep its states up to date"
            )
        if name in files:
            # A changed file without a version bump is refused here as at engine start.
            registered[files[name].version] = await register(
                session, files[name], may_activate=False
            )
        if version is None:  # the file's version; without a file, the newest registered
            version = files[name].version if name in files else max(registered)
        if name in files and files[name].version == version:
            return files[name]
        if version not in registered:
            known = ", ".join(str(v) for v in sorted(registered))
            raise ReplayRefusedError(f"funnel {name!r} has no version {version}; known: {known}")
        return from_registry(registered[version])


async def _run(
    sessions: SessionFactory,
    settings: ServiceSettings,
    funnel: Funnel,
    batch_leads: int,
    on_progress: ProgressCallback | None,
    after_batch: Callable[[], Any] | None,
) -> ReplayReport:
    progress = on_progress or (lambda _phase, _done, _total: None)
    skipped = _SkippedRules()
    logging.getLogger("leadstage_engine.processing").addFilter(skipped)
    try:
        async with unit_of_work(sessions) as session:
            previous = await _start(session, funnel)
            total = await session.scalar(
                select(func.count(func.distinct(StoredTouchpoint.lead_key)))
            )
        report = ReplayReport(funnel.name, funnel.version, funnel.fingerprint, previous)
        logger.info(
            "replaying funnel %s version %s over %s leads (active version: %s)",
            funnel.name,
            funnel.version,
            total,
            previous,
        )
        progress("replaying", 0, total or 0)
        after: str | None = None
        while True:
            async with unit_of_work(sessions) as session:
                query = select(StoredTouchpoint.lead_key).group_by(StoredTouchpoint.lead_key)
                if after is not None:
                    query = query.where(StoredTouchpoint.lead_key > after)
                leads = list(
                    await session.scalars(
                        query.order_by(StoredTouchpoint.lead_key).limit(batch_leads)
                    )
                )
                if not leads:
                    break
                report.leads += await _fold_into_shadow(session, funnel, leads, replace=False)
            after = leads[-1]
            progress("replaying", report.leads, max(total or 0, report.leads))
            if after_batch is not None:
                await after_batch()

        for _ in range(MAX_CATCH_UP_PASSES):
            caught = 0
            while True:
                async with unit_of_work(sessions) as session:
                    folded = await _catch_up(session, funnel, batch_leads)
                caught += folded
                progress("catching up", caught, caught)
                if folded < batch_leads:
                    break
            report.passes.append(caught)
            report.caught_up += caught
            if caught <= SWITCH_WHEN_AT_MOST:
                break

        switch_started = time.monotonic()
        progress("switching", 0, 1)
        async with unit_of_work(sessions) as session:
            await lock_registry(session)  # waits for the batch in progress; holds off the next
            while (folded := await _catch_up(session, funnel, batch_leads)) > 0:
                report.caught_up += folded
            report.active_leads = await _switch(session, settings, funnel, previous)
        report.switch_seconds = time.monotonic() - switch_started
        progress("switching", 1, 1)
        report.skipped_rules = skipped.count
        logger.info(
            "funnel %s version %s is active: %s leads replayed, %s caught up, switch took %.2fs",
            funnel.name,
            funnel.version,
            report.leads,
            report.caught_up,
            report.switch_seconds,
        )
        return report
    finally:
        logging.getLogger("leadstage_engine.processing").removeFilter(skipped)


class _SkippedRules(logging.Filter):
    """Counts, instead of logging one by one, the rules skipped on historical events."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("rule skipped"):
            self.count += 1
            return False
        return True


def _clear_shadow(name: str, version: int | None = None) -> list[Any]:
    statements = []
    for model in (ReplayLeadStage, ReplayLeadTransition, ReplayLeadScoreChange, ReplayChangedLead):
        statement = delete(model).where(model.funnel == name)
        if version is not None:
            statement = statement.where(model.version == version)
        statements.append(statement)
    return statements


async def _start(session: AsyncSession, funnel: Funnel) -> int | None:
    """Mark the version as being replayed; return the active version's number."""
    await lock_registry(session)
    for statement in _clear_shadow(funnel.name):  # what an interrupted replay left
        await session.execute(statement)
    await session.execute(
        update(FunnelVersion)
        .where(FunnelVersion.funnel == funnel.name, FunnelVersion.status == "replaying")
        .values(status="pending")
    )
    await session.execute(
        update(FunnelVersion)
        .where(FunnelVersion.funnel == funnel.name)
        .values(replay_started_at=None)
    )
    await session.execute(
        update(FunnelVersion)
        .where(FunnelVersion.funnel == funnel.name, FunnelVersion.version == funnel.version)
        .values(
            replay_started_at=func.now(),
            # The active version stays active while it is replayed (to backfill a
            # funnel added later, or to repair states).
            status=case((FunnelVersion.status == "active", "active"), else_="replaying"),
        )
    )
    active = await active_version(session, funnel.name)
    return active.version if active is not None else None


async def _abandon(sessions: SessionFactory, funnel: Funnel) -> None:
    """After a failure: stop the engine noting leads and drop the shadow rows."""
    try:
        async with unit_of_work(sessions) as session:
            await lock_registry(session)
            await session.execute(
                update(FunnelVersion)
                .where(FunnelVersion.funnel == funnel.name, FunnelVersion.status == "replaying")
                .values(status="pending")
            )
            await session.execute(
                update(FunnelVersion)
                .where(FunnelVersion.funnel == funnel.name)
                .values(replay_started_at=None)
            )
            for statement in _clear_shadow(funnel.name):
                await session.execute(statement)
    except Exception:  # noqa: BLE001 - the next replay cleans up as well
        logger.warning("could not clean up after the failed replay of %s", funnel.name)


async def _catch_up(session: AsyncSession, funnel: Funnel, limit: int) -> int:
    """Fold again up to ``limit`` leads the engine noted; return how many."""
    # FOR UPDATE: a mark that a batch in progress holds makes this wait until that
    # batch's touchpoints are visible. In code point order (COLLATE "C"), the order
    # the engine notes them in (Python's sorted), so the two never deadlock.
    leads = list(
        await session.scalars(
            select(ReplayChangedLead.lead_key)
            .where(
                ReplayChangedLead.funnel == funnel.name,
                ReplayChangedLead.version == funnel.version,
            )
            .order_by(ReplayChangedLead.lead_key.collate("C"))
            .limit(limit)
            .with_for_update()
        )
    )
    if not leads:
        return 0
    await session.execute(
        delete(ReplayChangedLead).where(
            ReplayChangedLead.funnel == funnel.name,
            ReplayChangedLead.version == funnel.version,
            ReplayChangedLead.lead_key.in_(leads),
        )
    )
    await _fold_into_shadow(session, funnel, leads, replace=True)
    return len(leads)


async def _fold_into_shadow(
    session: AsyncSession, funnel: Funnel, leads: Sequence[str], *, replace: bool
) -> int:
    """Fold each lead from all its stored touchpoints into the shadow tables."""
    events: dict[str, list[FoldedEvent]] = {}
    rows = await session.execute(
        select(
            StoredTouchpoint.lead_key,
            StoredTouchpoint.source,
            StoredTouchpoint.event_id,
            StoredTouchpoint.type,
            StoredTouchpoint.occurred_at,
            StoredTouchpoint.payload,
        ).where(StoredTouchpoint.lead_key.in_(leads))
    )
    for lead, source, event_id, event_type, occurred_at, payload in rows:
        events.setdefault(lead, []).append(
            FoldedEvent.from_payload(source, event_id, event_type, occurred_at, payload)
        )
    if replace:
        for model in (ReplayLeadStage, ReplayLeadTransition, ReplayLeadScoreChange):
            await session.execute(
                delete(model).where(
                    model.funnel == funnel.name,
                    model.version == funnel.version,
                    model.lead_key.in_(leads),
                )
            )
    stages: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    score_changes: list[dict[str, Any]] = []
    for lead in sorted(events):
        fold = fold_all(funnel, lead, LeadTimeline(events[lead]))
        if fold.last_event is None:
            continue
        stages.append(
            {
                "funnel": funnel.name,
                "version": funnel.version,
                "lead_key": lead,
                "stage": fold.state.stage,
                "stage_entered_at": fold.state.stage_entered_at,
                "sales_ready": fold.state.sales_ready,
                "state": fold.state.to_dict(),
                "first_touch_at": fold.first_touch_at,
                "last_touch_at": fold.last_touch_at,
                "last_event_source": fold.last_event[0],
                "last_event_id": fold.last_event[1],
            }
        )
        transitions += [{**t, "version": funnel.version} for t in fold.transitions]
        score_changes += [{**c, "version": funnel.version} for c in fold.score_changes]
    for model, values in (
        (ReplayLeadStage, stages),
        (ReplayLeadTransition, transitions),
        (ReplayLeadScoreChange, score_changes),
    ):
        if values:
            await session.execute(insert(table(model)), values)
    return len(stages)


_STAGE_COLUMNS = (
    "funnel",
    "lead_key",
    "stage",
    "stage_entered_at",
    "sales_ready",
    "state",
    "first_touch_at",
    "last_touch_at",
    "last_event_source",
    "last_event_id",
)
_TRANSITION_COLUMNS = (
    "funnel",
    "lead_key",
    "from_stage",
    "to_stage",
    "kind",
    "rule",
    "source",
    "event_id",
    "event_type",
    "occurred_at",
)
_SCORE_CHANGE_COLUMNS = (
    "funnel",
    "lead_key",
    "score",
    "delta",
    "value",
    "rule",
    "source",
    "event_id",
    "event_type",
    "occurred_at",
)


ACCOUNTS_PER_REFOLD = 1000


async def _refold_funnel_accounts(session: AsyncSession, funnel: Funnel) -> None:
    """Fold every account of the funnel again from its contacts' new transitions.

    An account's state is a pure function of its contacts' transitions (see
    :mod:`leadstage_engine.accounts`), so after the switch the accounts must follow the
    new version too: those with contacts in the funnel, and those that had a state in
    it (whose contacts may all be gone). Nothing is published, as for the leads: the
    one ``FunnelVersionActivated`` fact says that the history was recomputed.
    """
    with_contacts = (
        select(LeadAccount.account_id)
        .join(LeadStage, LeadStage.lead_key == LeadAccount.lead_id)
        .where(LeadStage.funnel == funnel.name)
    )
    with_state = select(AccountStage.account_id).where(AccountStage.funnel == funnel.name)
    accounts = sorted(set(await session.scalars(with_contacts.union(with_state))))
    for start in range(0, len(accounts), ACCOUNTS_PER_REFOLD):
        chunk = accounts[start : start + ACCOUNTS_PER_REFOLD]
        await refold_accounts(session, [funnel], chunk, topic=None)


async def _switch(
    session: AsyncSession, settings: ServiceSettings, funnel: Funnel, previous: int | None
) -> int:
    """Make the shadow rows the funnel's rows and the version the active one.

    Runs with the registry lock held exclusively, so no engine batch is in progress.
    Returns the number of leads the funnel now has.
    """
    name, version = funnel.name, funnel.version
    await invalidate_rollup(session, name)  # the summary's rollup is rebuilt from these rows
    for model in (LeadScoreChange, LeadTransition, LeadStage):
        await session.execute(delete(model).where(model.funnel == name))
    stage = table(ReplayLeadStage)
    await session.execute(
        insert(table(LeadStage)).from_select(
            [*_STAGE_COLUMNS, "funnel_version"],
            select(*(stage.c[c] for c in _STAGE_COLUMNS), stage.c.version).where(
                stage.c.funnel == name, stage.c.version == version
            ),
        )
    )
    for live, shadow, columns in (
        (LeadTransition, ReplayLeadTransition, _TRANSITION_COLUMNS),
        (LeadScoreChange, ReplayLeadScoreChange, _SCORE_CHANGE_COLUMNS),
    ):
        rows = table(shadow)
        await session.execute(
            insert(table(live)).from_select(
                list(columns),
                select(*(rows.c[c] for c in columns))
                .where(rows.c.funnel == name, rows.c.version == version)
                .order_by(rows.c.id),  # ids in the order the fold made them, as live
            )
        )
    leads = await session.scalar(
        select(func.count()).select_from(LeadStage).where(LeadStage.funnel == name)
    )
    await _refold_funnel_accounts(session, funnel)
    for statement in _clear_shadow(name, version):
        await session.execute(statement)

    row = await session.get(FunnelVersion, (name, version), populate_existing=True)
    if row is None or row.replay_started_at is None:
        raise RuntimeError(f"the replay of {name} version {version} was cancelled meanwhile")
    replay_started_at: datetime = row.replay_started_at
    await session.execute(
        update(FunnelVersion)
        .where(
            FunnelVersion.funnel == name,
            FunnelVersion.status == "active",
            FunnelVersion.version != version,
        )
        .values(status="retired", retired_at=func.now())
    )
    await session.execute(
        update(FunnelVersion)
        .where(FunnelVersion.funnel == name, FunnelVersion.version == version)
        .values(
            status="active",
            replay_started_at=None,
            # Replaying the active version again keeps its activation time.
            activated_at=case(
                (FunnelVersion.status == "active", FunnelVersion.activated_at), else_=func.now()
            ),
        )
    )
    fact = {
        "event": "FunnelVersionActivated",
        "schema_version": 1,
        "change_id": change_id("activated", name, version, replay_started_at.isoformat()),
        "funnel": name,
        "funnel_version": version,
        "fingerprint": funnel.fingerprint,
        "previous_version": previous,
        "leads": leads or 0,
        "replay_started_at": replay_started_at.isoformat(),
    }
    await session.execute(
        insert(table(OutboxRecord)),
        [outbox_row(settings.lead_stage_changed_topic, name, fact)],
    )
    return leads or 0
