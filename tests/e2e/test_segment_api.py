"""The Segment-compatible Tracking API over HTTP, with payloads shaped like the Segment
Spec's examples (track, identify, page, group, alias, batch)."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
from sqlalchemy import select

from leadstage.db.models import Account, IdentityMerge, LeadAccount
from leadstage.db.session import SessionFactory
from tests.e2e.conftest import Stack
from tests.e2e.test_walking_skeleton import wait_for_stage


def t() -> str:
    return secrets.token_hex(4)


async def test_a_segment_journey_moves_the_lead_and_builds_its_account(
    stack: Stack, sessions: SessionFactory
) -> None:
    user, anonymous, group = f"user-{t()}", f"anon-{t()}", f"grp-{t()}"
    auth = (stack.write_key, "")  # Segment: write key as Basic username, empty password
    base = stack.ingest.url
    async with httpx.AsyncClient(timeout=10, auth=auth) as http:
        page = await http.post(
            f"{base}/v1/page",
            json={
                "anonymousId": anonymous,
                "name": "Pricing",
                "properties": {"url": "https://example.com/pricing", "title": "Pricing"},
                "context": {"campaign": {"name": "q4", "source": "google", "medium": "cpc"}},
                "timestamp": "2026-11-20T10:00:00Z",
                "messageId": f"p-{t()}",
            },
        )
        identify = await http.post(
            f"{base}/v1/identify",
            json={
                "anonymousId": anonymous,
                "userId": user,
                "traits": {"email": f"{user}@Initech-{t()}.example", "name": "Peter Gibbons"},
                "timestamp": "2026-11-20T10:01:00Z",
            },
        )
        group_call = await http.post(
            f"{base}/v1/group",
            json={
                "userId": user,
                "groupId": group,
                "traits": {
                    "name": "Initech",
                    "industry": "Technology",
                    "employees": 329,
                    "website": f"https://www.initech-{t()}.example",
                },
                "timestamp": "2026-11-20T10:02:00Z",
            },
        )
        track = await http.post(
            f"{base}/v1/track",
            json={
                "userId": user,
                "event": "Demo Requested",
                "properties": {"plan": "Enterprise"},
                "timestamp": "2026-11-20T10:03:00Z",
            },
        )
    async with httpx.AsyncClient(timeout=10) as reader:
        view = await wait_for_stage(reader, stack, user, "Action")
        # The anonymous page view joins the user's history once the engine applies the
        # merge (with the identify event, or its sweep if the merge committed later).
        deadline = time.monotonic() + 15
        while len(view["transitions"]) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            view = (
                await reader.get(f"{stack.api.url}/v1/leads/{user}", headers=stack.read_headers)
            ).json()

    for response in (page, identify, group_call, track):
        assert response.status_code == 200, response.text
        assert response.json()["success"] is True
    assert page.json()["results"][0]["lead_id"] == f"anon:{anonymous}"
    assert identify.json()["results"][0]["lead_id"] == user
    assert [(t["to_stage"], t["event_type"]) for t in view["transitions"]] == [
        ("Awareness", "page_view"),
        ("Action", "demo_requested"),
    ]
    assert view["first_touch_at"] == "2026-11-20T10:00:00Z"
    async with sessions() as session:
        merge = await session.scalar(
            select(IdentityMerge).where(IdentityMerge.from_lead == f"anon:{anonymous}")
        )
        link = await session.get(LeadAccount, user)
        account = await session.get(Account, group)
    assert merge is not None
    assert merge.into_lead == user
    assert link is not None
    assert link.account_id == group
    assert account is not None
    assert (account.name, account.industry, account.employee_count) == (
        "Initech",
        "Technology",
        329,
    )


async def test_alias_and_batch_with_the_write_key_in_the_body(
    stack: Stack, sessions: SessionFactory
) -> None:
    old, new = f"old-{t()}", f"new-{t()}"
    async with httpx.AsyncClient(timeout=10) as http:
        batch = await http.post(
            f"{stack.ingest.url}/v1/batch",
            json={
                "writeKey": stack.write_key,
                "sentAt": "2026-11-20T10:00:10Z",
                "batch": [
                    {
                        "type": "track",
                        "userId": old,
                        "event": "Webinar Registered",
                        "timestamp": "2026-11-20T10:00:00Z",
                        "messageId": f"m1-{t()}",
                    },
                    {
                        "type": "alias",
                        "userId": new,
                        "previousId": old,
                        "timestamp": "2026-11-20T10:00:05Z",
                        "messageId": f"m2-{t()}",
                    },
                    {
                        "type": "track",
                        "event": "Demo Requested",
                        "timestamp": "2026-11-20T10:00:06Z",
                    },  # no userId/anonymousId
                ],
            },
        )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted", "rejected"]
    assert results[2]["error"]["field"] in ("userId", "anonymousId")
    async with sessions() as session:
        merge = await session.scalar(select(IdentityMerge).where(IdentityMerge.from_lead == old))
    assert merge is not None
    assert (merge.into_lead, merge.reason) == (new, "alias")


async def test_segment_errors_use_the_envelope(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10, auth=(stack.write_key, "")) as http:
        no_event = await http.post(f"{stack.ingest.url}/v1/track", json={"userId": "u"})
        wrong_type = await http.post(
            f"{stack.ingest.url}/v1/track", json={"type": "page", "userId": "u"}
        )
    async with httpx.AsyncClient(timeout=10) as anonymous_client:
        no_key = await anonymous_client.post(
            f"{stack.ingest.url}/v1/track", json={"userId": "u", "event": "X"}
        )
    assert no_event.status_code == 422
    assert no_event.json()["error"]["details"][0]["field"] == "event"
    assert wrong_type.status_code == 422
    assert no_key.status_code == 401


async def test_odd_segment_input_is_answered_per_message_never_with_a_500(stack: Stack) -> None:
    base = stack.ingest.url
    ahead = "2099-01-01T00:00:00Z"  # sentAt far ahead: every time is corrected backwards
    async with httpx.AsyncClient(timeout=10, auth=(stack.write_key, "")) as http:
        batch = await http.post(
            f"{base}/v1/batch",
            json={
                "sentAt": ahead,
                "batch": [
                    {"type": "track", "event": "X", "userId": f"u-{t()}"},
                    # .NET's DateTime.MinValue: out of range once corrected.
                    {
                        "type": "track",
                        "event": "X",
                        "userId": f"u-{t()}",
                        "timestamp": "0001-01-01T00:00:00Z",
                    },
                    {
                        "type": "track",
                        "event": "X",
                        "userId": "u",
                        "properties": {"b": "x" * 40_000},
                    },
                ],
            },
        )
        nul_context = await http.post(
            f"{base}/v1/batch",
            json={
                "context": {"campaign": {"name": "spring\u0000"}},
                "batch": [{"type": "page", "anonymousId": f"a-{t()}"}],
            },
        )
    async with httpx.AsyncClient(timeout=10) as no_basic_auth:
        numeric_key = await no_basic_auth.post(
            f"{base}/v1/track", json={"writeKey": 123, "type": "track", "event": "X", "userId": "u"}
        )
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected"]
    assert results[1]["error"]["kind"] == "timestamp_out_of_range"
    assert results[1]["error"]["field"] == "timestamp"
    assert results[2]["error"]["kind"] == "size_violation"
    assert nul_context.status_code == 422
    assert nul_context.json()["error"]["details"][0]["field"] == "context.campaign.name"
    assert numeric_key.status_code == 422
    assert numeric_key.json()["error"]["details"][0]["field"] == "writeKey"


async def test_a_group_call_before_identify_puts_the_known_lead_in_the_buying_group(
    stack: Stack,
) -> None:
    anonymous, user, group = f"anon-{t()}", f"user-{t()}", f"grp-{t()}"
    base = stack.ingest.url
    async with httpx.AsyncClient(timeout=10, auth=(stack.write_key, "")) as http:
        for path, message in (
            ("group", {"anonymousId": anonymous, "groupId": group, "traits": {"name": "Acme"}}),
            ("identify", {"anonymousId": anonymous, "userId": user}),
            ("track", {"userId": user, "event": "Demo Requested"}),
        ):
            response = await http.post(
                f"{base}/v1/{path}", json={**message, "timestamp": "2026-11-20T10:00:00Z"}
            )
            assert response.status_code == 200, response.text
    contacts: list[str] = []
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=10, headers=stack.read_headers) as http:
        while time.monotonic() < deadline:
            response = await http.get(f"{stack.api.url}/v1/accounts/{group}")
            if response.status_code == 200:
                contacts = [c["lead_id"] for c in response.json()["contacts"]]
                if contacts == [user]:
                    break
            await asyncio.sleep(0.2)
    assert contacts == [user]  # the known lead, and not its anonymous past as well
