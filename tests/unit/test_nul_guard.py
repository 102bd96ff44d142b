"""NUL characters in a path or query are refused as client errors, before any handler."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from leadstage.http import RejectNulCharacters, install_error_handlers


def app() -> FastAPI:
    application = FastAPI()
    install_error_handlers(application)
    application.add_middleware(RejectNulCharacters)

    @application.get("/things/{name}")
    async def thing(name: str, q: str = "") -> dict[str, str]:
        return {"name": name, "q": q}

    return application


async def get(url: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(url)


async def test_a_nul_in_the_query_is_a_422_naming_the_query() -> None:
    response = await get("/things/a?q=x%00y")
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"field": "query", "reason": "NUL characters are not allowed"}
    ]


async def test_a_nul_in_the_path_is_a_422_naming_the_path() -> None:
    response = await get("/things/a%00b")
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "path"


async def test_everything_else_passes_through() -> None:
    response = await get("/things/a?q=%C3%A9t%C3%A9")
    assert response.status_code == 200
    assert response.json() == {"name": "a", "q": "été"}
