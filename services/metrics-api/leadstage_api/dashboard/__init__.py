"""The dashboard page at ``/``: static HTML and JavaScript, every figure from the API.

The page carries no data of its own. The browser asks for an API token once (kept in
the tab's ``sessionStorage``) and sends it as a bearer token on each API call, so the
dashboard shows exactly what that token may read, and the API stays bearer-only (no
cookies, hence no cross-site request forgery on the write endpoints).

Assets are served by the service itself, never from a CDN: the charting library is
vendored from the npm registry by ``make assets`` (see ``services/metrics-api/web``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

#: Scripts and styles only from this origin; no inline script, no eval.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def dashboard_page() -> FileResponse:
    return FileResponse(
        STATIC / "index.html",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


def install_dashboard(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
