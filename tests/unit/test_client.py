"""The Python client's own behaviour: retries on 503, Retry-After, errors, not-found.

The HTTP server here is httpx's in-process transport standing in for the metrics API
(the end-to-end test runs the client against the real one)."""

from __future__ import annotations

import httpx
import pytest

from leadstage.client import AsyncLeadStageClient, LeadStageClient, LeadStageError

LEAD = {
    "lead_id": "l-1",
    "funnel": "b2b-six-stage",
    "stage": "Action",
    "stage_entered_at": "2026-11-20T10:05:00Z",
    "sales_ready": False,
    "scores": {},
    "first_touch_at": "2026-11-20T10:00:00Z",
    "last_touch_at": "2026-11-20T10:05:00Z",
    "transitions": [],
}


def answers(*responses: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handle), seen


def unavailable() -> httpx.Response:
    return httpx.Response(
        503,
        headers={"Retry-After": "0"},
        json={"error": {"code": "unavailable", "message": "later", "details": []}},
    )


def test_a_503_is_retried_and_the_token_is_sent() -> None:
    transport, seen = answers(unavailable(), unavailable(), httpx.Response(200, json=LEAD))
    with LeadStageClient("http://api", "lst_x", transport=transport, backoff=0) as client:
        lead = client.get_lead("l-1")
    assert lead is not None
    assert lead.stage == "Action"
    assert len(seen) == 3
    assert seen[0].headers["authorization"] == "Bearer lst_x"


def test_retries_are_bounded_and_errors_carry_the_envelope() -> None:
    transport, seen = answers(*[unavailable() for _ in range(3)])
    with (
        LeadStageClient("http://api", "t", transport=transport, retries=2, backoff=0) as client,
        pytest.raises(LeadStageError) as caught,
    ):
        client.get_lead("l-1")
    assert caught.value.status == 503
    assert caught.value.code == "unavailable"
    assert len(seen) == 3


def test_a_missing_lead_is_none_but_an_unknown_funnel_is_an_error() -> None:
    missing = httpx.Response(
        404, json={"error": {"code": "not_found", "message": "no", "details": []}}
    )
    bad_funnel = httpx.Response(
        404,
        json={
            "error": {
                "code": "not_found",
                "message": "Unknown funnel",
                "details": [{"field": "funnel", "reason": "active: aida"}],
            }
        },
    )
    transport, _ = answers(missing, bad_funnel)
    with LeadStageClient("http://api", "t", transport=transport) as client:
        assert client.get_lead("nobody") is None
        with pytest.raises(LeadStageError):
            client.get_lead("l-1", funnel="nope")


async def test_the_async_client_behaves_alike() -> None:
    seen: list[httpx.Request] = []
    queue = [unavailable(), httpx.Response(200, json=LEAD)]

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    async with AsyncLeadStageClient(
        "http://api", "t", transport=httpx.MockTransport(handle), backoff=0
    ) as client:
        lead = await client.find_lead(email="Ada@Example.com")
    assert lead is not None
    assert seen[-1].url.params["email"] == "Ada@Example.com"
