"""End to end: HTTP into ingest -> transport -> stage engine -> PostgreSQL -> metrics API.

Runs once through the real Kafka broker and once through the embedded event log.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from typing import Any

import httpx

from tests.conftest import Environment
from tests.e2e.conftest import Stack, start_service


async def wait_for_stage(
    http: httpx.AsyncClient, stack: Stack, lead: str, stage: str, within: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await http.get(f"{stack.api.url}/v1/leads/{lead}", headers=stack.read_headers)
        if response.status_code == 200:
            body = response.json()
            if body["stage"] == stage:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{lead} not in {stage} after {within}s; last seen {body}")


def new_lead() -> str:
    return f"lead-{secrets.token_hex(4)}"


async def test_a_page_view_then_a_demo_request_puts_the_lead_in_action(stack: Stack) -> None:
    lead = new_lead()
    async with httpx.AsyncClient(timeout=10) as http:
        for event_type, at in (("page_view", "10:00"), ("demo_requested", "10:07")):
            response = await http.post(
                f"{stack.ingest.url}/v1/events",
                headers=stack.write_headers,
                json={
                    "type": event_type,
                    "lead_id": lead,
                    "occurred_at": f"2026-11-20T{at}:00+01:00",
                },
            )
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "accepted"
        posted = time.monotonic()
        lead_view = await wait_for_stage(http, stack, lead, "Action")
        visible_after = time.monotonic() - posted

    assert visible_after < 1.0, f"stage visible after {visible_after:.2f}s"
    assert [
        (t["from_stage"], t["to_stage"], t["kind"], t["event_type"])
        for t in lead_view["transitions"]
    ] == [
        (None, "Awareness", "entered", "page_view"),
        ("Awareness", "Action", "skipped", "demo_requested"),
    ]
    assert lead_view["stage_entered_at"] == "2026-11-20T09:07:00Z"
    awareness, action = lead_view["stage_times"]
    assert (awareness["stage"], awareness["cumulative_seconds"]) == ("Awareness", 420.0)
    assert awareness["last_exited_at"] == "2026-11-20T09:07:00Z"
    assert (action["stage"], action["last_exited_at"]) == ("Action", None)


async def test_a_resent_event_is_stored_and_counted_once(stack: Stack) -> None:
    lead = new_lead()
    event = {
        "event_id": f"{lead}-e1",
        "type": "meeting_scheduled",
        "lead_id": lead,
        "occurred_at": "2026-11-20T10:00:00Z",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(3):
            response = await http.post(
                f"{stack.ingest.url}/v1/events", headers=stack.write_headers, json=event
            )
            assert response.status_code == 202
        marker = {"type": "deal_won", "lead_id": lead, "occurred_at": "2026-11-21T10:00:00Z"}
        response = await http.post(
            f"{stack.ingest.url}/v1/events", headers=stack.write_headers, json=marker
        )
        assert response.status_code == 202
        view = await wait_for_stage(http, stack, lead, "Customer")
    assert [t["event_id"] for t in view["transitions"]].count(f"{lead}-e1") == 1
    assert len(view["transitions"]) == 2


async def test_bad_input_gets_a_clear_error(stack: Stack) -> None:
    url = f"{stack.ingest.url}/v1/events"
    good = {"type": "page_view", "lead_id": "x", "occurred_at": "2026-11-20T10:00:00Z"}
    async with httpx.AsyncClient(timeout=10) as http:
        malformed = await http.post(
            url,
            headers={**stack.write_headers, "content-type": "application/json"},
            content=b'{"type": "page_view",',
        )
        schema = await http.post(
            url, headers=stack.write_headers, json={**good, "occurred_at": "2026-11-20 10:00"}
        )
        no_key = await http.post(url, json=good)
        wrong_key = await http.post(url, headers={"X-Write-Key": "lsw_wrong"}, json=good)
        too_big = await http.post(
            url,
            headers=stack.write_headers,
            json={**good, "properties": {"blob": "x" * 40_000}},
        )
        no_token = await http.get(f"{stack.api.url}/v1/leads/x")
        unknown = await http.get(f"{stack.api.url}/v1/leads/nobody", headers=stack.read_headers)

    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "json_invalid"
    assert schema.status_code == 422
    assert schema.json()["error"]["details"][0]["field"] == "occurred_at"
    assert (no_key.status_code, wrong_key.status_code) == (401, 401)
    assert too_big.status_code == 413
    assert no_token.status_code == 401
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


async def test_basic_auth_with_the_write_key_as_username_works(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.ingest.url}/v1/events",
            auth=(stack.write_key, ""),
            json={
                "type": "page_view",
                "anonymous_id": "anon-1",
                "occurred_at": "2026-11-20T10:00:00Z",
            },
        )
    assert response.status_code == 202
    assert response.json()["lead_id"] == "anon:anon-1"


async def test_an_unreachable_event_log_answers_503_with_retry_after(stack: Stack) -> None:
    if stack.env["LEADSTAGE_TRANSPORT"] == "kafka":
        broken = {"LEADSTAGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    else:
        broken = {"LEADSTAGE_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}
    env = {**stack.env, **broken, "LEADSTAGE_PRODUCE_TIMEOUT_SECONDS": "1"}
    ingest = start_service("ingest", env, "unready", wait_for="/healthz")
    try:
        async with httpx.AsyncClient(timeout=15) as http:
            ready = await http.get(f"{ingest.url}/readyz")
            response = await http.post(
                f"{ingest.url}/v1/events",
                headers=stack.write_headers,
                json={"type": "page_view", "lead_id": "x", "occurred_at": "2026-11-20T10:00:00Z"},
            )
    finally:
        ingest.stop()
    assert ready.status_code == 503
    if stack.env["LEADSTAGE_TRANSPORT"] == "kafka":
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) > 0
        assert response.json()["error"]["code"] == "unavailable"
    else:
        # Without its database ingest cannot even check the write key: still no 202.
        assert response.status_code in (500, 503), response.text


async def test_sigterm_stops_the_engine_cleanly(stack: Stack) -> None:
    # A second engine in the same group takes part in a rebalance, then leaves on SIGTERM.
    extra = start_service("engine", stack.env, f"{stack.env['LEADSTAGE_TRANSPORT']}-extra")
    # uvicorn finishes the lifespan (drain, commit, leave the group), then re-raises
    # the signal so the exit status says "terminated by SIGTERM". A hang would time out.
    assert extra.stop(timeout=30) in (0, -signal.SIGTERM)
    log = extra.log.read_text()
    assert "stage engine stopped" in log
    assert "Application shutdown complete" in log
    # The original engine keeps working afterwards.
    lead = new_lead()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={"type": "page_view", "lead_id": lead, "occurred_at": "2026-11-20T10:00:00Z"},
        )
        assert response.status_code == 202
        await wait_for_stage(http, stack, lead, "Awareness", within=30)


async def published_changes(
    stack: Stack, environment: Environment, lead: str, count: int
) -> list[dict[str, Any]]:
    """The first ``count`` changes of ``lead`` in the default funnel, read from the
    lead-stage-changed topic (up to 20 s)."""
    from leadstage.db.session import create_engine, create_session_factory
    from leadstage.transport import create_source
    from tests.integration.test_transports import StoredPositions

    settings = environment.settings(stack.env["LEADSTAGE_TRANSPORT"])
    database = create_engine(settings, application_name="changes-reader")
    source = create_source(
        settings,
        create_session_factory(database),
        topic=settings.lead_stage_changed_topic,
        group=f"reader-{lead}",
    )
    await source.start(StoredPositions())
    changes: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    try:
        while len(changes) < count and time.monotonic() < deadline:
            for record in await source.getmany(timeout_ms=300, max_records=1000):
                change = json.loads(record.value)
                # Every active funnel publishes its own changes; follow the default one.
                if record.key == lead.encode() and change["funnel"] == "b2b-six-stage":
                    changes.append(change)
    finally:
        await source.stop()
        await database.dispose()
    return changes


async def test_every_stage_change_is_published(stack: Stack, environment: Environment) -> None:
    lead = new_lead()
    async with httpx.AsyncClient(timeout=10) as http:
        for event_type, at in (("page_view", "10:00"), ("meeting_scheduled", "10:30")):
            response = await http.post(
                f"{stack.ingest.url}/v1/events",
                headers=stack.write_headers,
                json={"type": event_type, "lead_id": lead, "occurred_at": f"2026-11-20T{at}:00Z"},
            )
            assert response.status_code == 202
        await wait_for_stage(http, stack, lead, "Opportunity")

    changes = await published_changes(stack, environment, lead, 2)
    assert [(c["event"], c["from_stage"], c["to_stage"], c["transition"]) for c in changes] == [
        ("LeadStageChanged", None, "Awareness", "entered"),
        ("LeadStageChanged", "Awareness", "Opportunity", "skipped"),
    ]
    assert len({c["change_id"] for c in changes}) == 2
