"""The funnel summary on a small worked dataset with hand-computed figures, including
the sources' example: 1,000 landing-page visitors in January, 25 of whom became paying
customers that month, is a 2.5% conversion."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import httpx
import pytest

from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch
from tests.conftest import leadstage_cli
from tests.e2e.conftest import Stack, last_line

B2B = load_presets()["b2b-six-stage"]


def day(n: int) -> datetime:
    return datetime(2020, 1, n, tzinfo=UTC)


def worked_dataset(run: str) -> list[Record]:
    events: list[tuple[datetime, str, int]] = []
    for lead in range(1000):  # every visitor; half of them long ago
        events.append((day(1) if lead < 500 else day(20), "page_view", lead))
    events += [(day(25), "content_download", lead) for lead in range(100)]
    events += [(day(26), "demo_requested", lead) for lead in [*range(50), *range(900, 910)]]
    events += [(day(27), "meeting_scheduled", lead) for lead in range(30)]
    events += [(day(28), "deal_won", lead) for lead in range(25)]
    events += [(day(28), "deal_lost", lead) for lead in range(25, 30)]
    events.sort()
    return [
        Record(
            "worked",
            0,
            offset,
            None,
            Touchpoint.accept(
                TouchpointIn(
                    event_id=f"{run}-{offset}",
                    type=kind,
                    lead_id=f"{run}-lead-{lead}",
                    occurred_at=at,
                ),
                source=f"worked-{run}",
                received_at=at,
            ).to_record(),
        )
        for offset, (at, kind, lead) in enumerate(events)
    ]


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
async def test_the_summary_matches_the_hand_computed_figures(
    stack: Stack, sessions: SessionFactory
) -> None:
    run = secrets.token_hex(3)
    records = worked_dataset(run)
    for start in range(0, len(records), 500):
        async with unit_of_work(sessions) as session:
            await apply_batch(
                session,
                records[start : start + 500],
                consumer_group=f"w-{run}",
                funnels=[B2B],
                outbox_topic="tests.unpublished.v1",
            )
    # The summary reads the rollup (the engine's task would catch up within a second).
    assert "rolled up" in leadstage_cli("rollup", env=stack.env)
    token = last_line(
        leadstage_cli(
            "tokens", "create", "--name", "metrics", "--scopes", "metrics:read", env=stack.env
        )
    )
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        response = await http.get(
            f"{stack.api.url}/v1/funnels/b2b-six-stage/summary",
            params={
                "from": "2020-01-01T00:00:00Z",
                "to": "2020-02-01T00:00:00Z",
                "window_days": 30,
            },
        )
        empty = await http.get(
            f"{stack.api.url}/v1/funnels/b2b-six-stage/summary",
            params={"from": "2019-01-01T00:00:00Z", "to": "2019-02-01T00:00:00Z"},
        )
        backwards = await http.get(
            f"{stack.api.url}/v1/funnels/b2b-six-stage/summary",
            params={"from": "2020-02-01T00:00:00Z", "to": "2020-01-01T00:00:00Z"},
        )
        no_scope = await http.get(
            f"{stack.api.url}/v1/funnels/b2b-six-stage/summary", headers=stack.read_headers
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "rollup"
    assert body["aggregated_through"] is not None
    stages = {s["stage"]: s for s in body["stages"]}
    assert body["leads"] == 1000
    assert body["exits"]["Lost"] == 5
    assert {k: s["reached"] for k, s in stages.items()} == {
        "Awareness": 1000,
        "Interest": 110,
        "Action": 60,
        "Engagement": 30,
        "Opportunity": 30,
        "Customer": 25,
    }
    assert {k: s["current"] for k, s in stages.items()} == {
        "Awareness": 890,
        "Interest": 50,
        "Action": 30,
        "Engagement": 0,
        "Opportunity": 0,
        "Customer": 25,
    }
    assert stages["Customer"]["cumulative_conversion"]["value"] == 0.025  # 25 of 1,000
    assert stages["Interest"]["step_conversion"]["value"] == 0.11
    assert stages["Action"]["step_conversion"]["value"] == round(60 / 110, 6)
    assert stages["Customer"]["step_conversion"]["value"] == round(25 / 30, 6)
    assert {k: s["drop_off"] for k, s in stages.items()} == {
        "Awareness": 0,
        "Interest": 890,
        "Action": 50,
        "Engagement": 30,
        "Opportunity": 0,
        "Customer": 5,
    }
    # Of the 890 who never got past Awareness, 400 last touched before the window.
    assert (stages["Interest"]["in_progress"], stages["Interest"]["dropped"]) == (490, 400)
    assert (stages["Customer"]["in_progress"], stages["Customer"]["dropped"]) == (0, 5)

    assert empty.status_code == 200
    assert empty.json()["leads"] == 0
    assert empty.json()["stages"][1]["step_conversion"] == {
        "value": None,
        "reason": "no leads reached the previous stage",
    }
    assert backwards.status_code == 422
    assert backwards.json()["error"]["details"][0]["field"] == "to"
    assert no_scope.status_code == 403
