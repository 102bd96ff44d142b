"""When each unit first reached each stage, counting skips (the domain's cumulative rule).

A lead reaches stage k at its first transition into stage k *or any later stage*: a
lead that jumped from Interest to Opportunity reached Action and Engagement at that
moment. An account (unit ``account``) reaches stage k when its first contact does:
the account's stage is its furthest contact's, and it never un-reaches a stage.
This is deliberately simple and is not the funnel's ``account_rule`` (a quorum rule
would hold the account back until enough contacts are there); see
docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import CTE, Integer, String, Values, column, func, select, values

from leadstage.db.models import LeadTransition
from leadstage.funnels import Funnel


def stage_positions(funnel: Funnel, name: str = "stage_positions") -> Values:
    """The funnel's stages and their 0-based positions, as a VALUES list (exits have none)."""
    return values(column("name", String), column("position", Integer), name=name).data(
        [(stage, position) for position, stage in enumerate(funnel.stages)]
    )


def unit_reach(funnel: Funnel, members: CTE) -> CTE:
    """``(unit_key, segment, position, reached_at)``: the first time each unit of the
    population reached each stage position (or a later one)."""
    t = LeadTransition
    stages = stage_positions(funnel)
    levels = stage_positions(funnel, "levels")
    columns: list[Any] = [
        members.c.unit_key,
        members.c.segment,
        levels.c.position,
        func.min(t.occurred_at).label("reached_at"),
    ]
    return (
        select(*columns)
        .select_from(t)
        .join(members, members.c.lead_key == t.lead_key)
        .join(stages, stages.c.name == t.to_stage)
        .join(levels, levels.c.position <= stages.c.position)
        .where(t.funnel == funnel.name)
        .group_by(members.c.unit_key, members.c.segment, levels.c.position)
        .cte("unit_reach")
    )
