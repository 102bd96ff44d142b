"""Lead lookups for internal services, through the Python client, on the real stack."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx

from leadstage.client import AsyncLeadStageClient, LeadStageClient
from tests.e2e.conftest import Stack, start_service
from tests.e2e.test_walking_skeleton import wait_for_stage


async def test_find_by_email_and_anonymous_id_and_list_by_stage(stack: Stack) -> None:
    run = secrets.token_hex(4)
    anonymous, lead = f"anon-{run}", f"lead-{run}"
    email = f"{lead}@corp-{run}.example"
    url = f"{stack.ingest.url}/v1/events"
    async with httpx.AsyncClient(timeout=10) as http:
        for body in (
            {"type": "page_view", "anonymous_id": anonymous, "occurred_at": "2026-11-20T10:00:00Z"},
            {
                "type": "demo_requested",
                "anonymous_id": anonymous,
                "lead_id": lead,
                "email": email,
                "occurred_at": "2026-11-20T11:00:00Z",
            },
            *[
                {
                    "type": "demo_requested",
                    "lead_id": f"{lead}-{n}",
                    "occurred_at": "2026-11-20T11:00:00Z",
                }
                for n in range(5)
            ],
        ):
            assert (await http.post(url, headers=stack.write_headers, json=body)).status_code == 202
        await wait_for_stage(http, stack, f"{lead}-4", "Action")
        await wait_for_stage(http, stack, lead, "Action")

    async with AsyncLeadStageClient(stack.api.url, stack.api_token) as client:
        by_email = await client.find_lead(email=email.upper())
        by_anonymous = await client.find_lead(anonymous_id=anonymous)
        merged = await client.get_lead(f"anon:{anonymous}")  # the merged id follows
        nobody = await client.find_lead(email=f"nobody-{run}@corp.example")
    assert by_email is not None
    assert by_email.lead_id == lead
    assert by_anonymous is not None
    assert by_anonymous.lead_id == lead
    assert merged is not None
    assert merged.lead_id == lead
    assert nobody is None

    def listed() -> list[str]:
        with LeadStageClient(stack.api.url, stack.api_token) as client:
            return [
                summary.lead_id
                for summary in client.iter_leads(stage="Action", page_size=2)
                if summary.lead_id.startswith(lead)
            ]

    found = await asyncio.to_thread(listed)
    assert found == sorted(found)  # stable order across pages
    assert set(found) == {lead, *(f"{lead}-{n}" for n in range(5))}


async def test_bad_list_parameters_get_clear_errors(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10, headers=stack.read_headers) as http:
        stage = await http.get(f"{stack.api.url}/v1/leads", params={"stage": "Nirvana"})
        funnel = await http.get(f"{stack.api.url}/v1/leads", params={"funnel": "nope"})
        limit = await http.get(f"{stack.api.url}/v1/leads", params={"limit": 10_000})
    assert stage.status_code == 404
    assert stage.json()["error"]["details"][0]["field"] == "stage"
    assert funnel.status_code == 404
    assert limit.status_code == 422
    assert limit.json()["error"]["details"][0]["field"] == "limit"


async def test_several_api_worker_processes_answer_the_same_lookups(stack: Stack) -> None:
    lead = f"lead-workers-{secrets.token_hex(4)}"
    async with httpx.AsyncClient(timeout=10) as http:
        body = {"type": "demo_requested", "lead_id": lead, "occurred_at": "2026-11-20T11:00:00Z"}
        posted = await http.post(
            f"{stack.ingest.url}/v1/events", headers=stack.write_headers, json=body
        )
        assert posted.status_code == 202
        await wait_for_stage(http, stack, lead, "Action")
    api = start_service("api", {**stack.env, "LEADSTAGE_HTTP_WORKERS": "2"}, "workers")
    try:
        workers = await asyncio.to_thread(_workers, api.process.pid)
        assert len(workers) == 2
        async with httpx.AsyncClient(timeout=10) as http:
            answers = [
                await http.get(f"{server}/v1/leads/{lead}", headers=stack.read_headers)
                for server in (api.url, stack.api.url)
                for _ in range(4)
            ]
            unauthorized = await http.get(f"{api.url}/v1/leads/{lead}")
    finally:
        assert api.stop() == 0
    assert {answer.status_code for answer in answers} == {200}
    # Everything but the time spent in the current stage, which grows as we ask.
    views = [{**answer.json(), "stage_times": None} for answer in answers]
    assert all(view == views[0] for view in views)
    assert answers[0].json()["stage"] == "Action"
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "unauthorized"


def _workers(pid: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker aside)."""
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return [
        child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
