"""Readers (the metrics API) describe a funnel as its active registered version."""

from __future__ import annotations

import secrets

from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.funnels import parse_funnel
from leadstage.funnels.registry import active_funnels
from leadstage_engine.versions import register

DEFINITION = """\
name: {name}
version: {version}
stages:
  - {{name: Seen, group: tofu}}
  - {{name: {second}, group: mofu}}
  - {{name: Won, group: bofu}}
exits: [Lost]
rules:
  - name: seen
    priority: 10
    when: {{type: page_view}}
    then: {{move_to: Seen}}
"""


async def test_the_active_version_wins_over_a_newer_file(sessions: SessionFactory) -> None:
    name = f"registry-{secrets.token_hex(3)}"
    running = parse_funnel(DEFINITION.format(name=name, version=1, second="Keen"), "v1.yaml")
    newer_file = parse_funnel(DEFINITION.format(name=name, version=2, second="Eager"), "v2.yaml")
    unknown = parse_funnel(
        DEFINITION.format(name=f"{name}-new", version=1, second="Keen"), "new.yaml"
    )
    async with unit_of_work(sessions) as session:
        await register(session, running, may_activate=True)
        await register(session, newer_file, may_activate=True)  # pending: a replay activates
    async with unit_of_work(sessions) as session:
        seen = await active_funnels(
            session, {name: newer_file, unknown.name: unknown}, [name, unknown.name]
        )
    # The states were computed by version 1: that is the definition to describe.
    assert (seen[name].version, seen[name].stages) == (1, ("Seen", "Keen", "Won"))
    # A funnel no engine registered yet is described by its file.
    assert seen[unknown.name] is unknown

    async with unit_of_work(sessions) as session:
        same = await active_funnels(session, {name: running}, [name])
    assert same[name] is running  # the file is the active version: no re-parse
