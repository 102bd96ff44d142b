"""The funnel version registry: which definition produced which lead states.

A version is ``(funnel, version)`` with the fingerprint of its definition
(:attr:`Funnel.fingerprint`). The registry (``funnel_versions``) refuses a second
fingerprint under a version number already seen, so ``lead_stages.funnel_version``
names exactly one definition. The first version of a funnel becomes ``active`` at
once; later ones wait as ``pending`` until ``leadstage replay`` recomputes every
lead with them and switches over. The engine always folds with the ``active``
version, whose definition text the registry keeps, so a changed file never mixes
two definitions in one funnel's states.

One advisory lock orders the engine's batches and the registry's changes: each
batch holds it shared while it reads the registry and writes states; a change
(registering a first version, starting or finishing a replay) holds it
exclusively. So a batch never writes with a version that was replaced while it
ran, and every batch that commits after a replay started knows about the replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import FunnelVersion, LeadStage
from leadstage.funnels import Funnel, FunnelDefinitionError

Status = Literal["pending", "replaying", "active", "retired"]

_REGISTRY_LOCK = "leadstage-funnel-versions"


async def lock_registry_shared(session: AsyncSession) -> None:
    """Until the transaction ends, no version is activated, retired or set replaying."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock_shared(hashtextextended(:lock, 0))"),
        {"lock": _REGISTRY_LOCK},
    )


async def lock_registry(session: AsyncSession) -> None:
    """Exclusive: waits for every batch in progress; new batches wait for this transaction."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"),
        {"lock": _REGISTRY_LOCK},
    )


class FunnelVersionConflictError(FunnelDefinitionError):
    """A definition changed but kept a version number the registry already knows."""


class FunnelStatesMismatchError(FunnelDefinitionError):
    """Stored states were computed by a version the registry does not know."""


def _where(funnel: Funnel) -> tuple[str, int | None]:
    if funnel.source is None:
        return f"<funnel {funnel.name}>", None
    return funnel.source.file, funnel.source.version_line


async def versions_of(session: AsyncSession, name: str) -> list[FunnelVersion]:
    """Every registered version of a funnel, oldest first."""
    rows = await session.scalars(
        select(FunnelVersion).where(FunnelVersion.funnel == name).order_by(FunnelVersion.version)
    )
    return list(rows)


async def active_version(session: AsyncSession, name: str) -> FunnelVersion | None:
    result: FunnelVersion | None = await session.scalar(
        select(FunnelVersion).where(FunnelVersion.funnel == name, FunnelVersion.status == "active")
    )
    return result


async def register(session: AsyncSession, funnel: Funnel, *, may_activate: bool) -> FunnelVersion:
    """Record ``funnel``'s definition under its version, or check it against the record.

    A version number registered with another fingerprint raises
    :class:`FunnelVersionConflictError` (file, line of ``version``: bump it). A new
    version is ``pending``, unless the funnel has no active version and
    ``may_activate``: then it becomes active, provided no stored state of the funnel
    came from another version (:class:`FunnelStatesMismatchError`: replay first).
    Takes the registry lock; never commits.
    """
    await lock_registry(session)
    file, line = _where(funnel)
    row = await session.get(FunnelVersion, (funnel.name, funnel.version))
    if row is not None:
        if row.fingerprint != funnel.fingerprint:
            raise FunnelVersionConflictError(
                file,
                line,
                "version",
                f"funnel {funnel.name!r} version {funnel.version} was registered on "
                f"{row.created_at:%Y-%m-%d %H:%M} with a different definition (fingerprint "
                f"{row.fingerprint[:12]}, this file's is {funnel.fingerprint[:12]}); "
                f"bump the version to change it",
            )
        return row
    activate = may_activate and await active_version(session, funnel.name) is None
    if activate:
        other = await session.scalar(
            select(LeadStage.funnel_version)
            .where(
                LeadStage.funnel == funnel.name,
                LeadStage.funnel_version.is_distinct_from(funnel.version),
            )
            .limit(1)
        )
        if other is not None or await _has_unversioned_states(session, funnel):
            raise FunnelStatesMismatchError(
                file,
                line,
                "version",
                f"stored states of funnel {funnel.name!r} were computed by another version "
                f"than {funnel.version}, which the version registry does not know; run "
                f"`leadstage replay --funnel {funnel.name}` to recompute them with version "
                f"{funnel.version}, then start the engine",
            )
    source = funnel.source
    row = FunnelVersion(
        funnel=funnel.name,
        version=funnel.version,
        fingerprint=funnel.fingerprint,
        definition=source.text if source is not None else _definition_text(funnel),
        source_file=file,
        status="active" if activate else "pending",
        activated_at=func.now() if activate else None,
    )
    session.add(row)
    await session.flush()  # under the registry lock: no other process inserts it meanwhile
    return row


async def _has_unversioned_states(session: AsyncSession, funnel: Funnel) -> bool:
    found = await session.scalar(
        select(LeadStage.lead_key)
        .where(LeadStage.funnel == funnel.name, LeadStage.funnel_version.is_(None))
        .limit(1)
    )
    return found is not None


def _definition_text(funnel: Funnel) -> str:
    """A definition built in code (tests, tools) has no file: store its canonical JSON,
    which is valid YAML and parses back to the same fingerprint."""
    return funnel.spec.model_dump_json(by_alias=True, exclude_unset=True)


async def register_all(
    session: AsyncSession, funnels: Iterable[Funnel], *, may_activate: bool
) -> list[FunnelVersion]:
    return [await register(session, funnel, may_activate=may_activate) for funnel in funnels]


@dataclass(frozen=True)
class LiveVersion:
    funnel: str
    version: int
    fingerprint: str
    active: bool
    replaying: bool


async def live_versions(session: AsyncSession, names: Sequence[str]) -> list[LiveVersion]:
    """What a batch needs to know: each funnel's active version, and the versions being
    replayed (without the definitions, which are read only when one is new)."""
    rows = await session.execute(
        select(
            FunnelVersion.funnel,
            FunnelVersion.version,
            FunnelVersion.fingerprint,
            FunnelVersion.status,
            FunnelVersion.replay_started_at,
        ).where(
            FunnelVersion.funnel.in_(names),
            (FunnelVersion.status == "active") | FunnelVersion.replay_started_at.is_not(None),
        )
    )
    return [
        LiveVersion(name, version, fingerprint, status == "active", started is not None)
        for name, version, fingerprint, status, started in rows
    ]
