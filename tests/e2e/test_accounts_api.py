"""GET /v1/accounts/{id} on the real API process, over a small worked dataset folded by
the engine's batch step (both default funnels), with hand-computed figures."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from leadstage.client import AsyncLeadStageClient, LeadStageClient
from leadstage.db.models import Account, LeadAccount
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch
from tests.conftest import leadstage_cli
from tests.e2e.conftest import Stack, last_line

PRESETS = load_presets()
FUNNELS = [PRESETS["b2b-six-stage"], PRESETS["aida"]]  # the API's default active funnels
D0 = datetime(2026, 9, 1, tzinfo=UTC)
D1 = D0 + timedelta(days=14)  # one engagement half-life later, in both funnels


def worked_dataset(run: str) -> list[Record]:
    events = [
        ("p", "page_view", D0 - timedelta(days=14)),
        ("p", "demo_requested", D0),
        ("q", "content_download", D1),
        ("r", "email_opened", D1),
        ("q", "call", D1 + timedelta(minutes=1)),  # no points in either funnel
        ("r", "call", D1 + timedelta(minutes=2)),
    ]
    return [
        Record(
            "accounts-api",
            0,
            offset,
            None,
            Touchpoint.accept(
                TouchpointIn(
                    event_id=f"{run}-{offset}", type=kind, lead_id=f"{run}-{lead}", occurred_at=at
                ),
                source="accounts-api",
                received_at=at,
            ).to_record(),
        )
        for offset, (lead, kind, at) in enumerate(events)
    ]


def by_stage(funnel: dict[str, Any]) -> dict[str, int]:
    return {s["stage"]: s["contacts"] for s in funnel["contacts_per_stage"]}


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
async def test_the_account_view_matches_the_hand_computed_figures(
    stack: Stack, sessions: SessionFactory
) -> None:
    run = secrets.token_hex(3)
    account = f"domain:{run}.example"
    async with unit_of_work(sessions) as session:
        session.add(
            Account(id=account, domain=f"{run}.example", name="Umbrella", industry="software")
        )
        session.add_all(
            LeadAccount(lead_id=f"{run}-{c}", account_id=account, attached_by="email_domain")
            for c in "pqr"
        )
    async with unit_of_work(sessions) as session:
        await apply_batch(
            session,
            worked_dataset(run),
            consumer_group=f"accounts-api-{run}",
            funnels=FUNNELS,
            outbox_topic="tests.unpublished.v1",
            account_topic="tests.unpublished.accounts.v1",
        )

    url = f"{stack.api.url}/v1/accounts/{account}"
    async with httpx.AsyncClient(timeout=30, headers=stack.read_headers) as http:
        response = await http.get(url, params={"history_limit": 2, "contacts_limit": 2})
        second = await http.get(
            url, params={"history_after": 2, "contacts_after": f"{run}-q", "funnel": "aida"}
        )
        unknown = await http.get(f"{stack.api.url}/v1/accounts/nobody-{run}")
        bad_funnel = await http.get(url, params={"funnel": "nope"})
        too_many = await http.get(url, params={"contacts_limit": 501})
    async with httpx.AsyncClient(timeout=30) as anonymous:
        no_token = await anonymous.get(url)
    metrics_only = last_line(
        leadstage_cli(
            "tokens", "create", "--name", "metrics", "--scopes", "metrics:read", env=stack.env
        )
    )
    async with httpx.AsyncClient(
        timeout=30, headers={"Authorization": f"Bearer {metrics_only}"}
    ) as http:
        wrong_scope = await http.get(url)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["account_id"], body["name"], body["domain"]) == (
        account,
        "Umbrella",
        f"{run}.example",
    )
    assert body["contact_count"] == 3
    b2b, aida = body["funnels"]
    # b2b-six-stage, quorum 2 at Engagement: p entered Awareness, skipped to Action;
    # q then r reached Engagement, and with two there the account follows.
    assert (b2b["funnel"], b2b["stage"], b2b["stage_entered_at"]) == (
        "b2b-six-stage",
        "Engagement",
        (D1 + timedelta(minutes=2)).isoformat().replace("+00:00", "Z"),
    )
    assert b2b["account_rule"] == {"kind": "quorum", "stage": "Engagement", "contacts": 2}
    assert by_stage(b2b) == {
        "Awareness": 0,
        "Interest": 0,
        "Action": 1,
        "Engagement": 2,
        "Opportunity": 0,
        "Customer": 0,
        "Lost": 0,
        "Disqualified": 0,
        "Churned": 0,
    }
    assert (b2b["contacts"], b2b["contacts_without_stage"]) == (3, 0)
    # Engagement (half-life 14 days) at D1, the latest rebase: p had 1 (page view),
    # halved to 0.5 at D0 plus 25 (demo) = 25.5, halved again by D1 = 12.75; q 8
    # (content download); r 1 (email open). Sum 21.75, max 12.75.
    scores = {s["score"]: s for s in b2b["scores"]}
    assert scores["engagement"] == {
        "score": "engagement",
        "sum": 21.75,
        "max": 12.75,
        "contacts": 3,
    }
    assert scores["fit"] == {
        "score": "fit",
        "sum": 0.0,
        "max": 0.0,
        "contacts": 3,
    }  # no firmographics
    assert b2b["scores_as_of"] == D1.isoformat().replace("+00:00", "Z")

    # aida, furthest contact: p Awareness then Desire; q Interest; r no stage.
    assert (aida["stage"], aida["contacts_without_stage"]) == ("Desire", 1)
    assert by_stage(aida) == {"Awareness": 0, "Interest": 1, "Desire": 1, "Action": 0, "Lost": 0}
    # Engagement: p 2, halved + 20 = 21, halved = 10.5; q 8; r 2. Sum 20.5, max 10.5.
    assert aida["scores"] == [{"score": "engagement", "sum": 20.5, "max": 10.5, "contacts": 3}]

    assert [c["lead_id"] for c in body["contacts"]] == [f"{run}-p", f"{run}-q"]
    assert body["contacts_next_cursor"] == f"{run}-q"
    assert body["contacts"][0]["stages"] == [
        {"funnel": "aida", "stage": "Desire", "sales_ready": False},
        {"funnel": "b2b-six-stage", "stage": "Action", "sales_ready": False},
    ]
    history = body["history"]
    assert history["funnel"] == "b2b-six-stage"
    assert [
        (t["seq"], t["from_stage"], t["to_stage"], t["kind"], t["lead_id"])
        for t in history["transitions"]
    ] == [
        (1, None, "Awareness", "entered", f"{run}-p"),
        (2, "Awareness", "Action", "skipped", f"{run}-p"),
    ]
    assert history["next_cursor"] == 2

    assert second.status_code == 200, second.text
    page = second.json()
    assert [c["lead_id"] for c in page["contacts"]] == [f"{run}-r"]
    assert page["contacts_next_cursor"] is None
    assert page["history"]["funnel"] == "aida"
    assert page["history"]["transitions"] == []  # aida's history has two transitions
    assert page["history"]["next_cursor"] is None

    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert bad_funnel.status_code == 404
    assert bad_funnel.json()["error"]["details"][0]["field"] == "funnel"
    assert too_many.status_code == 422
    assert no_token.status_code == 401
    assert no_token.json()["error"]["code"] == "unauthorized"
    assert wrong_scope.status_code == 403

    # The typed client, both flavours.
    with LeadStageClient(stack.api.url, stack.api_token) as client:
        found = client.get_account(account, funnel="aida")
        missing = client.get_account(f"nobody-{run}")
    assert found is not None
    assert [(t.to_stage, t.kind) for t in found.history.transitions] == [
        ("Awareness", "entered"),
        ("Desire", "skipped"),
    ]
    assert missing is None
    async with AsyncLeadStageClient(stack.api.url, stack.api_token) as client:
        again = await client.get_account(account, history_after=2)
    assert again is not None
    b2b_view = again.funnel("b2b-six-stage")
    assert b2b_view is not None
    assert b2b_view.stage == "Engagement"
    assert [(t.seq, t.to_stage, t.lead_id) for t in again.history.transitions] == [
        (3, "Engagement", f"{run}-r")
    ]
