"""The shared HTTP layer: error envelope and body limit, on a small app of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from leadstage.http import ApiError, BodySizeLimitMiddleware, install_error_handlers


class Item(BaseModel):
    name: str
    count: int


def build_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=100)

    @app.post("/items")
    async def create(item: Item) -> Item:
        return item

    @app.get("/teapot")
    async def teapot() -> None:
        raise ApiError(418, "teapot", "I am a teapot", headers={"Retry-After": "1"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_schema_violations_name_each_field() -> None:
    async with client() as http:
        response = await http.post("/items", json={"name": "x", "count": "many"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "schema_violation"
    assert error["details"] == [
        {
            "field": "count",
            "reason": "Input should be a valid integer, unable to parse string as an integer",
        }
    ]


async def test_malformed_json_is_a_400() -> None:
    async with client() as http:
        response = await http.post(
            "/items", content=b'{"name": ', headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "json_invalid"


async def test_api_errors_keep_their_status_and_headers() -> None:
    async with client() as http:
        response = await http.get("/teapot")
    assert response.status_code == 418
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "error": {"code": "teapot", "message": "I am a teapot", "details": []}
    }


async def test_a_500_hides_the_details() -> None:
    async with client() as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["code"] == "internal_error"


async def test_unknown_routes_use_the_envelope() -> None:
    async with client() as http:
        response = await http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_a_body_over_the_limit_is_a_413_by_declared_length() -> None:
    async with client() as http:
        response = await http.post("/items", content=b"x" * 101)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "size_violation"


async def test_a_streamed_body_without_length_is_counted_too() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 30

    async with client() as http:
        response = await http.post("/items", content=chunks())
    assert response.status_code == 413


async def test_a_body_within_the_limit_passes() -> None:
    async with client() as http:
        response = await http.post("/items", json={"name": "x", "count": 2})
    assert response.status_code == 200
    assert response.json() == {"name": "x", "count": 2}
