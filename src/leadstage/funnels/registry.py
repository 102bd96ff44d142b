"""Reading the funnel version registry (``funnel_versions``), for every service.

The engine writes the registry (``leadstage_engine.versions``); readers such as the
metrics API use these functions so that they describe a funnel exactly as the states
they read were computed: by the registry's *active* version, not by whatever the
definition file says now (a new file waits as ``pending`` until a replay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import FunnelVersion
from leadstage.funnels import Funnel, parse_funnel


def from_registry(row: FunnelVersion) -> Funnel:
    """The funnel a registry row describes, parsed from the text it was registered with."""
    return parse_funnel(row.definition, f"funnel_versions:{row.funnel}@{row.version}", stored=True)


async def active_funnels(
    session: AsyncSession, configured: Mapping[str, Funnel], names: Sequence[str]
) -> dict[str, Funnel]:
    """Each named funnel at its active registered version; one with no registered
    version yet (no engine has started with it) keeps its configured definition."""
    rows = await session.scalars(
        select(FunnelVersion).where(
            FunnelVersion.funnel.in_(names), FunnelVersion.status == "active"
        )
    )
    active = {row.funnel: row for row in rows}
    funnels: dict[str, Funnel] = {}
    for name in names:
        row = active.get(name)
        if row is None:
            funnels[name] = configured[name]
        elif row.fingerprint == configured[name].fingerprint:
            funnels[name] = configured[name]  # the file is the active version
        else:
            funnels[name] = from_registry(row)
    return funnels
