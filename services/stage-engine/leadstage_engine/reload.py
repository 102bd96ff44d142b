"""The funnel definitions the running engine folds with, and reloading them on SIGHUP.

The engine folds each funnel with the registry's *active* version (see
:mod:`leadstage_engine.versions`), never straight with whatever the file says
now. Each batch takes the registry lock shared and reads the active versions in
its own transaction, so a switch-over by ``leadstage replay`` takes effect at the
very next batch, and no batch folds with a version that was replaced while it
ran. While a replay runs, the batch also notes the leads it touched, for the
replay to fold them again before it switches over.

SIGHUP re-reads the definition files. A file that does not load (or changed
without a version bump) is logged with its file, line and field, and nothing
changes: the running versions keep working. A valid new version is registered as
``pending`` and waits for ``leadstage replay``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import Counter
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import FunnelVersion, ReplayChangedLead, table
from leadstage.db.session import SessionFactory, create_engine, create_session_factory, unit_of_work
from leadstage.funnels import Funnel, FunnelDefinitionError
from leadstage.funnels.registry import from_registry
from leadstage.settings import ServiceSettings
from leadstage.transport.base import Record
from leadstage_engine.processing import BatchOutcome, apply_batch, parse_records
from leadstage_engine.versions import (
    LiveVersion,
    live_versions,
    lock_registry_shared,
    register_all,
)

logger = logging.getLogger(__name__)

RELOADS = Counter(
    "leadstage_engine_funnel_reloads_total",
    "Funnel definition reloads (SIGHUP), by outcome: reloaded or refused.",
    ["outcome"],
)


class NoActiveVersionError(RuntimeError):
    """A configured funnel has no active version (the engine registers one at start)."""


async def register_at_start(settings: ServiceSettings) -> dict[str, Funnel]:
    """Load the configured funnels and register their versions, before the engine starts.

    Raises :class:`FunnelDefinitionError` (the CLI exits 2 with file:line: field) for a
    bad file, a changed file with an unchanged version, or stored states of an
    unknown version.
    """
    funnels = settings.active_funnels()
    database = create_engine(settings, application_name="leadstage-engine-start")
    try:
        async with unit_of_work(create_session_factory(database)) as session:
            rows = await register_all(session, funnels.values(), may_activate=True)
    finally:
        await database.dispose()
    _warn_pending(rows)
    return funnels


def _warn_pending(rows: Sequence[FunnelVersion]) -> None:
    for row in rows:
        if row.status != "active":
            logger.warning(
                "funnel %s version %s is %s: the engine keeps folding with the active version "
                "until `leadstage replay --funnel %s` switches over",
                row.funnel,
                row.version,
                row.status,
                row.funnel,
            )


@dataclass(frozen=True)
class BatchFunnels:
    """The funnels one batch folds with, and the versions being replayed meanwhile."""

    funnels: Sequence[Funnel]
    replaying: Sequence[tuple[str, int]]

    async def note_changed_leads(self, session: AsyncSession, records: Sequence[Record]) -> None:
        """Tell running replays which leads this batch may have changed (a superset)."""
        if not self.replaying:
            return
        parsed, _ = parse_records(records)
        leads = sorted({touchpoint.lead_key for _, touchpoint in parsed})
        if not leads:
            return
        statement = insert(table(ReplayChangedLead))
        # DO UPDATE, not DO NOTHING: it locks an existing mark until this batch commits,
        # so a replay taking the mark waits and then sees this batch's touchpoints.
        # Sorted, like the replay takes them, so the two never deadlock.
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["funnel", "version", "lead_key"],
                set_={"marked_at": func.now()},
            ),
            [
                {"funnel": funnel, "version": version, "lead_key": lead}
                for funnel, version in sorted(self.replaying)
                for lead in leads
            ],
        )


async def apply_with_live_funnels(
    session: AsyncSession,
    records: Sequence[Record],
    funnels: LiveFunnels,
    *,
    consumer_group: str,
    outbox_topic: str,
    account_topic: str | None = None,
) -> BatchOutcome:
    """:func:`apply_batch` with the registry's active versions, noting the leads it
    touched for a replay in progress. Inside the caller's transaction."""
    batch = await funnels.begin_batch(session)
    outcome = await apply_batch(
        session,
        records,
        consumer_group=consumer_group,
        funnels=batch.funnels,
        outbox_topic=outbox_topic,
        account_topic=account_topic,
    )
    await batch.note_changed_leads(session, records)
    return outcome


