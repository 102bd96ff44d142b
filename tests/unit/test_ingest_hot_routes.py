"""The hot intake routes are served ahead of the framework's middleware stack: the same
guards and the same error envelope as every other route must still apply to them.

No lifespan runs here (no database, no broker), so a request that passes the guards
fails inside the handler: the app's own handler for unexpected errors must answer it.
"""

from __future__ import annotations

import httpx
import pytest

from leadstage.settings import IngestSettings
from leadstage_ingest.app import create_app


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = create_app(IngestSettings(max_body_bytes=2048))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")


async def test_a_body_over_the_limit_is_413_before_the_handler(client: httpx.AsyncClient) -> None:
    async with client:
        response = await client.post("/v1/events", content=b"x" * 2049)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "size_violation"
    assert "larger than 2048 bytes" in response.json()["error"]["message"]


async def test_the_batch_route_has_the_batch_body_limit(client: httpx.AsyncClient) -> None:
    async with client:
        # Over the single-event limit, within the batch limit: it reaches the handler
        # (which fails here for want of a running intake: the 500 envelope).
        response = await client.post("/v1/events/batch", content=b'{"events":[]}' + b" " * 4096)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"


async def test_a_nul_in_the_query_is_422(client: httpx.AsyncClient) -> None:
    async with client:
        response = await client.post("/v1/events?x=%00", content=b"{}")
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"field": "query", "reason": "NUL characters are not allowed"}
    ]


async def test_an_unexpected_error_answers_the_500_envelope(client: httpx.AsyncClient) -> None:
    async with client:
        response = await client.post("/v1/events", content=b"{}")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "Internal server error.",
        "details": [],
    }


async def test_other_methods_and_paths_take_the_full_stack(client: httpx.AsyncClient) -> None:
    async with client:
        wrong_method = await client.get("/v1/events")
        health = await client.get("/healthz")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert health.status_code == 200
