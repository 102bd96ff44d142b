"""The dashboard in a real browser (Debian's Chromium driven by Playwright): it shows
the same figures as the API, for events sent through ingest and staged by the engine.

`make test` installs Chromium first (`deploy/local/browser.sh`); a missing browser is
a failure here, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.conftest import leadstage_cli
from tests.e2e.conftest import Stack, last_line

CHROMIUM = os.environ.get("LEADSTAGE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

# Ten leads in June 2025: all visit, six download, three ask for a demo, two book a
# meeting (the b2b preset skips Engagement to Opportunity on a meeting), one wins a deal.
JOURNEY = [
    ("page_view", "2025-06-02T10:00:00Z", range(10)),
    ("content_download", "2025-06-05T10:00:00Z", range(6)),
    ("demo_requested", "2025-06-08T10:00:00Z", range(3)),
    ("meeting_scheduled", "2025-06-10T10:00:00Z", range(2)),
    ("deal_won", "2025-06-20T10:00:00Z", range(1)),
]
EXPECTED_REACHED = {
    "Awareness": 10,
    "Interest": 6,
    "Action": 3,
    "Engagement": 2,
    "Opportunity": 2,
    "Customer": 1,
}


def percent(ratio: dict[str, Any]) -> str:
    """The dashboard's rendering of a Ratio (see dashboard.js ratioText)."""
    if ratio["value"] is None:
        return f"n/a ({ratio['reason']})" if ratio.get("reason") else "n/a"
    return f"{ratio['value'] * 100:.1f}%"


async def send_journeys(http: httpx.AsyncClient, stack: Stack, run: str) -> list[str]:
    leads = [f"dash-{run}-{n}" for n in range(10)]
    events = [
        {
            "event_id": f"dash-{run}-{kind}-{n}",
            "type": kind,
            "lead_id": leads[n],
            "email": f"person{n}.{run}@example-{run}.com",
            "occurred_at": at,
            "channel": "paid_search" if n % 2 else "organic_search",
        }
        for kind, at, members in JOURNEY
        for n in members
    ]
    response = await http.post(
        f"{stack.ingest.url}/v1/events/batch", headers=stack.write_headers, json={"events": events}
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)
    return leads


async def wait_until_staged(http: httpx.AsyncClient, stack: Stack, lead: str, stage: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = await http.get(f"{stack.api.url}/v1/leads/{lead}", headers=stack.read_headers)
        if response.status_code == 200 and response.json()["stage"] == stage:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{lead} did not reach {stage}")


async def table_figures(page: Page) -> dict[str, dict[str, str]]:
    rows = page.locator("#funnel-table tbody tr")
    figures: dict[str, dict[str, str]] = {}
    for i in range(await rows.count()):
        row = rows.nth(i)
        stage = await row.get_attribute("data-stage")
        assert stage is not None
        figures[stage] = {
            field: (await row.locator(f'td[data-field="{field}"]').inner_text()).strip()
            for field in ("reached", "current", "step_conversion", "cumulative_conversion")
        }
    return figures


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
async def test_the_dashboard_shows_the_apis_figures(stack: Stack) -> None:
    assert os.access(CHROMIUM, os.X_OK), f"no Chromium at {CHROMIUM}: run `make browser`"
    run = secrets.token_hex(3)
    token = last_line(
        leadstage_cli(
            "tokens",
            "create",
            "--name",
            f"dashboard-{run}",
            "--scopes",
            "metrics:read",
            "leads:read",
            env=stack.env,
        )
    )
    async with httpx.AsyncClient(timeout=30) as http:
        leads = await send_journeys(http, stack, run)
        await wait_until_staged(http, stack, leads[0], "Customer")
        for lead in leads[1:]:  # every lead has at least its first event staged
            await wait_until_staged(
                http,
                stack,
                lead,
                {1: "Opportunity", 2: "Action"}.get(int(lead.rsplit("-", 1)[1]), "")
                or ("Interest" if int(lead.rsplit("-", 1)[1]) < 6 else "Awareness"),
            )
        api = await http.get(
            f"{stack.api.url}/v1/funnels/b2b-six-stage/summary",
            params={"from": "2025-06-01T00:00:00Z", "to": "2025-06-30T23:59:59Z"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert api.status_code == 200, api.text
        summary = api.json()
        sales = await http.get(
            f"{stack.api.url}/v1/metrics/sales",
            params={
                "from": "2025-06-01",
                "to": "2025-07-01",
                "period": "month",
                "funnel": "b2b-six-stage",
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert sales.status_code == 200, sales.text
        june = sales.json()["periods"][-1]["figures"]
        lead_view = (
            await http.get(f"{stack.api.url}/v1/leads/{leads[0]}", headers=stack.read_headers)
        ).json()

    # The data itself, by hand, so a wrong API cannot pass by agreeing with the page.
    assert {s["stage"]: s["reached"] for s in summary["stages"]} == EXPECTED_REACHED

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1600})
            console_errors: list[str] = []
            page.on(
                "console",
                lambda message: (
                    console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: console_errors.append(str(error)))

            response = await page.goto(f"{stack.api.url}/")
            assert response is not None
            assert response.status == 200
            assert "script-src 'self'" in (await response.all_headers())["content-security-policy"]

            # A wrong token is refused and nothing is shown.
            await page.fill("#token", "lst_not-a-real-token")
            await page.click("#token-form button[type=submit]")
            await expect(page.locator("#token-error")).to_contain_text("not valid")
            assert await page.locator("#dashboard").is_hidden()
            console_errors.clear()  # the browser logs that refused request (401)

            await page.fill("#token", token)
            await page.click("#token-form button[type=submit]")
            await page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
            await page.fill("#from", "2025-06-01")
            await page.fill("#to", "2025-06-30")
            await page.evaluate("document.body.dataset.loaded = 'false'")
            await page.click("#filters button[type=submit]")
            await page.wait_for_selector("body[data-loaded=true]", timeout=20_000)

            shown = await table_figures(page)
            assert shown == {
                s["stage"]: {
                    "reached": str(s["reached"]),
                    "current": str(s["current"]),
                    "step_conversion": percent(s["step_conversion"]),
                    "cumulative_conversion": percent(s["cumulative_conversion"]),
                }
                for s in summary["stages"]
            }
            assert shown["Customer"]["cumulative_conversion"] == "10.0%"  # 1 of 10
            # The chart drew the same bars as the table (Chart.js keeps its data).
            bars = await page.evaluate(
                "Chart.getChart('funnel-chart').data.datasets[0].data.map(Number)"
            )
            assert bars == [s["reached"] for s in summary["stages"]]

            # The pipeline cards show June's figures as the API gives them.
            await expect(page.locator('[data-testid="pipeline-cards"]')).to_have_attribute(
                "data-period", "2025-06"
            )
            win_rate = june["win_rate"]
            shown_win_rate = await page.locator('.card[data-metric="win_rate"] .value').inner_text()
            assert shown_win_rate == (
                "n/a" if win_rate["value"] is None else f"{win_rate['value'] * 100:.1f}%"
            )
            assert shown_win_rate == "100.0%"  # one deal closed in June, and it was won

            # Lead search opens the timeline.
            await page.fill("#lead-query", leads[0])
            await page.click("#lead-form button[type=submit]")
            stage_line = page.locator('[data-testid="lead-stage"]')
            await stage_line.wait_for()
            assert (await stage_line.inner_text()).startswith(f"{leads[0]}: Customer")
            assert await page.locator("#lead-result ol.timeline li").count() == len(
                lead_view["transitions"]
            )

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert not console_errors, console_errors
        finally:
            await browser.close()
