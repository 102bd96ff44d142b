"""The stage engine without a connection pre-ping: the server ends every connection of
the engine's pool (a failover, a restart, an administrator), and the engine goes on.

The first statement on a dead connection fails, and SQLAlchemy then replaces the whole
pool; whoever met it retries (the consumer's batch, an outbox relay, a webhook
dispatcher). The engine must go on consuming and publishing.
"""

from __future__ import annotations

import secrets

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Environment
from tests.e2e.conftest import Stack
from tests.e2e.test_walking_skeleton import published_changes, wait_for_stage
from tests.integration.test_ingest_stale_connections import terminate_backends


async def post(http: httpx.AsyncClient, stack: Stack, lead: str, event_type: str, at: str) -> None:
    response = await http.post(
        f"{stack.ingest.url}/v1/events",
        headers=stack.write_headers,
        json={"type": event_type, "lead_id": lead, "occurred_at": f"2026-11-20T{at}:00Z"},
    )
    assert response.status_code == 202, response.text


async def test_the_engine_goes_on_after_the_server_ended_its_connections(
    stack: Stack, environment: Environment, database: AsyncEngine
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        before = f"lead-{secrets.token_hex(4)}"
        await post(http, stack, before, "page_view", "10:00")
        await wait_for_stage(http, stack, before, "Awareness")

        # Every connection of the engine's pool, idle or not.
        assert await terminate_backends(database, "leadstage-engine") > 0

        after = f"lead-{secrets.token_hex(4)}"
        await post(http, stack, after, "page_view", "10:00")
        await post(http, stack, after, "demo_requested", "10:05")
        await wait_for_stage(http, stack, after, "Action", within=30)
        ready = await http.get(f"{stack.engine.url}/readyz")
        assert ready.status_code == 200, ready.text
    # The outbox relays went on too: the new lead's changes were published.
    changes = await published_changes(stack, environment, after, 2)
    assert [(c["from_stage"], c["to_stage"]) for c in changes] == [
        (None, "Awareness"),
        ("Awareness", "Action"),
    ]
    assert stack.engine.process.poll() is None, "the engine exited"