class LiveFunnels:
    """The configured funnels, at the versions the registry says are active."""

    def __init__(self, settings: ServiceSettings, sessions: SessionFactory) -> None:
        self._settings = settings
        self._sessions = sessions
        self._names = list(settings.funnels)
        files = settings.active_funnels()  # a bad file stops the engine at start
        self._known: dict[str, Funnel] = {f.fingerprint: f for f in files.values()}
        self._running: dict[str, tuple[int, str]] = {}
        self._reload_requested = asyncio.Event()

    @property
    def names(self) -> Sequence[str]:
        return self._names

    async def begin_batch(self, session: AsyncSession) -> BatchFunnels:
        """In the batch's transaction: hold the registry lock shared, read the versions."""
        await lock_registry_shared(session)
        live = await live_versions(session, self._names)
        active = {v.funnel: v for v in live if v.active}
        funnels: list[Funnel] = []
        for name in self._names:
            version = active.get(name)
            if version is None:
                raise NoActiveVersionError(
                    f"funnel {name!r} has no active version in funnel_versions; "
                    "restart the engine to register it"
                )
            funnels.append(await self._definition(session, version))
        return BatchFunnels(funnels, sorted((v.funnel, v.version) for v in live if v.replaying))

    async def _definition(self, session: AsyncSession, version: LiveVersion) -> Funnel:
        funnel = self._known.get(version.fingerprint)
        if funnel is None:
            row = await session.get(FunnelVersion, (version.funnel, version.version))
            if row is None:  # pragma: no cover - read under the lock a moment ago
                raise NoActiveVersionError(f"funnel {version.funnel!r} lost its version")
            funnel = from_registry(row)
            if funnel.fingerprint != version.fingerprint:
                # Parsing changed since it was registered (an upgrade): the text is the
                # definition that was replayed, so it is still what we run.
                logger.warning(
                    "funnel %s version %s: its stored definition now has fingerprint %s "
                    "(registered as %s)",
                    version.funnel,
                    version.version,
                    funnel.fingerprint,
                    version.fingerprint,
                )
            self._known[version.fingerprint] = funnel
        running = (version.version, version.fingerprint)
        if self._running.get(version.funnel) != running:
            logger.info(
                "folding funnel %s with version %s (fingerprint %s)",
                version.funnel,
                version.version,
                version.fingerprint[:12],
            )
            self._running[version.funnel] = running
        return funnel

    # -- reloading ----------------------------------------------------------
    def request_reload(self) -> None:
        """The SIGHUP handler: reload soon, outside the signal handler."""
        self._reload_requested.set()

    async def reload_on_request(self) -> None:
        """Run until cancelled: one reload per request (requests while one runs merge)."""
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read the definition files and register new versions; False if refused.

        Never raises for a file that does not load: this runs as a background task of
        the engine, and a failed task stops the engine's process.
        """
        where = self._settings.funnels_dir or "the presets"
        try:
            files: Mapping[str, Funnel] = self._settings.active_funnels()
        except (FunnelDefinitionError, ValueError, OSError) as error:
            # FunnelDefinitionError names the file, line and field; ValueError:
            # LEADSTAGE_FUNNELS names a funnel no file defines any more.
            return self._refused(where, error)
        except Exception as error:
            # Loading should raise nothing else, but whatever a file can make it raise
            # must not stop the engine: log it with its traceback, keep running.
            RELOADS.labels("refused").inc()
            logger.exception(
                "funnel definitions in %s not reloaded, the running versions keep working: %s",
                where,
                error,
            )
            return False
        try:
            async with unit_of_work(self._sessions) as session:
                rows = await register_all(session, files.values(), may_activate=False)
        except (FunnelDefinitionError, ValueError, OSError, DBAPIError) as error:
            return self._refused(where, error)
        self._known.update((f.fingerprint, f) for f in files.values())
        RELOADS.labels("reloaded").inc()
        logger.info(
            "funnel definitions reloaded: %s",
            ", ".join(f"{row.funnel} v{row.version} ({row.status})" for row in rows),
        )
        _warn_pending(rows)
        return True

    def _refused(self, where: object, error: Exception) -> bool:
        RELOADS.labels("refused").inc()
        logger.error(
            "funnel definitions in %s not reloaded, the running versions keep working: %s",
            where,
            error,
        )
        return False
