"""Sales metrics on a small worked dataset with hand-computed figures: events through
the real engine (apply_batch) into the real PostgreSQL, inputs through the real API.

The dataset lives in 2002-2003, before any other test's events, because churn reads
every customer ever won before a period starts.

Leads (first touch = a page view on the channel and UTM source shown):
    L0  email/newsletter   2002-10-01  won D0 5,000 on 2002-11-15; renewal 2,000 on 2003-02-20
    L1  paid_search/google 2003-01-01  won D1 10,000 on 2003-01-31 (30 days); churned 2003-05-10
    L2  paid_search/google 2002-12-01  forecast event for D2 on 2002-12-20 (Feb 15, 30,000,
                                       team emea); won D2 30,000 on 2003-03-02 (91 days)
    L3  events             2003-02-01  lost D3 on 2003-03-15
    L4  paid_search/google 2003-01-05  won D4 20,000 on 2003-02-05, sent twice (31 days)
    L5  paid_social/linkedin 2003-04-01 won D5 8,000 on 2003-04-11 (10 days); churned 2003-06-20
    L7  paid_social/linkedin 2003-03-01 won D7 40,000 on 2003-06-01 (92 days)
    L9  (proposal only)    forecast event for D9 on 2003-01-10 (Feb 28, 15,000, team apac)
    L10 direct             2003-07-01  won D10 1,000 USD on 2003-07-11 (10 days)
    L11 direct             2003-07-01  won D11 3,000 EUR on 2003-07-21 (20 days)
    L12 direct             2003-08-01  won D12 (no amount) on 2003-08-01 (0 days)
Accounts: L1 and L2 software (L2 tier 1), L3 manufacturing; fit = 10 (L1), 10+15 (L2).
API forecasts (team emea): D6 Mar 20 as of 2002-12-01, moved to May 15 as of 2003-03-10
(never closes); D7 Jun 10, 40,000 as of 2003-03-25.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from leadstage import credentials
from leadstage.db.models import Account, LeadAccount
from leadstage.db.session import SessionFactory, create_engine, create_session_factory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch
from tests.conftest import Environment
from tests.e2e.conftest import Stack

B2B = load_presets()["b2b-six-stage"]
OUTBOX = "tests.unpublished.v1"


def utc(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def touch(run: str, n: int, lead: str, kind: str, at: datetime, **fields: Any) -> Record:
    touchpoint = Touchpoint.accept(
        TouchpointIn(
            event_id=f"{run}-{n}", type=kind, lead_id=f"{run}-{lead}", occurred_at=at, **fields
        ),
        source=f"sales-{run}",
        received_at=at,
    )
    return Record("sales", 0, n, None, touchpoint.to_record())


def deal(run: str, name: str, amount: float | None = None, **more: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {"deal_id": f"{run}-{name}", **more}
    if amount is not None:
        properties["amount"] = amount
        properties.setdefault("currency", "EUR")
    return properties


def worked_events(run: str) -> list[Record]:
    def visit(
        lead: str, at: datetime, channel: str, source: str | None = None, **account: Any
    ) -> tuple[str, str, datetime, dict[str, Any]]:
        extra: dict[str, Any] = {"channel": channel}
        if source:
            extra["utm"] = {"source": source}
        if account:
            extra["account"] = {"domain": f"{lead.lower()}-{run}.example", **account}
        return (lead, "page_view", at, extra)

    timeline: list[tuple[str, str, datetime, dict[str, Any]]] = [
        visit("L0", utc(2002, 10, 1), "email", "newsletter"),
        ("L0", "deal_won", utc(2002, 11, 15), {"properties": deal(run, "D0", 5000)}),
        ("L0", "renewal", utc(2003, 2, 20), {"properties": deal(run, "D0r", 2000)}),
        visit("L1", utc(2003, 1, 1), "paid_search", "google", industry="software"),
        ("L1", "deal_won", utc(2003, 1, 31), {"properties": deal(run, "D1", 10000)}),
        ("L1", "churned", utc(2003, 5, 10), {}),
        visit("L2", utc(2002, 12, 1), "paid_search", "google", industry="software", tier=1),
        (
            "L2",
            "proposal_sent",
            utc(2002, 12, 20),
            {
                "properties": deal(
                    run, "D2", 30000, expected_close_date="2003-02-15", rep="alice", team="emea"
                )
            },
        ),
        ("L2", "deal_won", utc(2003, 3, 2), {"properties": deal(run, "D2", 30000)}),
        visit("L3", utc(2003, 2, 1), "events", industry="manufacturing"),
        ("L3", "deal_lost", utc(2003, 3, 15), {"properties": deal(run, "D3")}),
        visit("L4", utc(2003, 1, 5), "paid_search", "google"),
        ("L4", "deal_won", utc(2003, 2, 5), {"properties": deal(run, "D4", 20000)}),
        ("L4", "deal_won", utc(2003, 2, 5), {"properties": deal(run, "D4", 20000)}),  # resent
        visit("L5", utc(2003, 4, 1), "paid_social", "linkedin"),
        ("L5", "deal_won", utc(2003, 4, 11), {"properties": deal(run, "D5", 8000)}),
        ("L5", "churned", utc(2003, 6, 20), {}),
        visit("L7", utc(2003, 3, 1), "paid_social", "linkedin"),
        ("L7", "deal_won", utc(2003, 6, 1), {"properties": deal(run, "D7", 40000)}),
        (
            "L9",
            "proposal_sent",
            utc(2003, 1, 10),
            {
                "channel": "outbound",
                "properties": deal(
                    run, "D9", 15000, expected_close_date="2003-02-28", rep="carol", team="apac"
                ),
            },
        ),
        visit("L10", utc(2003, 7, 1), "direct"),
        (
            "L10",
            "deal_won",
            utc(2003, 7, 11),
            {"properties": deal(run, "D10", 1000, currency="USD")},
        ),
        visit("L11", utc(2003, 7, 1), "direct"),
        ("L11", "deal_won", utc(2003, 7, 21), {"properties": deal(run, "D11", 3000)}),
        visit("L12", utc(2003, 8, 1), "direct"),
        ("L12", "deal_won", utc(2003, 8, 1), {"properties": deal(run, "D12")}),
    ]
    return [
        touch(run, n, lead, kind, at, **extra) for n, (lead, kind, at, extra) in enumerate(timeline)
    ]


async def ingest_directly(sessions: SessionFactory, run: str, records: list[Record]) -> None:
    async with unit_of_work(sessions) as session:
        await apply_batch(
            session, records, consumer_group=f"sales-{run}", funnels=[B2B], outbox_topic=OUTBOX
        )


async def attach_accounts(sessions: SessionFactory, run: str) -> None:
    """What ingest writes for these leads' accounts (the engine does not)."""
    async with unit_of_work(sessions) as session:
        for lead, industry in (("L1", "software"), ("L2", "software"), ("L3", "manufacturing")):
            account = f"{run}-{lead}-account"
            session.add(
                Account(id=account, domain=f"{lead.lower()}-{run}.example", industry=industry)
            )
            session.add(
                LeadAccount(lead_id=f"{run}-{lead}", account_id=account, attached_by="domain")
            )


async def token(sessions: SessionFactory, name: str, *scopes: str) -> dict[str, str]:
    async with unit_of_work(sessions) as session:
        issued = await credentials.create_api_token(session, name, list(scopes))
    return {"Authorization": f"Bearer {issued.secret}"}


def figures(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["period"]: p["figures"] for p in body["periods"]}


def values(by_period: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return {period: f[name]["value"] for period, f in by_period.items()}


def reasons(by_period: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return {period: f[name]["reason"] for period, f in by_period.items()}


def segment(body: dict[str, Any], period: str, name: str) -> dict[str, Any]:
    row = next(p for p in body["periods"] if p["period"] == period)
    return next(s["figures"] for s in row["segments"] if s["segment"] == name)


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
async def test_sales_metrics_match_the_hand_computed_figures(
    stack: Stack, sessions: SessionFactory
) -> None:
    run = secrets.token_hex(3)
    await ingest_directly(sessions, run, worked_events(run))
    await attach_accounts(sessions, run)
    writer = await token(sessions, f"sales-writer-{run}", "inputs:write")
    reader = await token(sessions, f"sales-reader-{run}", "metrics:read")
    api = stack.api.url

    async with httpx.AsyncClient(base_url=api, timeout=30) as http:

        async def put(path: str, body: dict[str, Any]) -> None:
            response = await http.put(path, json=body, headers=writer)
            assert response.status_code == 201, response.text

        emea = "/v1/quotas/team/emea"
        await put(f"{emea}/2003-Q1", {"amount": 50000, "currency": "EUR"})
        await put(f"{emea}/2003-Q1", {"amount": 40000, "currency": "EUR"})  # v2 stands
        for month in ("2003-04", "2003-05", "2003-06", "2003-07"):
            await put(f"{emea}/{month}", {"amount": 10000, "currency": "EUR"})
        await put("/v1/quotas/rep/zed/2003-Q1", {"amount": 0, "currency": "EUR"})
        for period, channel, amount in (
            ("2002-Q4", "paid_search", 8000),
            ("2002-Q4", "email", 2000),
            ("2003-01", "paid_search", 6000),
            ("2003-02", "paid_search", 6000),
            ("2003-03", "paid_search", 7000),
            ("2003-03", "paid_search", 8000),  # corrected: v2 stands
            ("2003-Q1", "email", 4000),
            ("2003-Q2", "paid_search", 24000),
        ):
            await put(f"/v1/spend/{period}/{channel}", {"amount": amount, "currency": "EUR"})
        for deal_id, close, amount, as_of in (
            ("D6", "2003-03-20", 50000, "2002-12-01T00:00:00Z"),
            ("D6", "2003-05-15", 50000, "2003-03-10T00:00:00Z"),
            ("D7", "2003-06-10", 40000, "2003-03-25T00:00:00Z"),
        ):
            await put(
                f"/v1/forecasts/{run}-{deal_id}",
                {
                    "expected_close_date": close,
                    "amount": amount,
                    "currency": "EUR",
                    "rep": "bob",
                    "team": "emea",
                    "as_of": as_of,
                },
            )

        async def metrics(**params: Any) -> dict[str, Any]:
            response = await http.get("/v1/metrics/sales", params=params, headers=reader)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        quarters = dict(period="quarter", **{"from": "2003-01-01", "to": "2003-10-01"})
        emea_body = await metrics(**quarters, owner="team:emea")
        everyone = figures(await metrics(**quarters))
        by_channel = await metrics(**quarters, breakdown="channel")
        by_industry = await metrics(**quarters, breakdown="industry")
        linkedin = figures(await metrics(**quarters, source="linkedin"))
        in_euro = figures(await metrics(**quarters, currency="EUR"))
        narrow_bins = figures(await metrics(**quarters, score_bin_width=5))
        months = dict(period="month", **{"from": "2003-01-01", "to": "2003-04-01"})
        by_month = figures(await metrics(**months))
        paid_search_months = figures(await metrics(**months, channel="paid_search"))
        nobody = figures(await metrics(**quarters, owner="team:nobody"))
        zed = figures(await metrics(**quarters, owner="rep:zed"))
        empty = figures(await metrics(period="month", **{"from": "1990-01-01", "to": "1990-02-01"}))

    emea_figures = figures(emea_body)
    assert list(emea_figures) == ["2003-Q1", "2003-Q2", "2003-Q3"]
    assert emea_body["owner"] == "team:emea"
    assert emea_body["periods"][0]["start"] == "2003-01-01T00:00:00Z"

    # Win rate: Q1 won D1, D2, D4 (sent twice, counted once), lost D3: 3 / 4.
    # Q2 won D5, D7: 2 / 2. Q3 won D10, D11, D12: 3 / 3.
    assert values(everyone, "win_rate") == {"2003-Q1": 0.75, "2003-Q2": 1.0, "2003-Q3": 1.0}
    assert everyone["2003-Q1"]["win_rate"]["denominator"] == 4
    # Deal size: Q1 (10,000 + 30,000 + 20,000) / 3; Q2 (8,000 + 40,000) / 2.
    # Q3 mixes USD and EUR: null unless a currency is named; in EUR only D11 has an
    # amount (D12 has none): 3,000 / 1.
    assert values(everyone, "average_deal_size") == {
        "2003-Q1": 20000.0,
        "2003-Q2": 24000.0,
        "2003-Q3": None,
    }
    assert everyone["2003-Q3"]["average_deal_size"]["reason"] == (
        "amounts in several currencies (EUR, USD): pass currency="
    )
    assert in_euro["2003-Q3"]["average_deal_size"] == {
        "value": 3000.0,
        "reason": None,
        "numerator": 3000.0,
        "denominator": 1.0,
    }
    # Sales cycle, first touch -> won: Q1 (30 + 91 + 31) / 3 = 152 / 3;
    # Q2 (10 + 92) / 2; Q3 (10 + 20 + 0) / 3.
    assert values(everyone, "average_sales_cycle_days") == {
        "2003-Q1": 50.666667,
        "2003-Q2": 51.0,
        "2003-Q3": 10.0,
    }
    assert everyone["2003-Q1"]["average_sales_cycle_days"]["numerator"] == 152.0
    # Churn: customers on Jan 1: L0; none lost: 0 / 1. On Apr 1: L0, L1, L2, L4; L1
    # churned (L5 too, but it became a customer in Q2): 1 / 4 x 100. On Jul 1: L0, L2,
    # L4, L7; none lost.
    assert values(everyone, "churn_rate_percent") == {
        "2003-Q1": 0.0,
        "2003-Q2": 25.0,
        "2003-Q3": 0.0,
    }
    # ROMI: revenue Q4 2002 = 5,000 (D0); Q1 = 10,000 + 30,000 + 20,000 + 2,000 renewal
    # = 62,000. Spend Q4 = 8,000 + 2,000; Q1 = (6,000 + 6,000 + 8,000) + 4,000 = 24,000.
    # (62,000 - 5,000) / (24,000 - 10,000) = 57,000 / 14,000.
    # Q2 spend is 24,000 again: no increase to divide by. Q3 has no spend at all.
    assert everyone["2003-Q1"]["romi"] == {
        "value": 4.071429,
        "reason": None,
        "numerator": 57000.0,
        "denominator": 14000.0,
    }
    assert reasons(everyone, "romi") == {
        "2003-Q1": None,
        "2003-Q2": "marketing spend did not change from 2003-Q1 to 2003-Q2",
        "2003-Q3": "no marketing spend recorded for 2003-Q3",
    }
    # Slippage, all owners: forecast for Q1 are D2 (closed Mar 2), D6 (Mar 20, not
    # closed) and D9 (Feb 28, not closed): 2 / 3 x 100. Team emea: D2 and D6: 1 / 2.
    # Q2: D6 (moved to May 15, not closed) and D7 (closed Jun 1): 1 / 2.
    assert values(everyone, "deal_slippage_rate_percent") == {
        "2003-Q1": 66.666667,
        "2003-Q2": 50.0,
        "2003-Q3": None,
    }
    assert everyone["2003-Q3"]["deal_slippage_rate_percent"]["reason"] == (
        "no deals were forecast to close in 2003-Q3"
    )
    assert values(emea_figures, "deal_slippage_rate_percent")["2003-Q1"] == 50.0
    # Coverage, team emea, as of each quarter's start. Jan 1: D2 30,000 (event forecast
    # of Dec 20) + D6 50,000 (as of Dec 1) over the Q1 quota 40,000 (its second version).
    # Apr 1: D6 50,000 (moved to May 15) + D7 40,000 over the three monthly quotas
    # 3 x 10,000. Q3 has a quota for July only.
    assert values(emea_figures, "pipeline_coverage") == {
        "2003-Q1": 2.0,
        "2003-Q2": 3.0,
        "2003-Q3": None,
    }
    assert emea_figures["2003-Q1"]["pipeline_coverage"]["numerator"] == 80000.0
    assert emea_figures["2003-Q3"]["pipeline_coverage"]["reason"] == (
        "the quota of team emea is stated for only 1 of the 3 months of 2003-Q3"
    )
    assert everyone["2003-Q1"]["pipeline_coverage"]["reason"] == (
        "pipeline coverage is per rep or team: pass owner=rep:<id> or owner=team:<id>"
    )
    assert nobody["2003-Q1"]["pipeline_coverage"]["reason"] == "no quota for team nobody in 2003-Q1"
    assert (
        zed["2003-Q1"]["pipeline_coverage"]["reason"] == "the quota of rep zed for 2003-Q1 is zero"
    )

    # Lead scores at each quarter's end. Fit does not decay: L1 10, L2 25.
    # Engagement: one page view each, decayed below 10: 6 leads by Apr 1 (L0-L4, L7),
    # 7 by Jul 1 (+L5), 10 by Oct 1 (+L10-L12).
    fit = {d["score"]: d for d in everyone["2003-Q1"]["lead_scores"]}["fit"]
    assert fit["leads"] == 2
    assert fit["mean"]["value"] == 17.5  # (10 + 25) / 2
    assert [(b["lower"], b["upper"], b["leads"]) for b in fit["bins"]] == [
        (10.0, 20.0, 1),
        (20.0, 30.0, 1),
    ]
    engagement = {
        period: {d["score"]: d for d in f["lead_scores"]}["engagement"]
        for period, f in everyone.items()
    }
    assert {p: (d["leads"], len(d["bins"])) for p, d in engagement.items()} == {
        "2003-Q1": (6, 1),
        "2003-Q2": (7, 1),
        "2003-Q3": (10, 1),
    }
    assert engagement["2003-Q1"]["bins"][0]["lower"] == 0.0
    narrow_fit = {d["score"]: d for d in narrow_bins["2003-Q1"]["lead_scores"]}["fit"]
    assert [(b["lower"], b["leads"]) for b in narrow_fit["bins"]] == [
        (10.0, 1),
        (15.0, 0),
        (20.0, 0),
        (25.0, 1),
    ]

    # Months. Feb: D4 sent twice is one deal. Mar: D2 won, D3 lost. Jan's ROMI cannot
    # be had: email's spend is stated for the whole quarter.
    assert values(by_month, "win_rate") == {"2003-01": 1.0, "2003-02": 1.0, "2003-03": 0.5}
    assert by_month["2003-02"]["average_deal_size"]["denominator"] == 1.0
    assert by_month["2003-01"]["romi"]["reason"] == (
        "spend on email is stated for 2003-Q1 as a whole, not per month"
    )
    # Paid search alone. Mar: (30,000 - 20,000) / (8,000 - 6,000). Feb: spend flat.
    # Jan: December's spend is stated for 2002-Q4 as a whole.
    assert values(paid_search_months, "romi") == {"2003-01": None, "2003-02": None, "2003-03": 5.0}
    assert reasons(paid_search_months, "romi") == {
        "2003-01": "spend on paid_search is stated for 2002-Q4 as a whole, not per month",
        "2003-02": "marketing spend did not change from 2003-01 to 2003-02",
        "2003-03": None,
    }
    assert paid_search_months["2003-03"]["win_rate"]["value"] == 1.0  # D3 was on events

    # Breakdown by first-touch channel.
    channels = [s["segment"] for s in by_channel["periods"][0]["segments"]]
    assert channels == ["direct", "email", "events", "paid_search", "paid_social"]
    paid_search = segment(by_channel, "2003-Q1", "paid_search")
    assert paid_search["win_rate"]["value"] == 1.0  # D1, D2, D4
    assert paid_search["average_deal_size"]["value"] == 20000.0
    # (60,000 - 0) / ((6,000 + 6,000 + 8,000) - 8,000)
    assert paid_search["romi"]["value"] == 5.0
    assert paid_search["churn_rate_percent"]["reason"] == "no customers at the start of 2003-Q1"
    assert paid_search["pipeline_coverage"]["reason"] == (
        "forecasts and quotas are per deal, rep and team, not per channel paid_search"
    )
    email = segment(by_channel, "2003-Q1", "email")
    assert email["win_rate"]["reason"] == "no deals closed in 2003-Q1"
    assert email["romi"]["value"] == -1.5  # (2,000 - 5,000) / (4,000 - 2,000)
    assert email["churn_rate_percent"]["value"] == 0.0
    events = segment(by_channel, "2003-Q1", "events")
    assert events["win_rate"]["value"] == 0.0  # D3 lost
    assert events["romi"]["reason"] == "no marketing spend recorded for 2003-Q1 on events"

    # Breakdown by the account's industry.
    industries = [s["segment"] for s in by_industry["periods"][0]["segments"]]
    assert industries == ["manufacturing", "software", "unattributed"]
    software = segment(by_industry, "2003-Q1", "software")
    assert software["average_sales_cycle_days"]["value"] == 60.5  # (30 + 91) / 2
    assert software["average_deal_size"]["value"] == 20000.0  # (10,000 + 30,000) / 2
    assert {d["score"]: d["leads"] for d in software["lead_scores"]}["fit"] == 2
    assert segment(by_industry, "2003-Q1", "manufacturing")["win_rate"]["value"] == 0.0
    assert segment(by_industry, "2003-Q1", "unattributed")["romi"]["reason"] == (
        "marketing spend is recorded per channel, not per industry"
    )

    # Filter by the first touch's UTM source: L5 and L7.
    assert linkedin["2003-Q2"]["average_deal_size"]["value"] == 24000.0
    assert linkedin["2003-Q2"]["average_sales_cycle_days"]["value"] == 51.0
    assert linkedin["2003-Q2"]["romi"]["reason"] == (
        "marketing spend is recorded per channel, not per source"
    )

    # A month with nothing at all: every figure null with its reason.
    nothing = empty["1990-01"]
    assert {name: nothing[name]["reason"] for name in nothing if name != "lead_scores"} == {
        "average_sales_cycle_days": "no deals won in 1990-01",
        "average_deal_size": "no deals won in 1990-01",
        "win_rate": "no deals closed in 1990-01",
        "churn_rate_percent": "no customers at the start of 1990-01",
        "deal_slippage_rate_percent": "no deals were forecast to close in 1990-01",
        "pipeline_coverage": (
            "pipeline coverage is per rep or team: pass owner=rep:<id> or owner=team:<id>"
        ),
        "romi": "no marketing spend recorded for 1990-01",
    }
    assert all(nothing[name]["value"] is None for name in nothing if name != "lead_scores")
    assert [(d["score"], d["leads"], d["mean"]["reason"]) for d in nothing["lead_scores"]] == [
        ("fit", 0, "no lead has a value for fit at the end of 1990-01"),
        ("engagement", 0, "no lead has a value for engagement at the end of 1990-01"),
    ]


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
async def test_inputs_are_versioned_idempotent_and_audited(
    stack: Stack, sessions: SessionFactory
) -> None:
    run = secrets.token_hex(3)
    writer = await token(sessions, f"writer-{run}", "inputs:write")
    reader = await token(sessions, f"reader-{run}", "metrics:read")
    quota = f"/v1/quotas/rep/alice-{run}/2026-Q3"
    async with httpx.AsyncClient(base_url=stack.api.url, timeout=30) as http:
        answers = [
            await http.put(quota, json=body, headers=writer)
            for body in (
                {"amount": 100, "currency": "EUR"},
                {"amount": 100, "currency": "EUR"},  # a retry: nothing new
                {"amount": "100.0000", "currency": "EUR"},  # the same amount, written otherwise
                {"amount": 120.5, "currency": "EUR"},
                {"amount": 100, "currency": "EUR"},  # back to 100: a new version, not a revert
                {"amount": 100, "currency": "USD"},
            )
        ]
        current = await http.get(quota, headers=reader)
        history = await http.get(f"{quota}/history", headers=reader)
        missing = await http.get(f"/v1/quotas/team/none-{run}/2026-Q3", headers=reader)

        spend = "/v1/spend/2031-07/paid_search"
        spend_answers = [
            (await http.put(spend, json={"amount": amount, "currency": "EUR"}, headers=writer))
            for amount in (0, 0, 12000)
        ]
        spend_history = await http.get(f"{spend}/history", headers=reader)

        # Concurrent writers of one key get distinct, gapless versions.
        race = f"/v1/quotas/team/race-{run}/2026-08"
        raced = await asyncio.gather(
            *(
                http.put(race, json={"amount": n, "currency": "EUR"}, headers=writer)
                for n in range(1, 9)
            )
        )
        race_history = await http.get(f"{race}/history", headers=reader)

    assert [a.status_code for a in answers] == [201, 200, 200, 201, 201, 201]
    assert [a.json()["version"] for a in answers] == [1, 1, 1, 2, 3, 4]
    first = answers[0].json()
    assert (first["written_by"], first["amount"], first["currency"]) == (
        f"writer-{run}",
        100.0,
        "EUR",
    )
    assert isinstance(first["written_by_token_id"], int)
    assert current.status_code == 200
    assert (current.json()["version"], current.json()["currency"]) == (4, "USD")
    assert history.status_code == 200
    assert [(v["version"], v["amount"], v["currency"]) for v in history.json()["versions"]] == [
        (1, 100.0, "EUR"),
        (2, 120.5, "EUR"),
        (3, 100.0, "EUR"),
        (4, 100.0, "USD"),
    ]
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"

    assert [(a.status_code, a.json()["version"]) for a in spend_answers] == [
        (201, 1),
        (200, 1),
        (201, 2),
    ]
    assert [v["amount"] for v in spend_history.json()["versions"]] == [0.0, 12000.0]

    assert all(r.status_code == 201 for r in raced), [r.text for r in raced]
    assert sorted(r.json()["version"] for r in raced) == list(range(1, 9))
    assert [v["version"] for v in race_history.json()["versions"]] == list(range(1, 9))


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
async def test_deal_events_forecast_and_the_latest_as_of_stands(
    stack: Stack, sessions: SessionFactory
) -> None:
    run = secrets.token_hex(3)
    writer = await token(sessions, f"writer-{run}", "inputs:write")
    reader = await token(sessions, f"reader-{run}", "metrics:read")
    forecast = {
        "deal_id": f"{run}-big",
        "expected_close_date": "2031-09-30",
        "amount": 48000,
        "currency": "EUR",
        "rep": "alice",
    }
    await ingest_directly(
        sessions,
        run,
        [
            touch(run, 0, "L1", "proposal_sent", utc(2024, 7, 1), properties=forecast),
            # A malformed forecast: not recorded, the event itself is stored as usual.
            touch(
                run,
                1,
                "L2",
                "proposal_sent",
                utc(2024, 7, 1),
                properties={**forecast, "deal_id": f"{run}-bad", "expected_close_date": "soon"},
            ),
        ],
    )
    path = f"/v1/forecasts/{run}-big"
    async with httpx.AsyncClient(base_url=stack.api.url, timeout=30) as http:
        from_event = await http.get(path, headers=reader)
        same = await http.put(
            path,
            json={
                "expected_close_date": "2031-09-30",
                "amount": 48000,
                "currency": "EUR",
                "rep": "alice",
            },
            headers=writer,
        )
        moved = await http.put(
            path,
            json={"expected_close_date": "2031-10-31", "amount": 50000, "currency": "EUR"},
            headers=writer,
        )
        # A late event (made in 2024, arriving now) about an older forecast: recorded,
        # but the API's newer one (as of now) stands.
        await ingest_directly(
            sessions,
            f"{run}-late",
            [
                touch(
                    f"{run}-late",
                    0,
                    "L1",
                    "proposal_sent",
                    utc(2024, 7, 2),
                    properties={**forecast, "amount": 47000},
                )
            ],
        )
        history = await http.get(f"{path}/history", headers=reader)
        standing = await http.get(path, headers=reader)
        bad = await http.get(f"/v1/forecasts/{run}-bad", headers=reader)
        future = await http.put(
            path,
            json={
                "expected_close_date": "2031-10-31",
                "amount": 1,
                "currency": "EUR",
                "as_of": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            },
            headers=writer,
        )

    assert from_event.status_code == 200, from_event.text
    event_version = from_event.json()
    assert event_version["source"] == "event"
    assert (event_version["version"], event_version["amount"], event_version["rep"]) == (
        1,
        48000.0,
        "alice",
    )
    assert (event_version["event_source"], event_version["event_id"]) == (
        f"sales-{run}",
        f"{run}-0",
    )
    assert event_version["as_of"] == "2024-07-01T00:00:00Z"
    assert event_version["written_by_token_id"] is None
    assert (same.status_code, same.json()["version"]) == (200, 1)  # already what stands
    assert (moved.status_code, moved.json()["version"], moved.json()["source"]) == (201, 2, "api")
    assert moved.json()["written_by"] == f"writer-{run}"
    versions = history.json()["versions"]
    assert [(v["version"], v["source"], v["amount"]) for v in versions] == [
        (1, "event", 48000.0),
        (2, "api", 50000.0),
        (3, "event", 47000.0),
    ]
    assert history.json()["current_version"] == 2
    assert standing.json()["version"] == 2
    assert bad.status_code == 404
    assert future.status_code == 422
    assert future.json()["error"]["details"][0]["field"] == "as_of"


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
async def test_tokens_scopes_and_bad_input_are_refused_in_the_envelope(
    stack: Stack, sessions: SessionFactory
) -> None:
    run = secrets.token_hex(3)
    writer = await token(sessions, f"writer-{run}", "inputs:write")
    reader = await token(sessions, f"reader-{run}", "metrics:read")
    good = {"amount": 1, "currency": "EUR"}
    metrics = "/v1/metrics/sales"
    span = {"from": "2031-01-01", "to": "2031-04-01"}
    async with httpx.AsyncClient(base_url=stack.api.url, timeout=30) as http:
        anonymous = await http.put("/v1/quotas/rep/a/2026-Q1", json=good)
        wrong_token = await http.get(
            metrics, params=span, headers={"Authorization": "Bearer lst_x"}
        )
        read_only_writes = await http.put("/v1/spend/2026-01/email", json=good, headers=reader)
        writer_reads = await http.get(metrics, params=span, headers=writer)
        leads_reads = await http.get(metrics, params=span, headers=stack.read_headers)
        bad_writes = {
            "period": await http.put("/v1/quotas/rep/a/2026-Q5", json=good, headers=writer),
            "year": await http.put("/v1/spend/1969-12/email", json=good, headers=writer),
            "amount": await http.put(
                "/v1/quotas/rep/a/2026-Q1", json={**good, "amount": -1}, headers=writer
            ),
            "currency": await http.put(
                "/v1/quotas/rep/a/2026-Q1", json={**good, "currency": "eur"}, headers=writer
            ),
            "extra": await http.put(
                "/v1/quotas/rep/a/2026-Q1", json={**good, "note": "x"}, headers=writer
            ),
            "owner_kind": await http.put("/v1/quotas/boss/a/2026-Q1", json=good, headers=writer),
            "channel": await http.put("/v1/spend/2026-01/tv", json=good, headers=writer),
            "scale": await http.put(
                "/v1/spend/2026-01/email", json={**good, "amount": 0.00001}, headers=writer
            ),
        }
        not_json = await http.put(
            "/v1/spend/2026-01/email",
            content=b"{",
            headers={**writer, "Content-Type": "application/json"},
        )
        bad_reads = {
            "to": await http.get(
                metrics, params={"from": "2031-04-01", "to": "2031-01-01"}, headers=reader
            ),
            "range": await http.get(
                metrics, params={"from": "2031-01-01", "to": "2034-02-01"}, headers=reader
            ),
            "owner": await http.get(metrics, params={**span, "owner": "boss:x"}, headers=reader),
            "score_bin_width": await http.get(
                metrics, params={**span, "score_bin_width": "nan"}, headers=reader
            ),
            "currency": await http.get(metrics, params={**span, "currency": "eur"}, headers=reader),
            "breakdown": await http.get(
                metrics, params={**span, "breakdown": "planet"}, headers=reader
            ),
            "channel": await http.get(metrics, params={**span, "channel": "tv"}, headers=reader),
            "from": await http.get(
                metrics, params={"from": "1969-12-01", "to": "1970-02-01"}, headers=reader
            ),
        }
        unknown_funnel = await http.get(metrics, params={**span, "funnel": "nope"}, headers=reader)
        this_month = datetime.now(UTC).date().replace(day=1)
        running = await http.get(
            metrics,
            params={
                "from": this_month.isoformat(),
                "to": (this_month + timedelta(days=1)).isoformat(),
            },
            headers=reader,
        )

    for response in (anonymous, wrong_token):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    for response in (read_only_writes, writer_reads, leads_reads):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    assert "inputs:write" in read_only_writes.json()["error"]["message"]
    assert "metrics:read" in writer_reads.json()["error"]["message"]
    for field, response in {**bad_writes, **bad_reads}.items():
        assert response.status_code == 422, (field, response.text)
        named = [d["field"] for d in response.json()["error"]["details"]]
        expected = {"year": "period", "extra": "note", "scale": "amount", "range": "to"}.get(
            field, field
        )
        assert expected in named, (field, response.text)
    assert "between 1970 and 2999" in bad_writes["year"].text
    assert bad_reads["range"].json()["error"]["code"] == "limit_exceeded"
    assert not_json.status_code == 400
    assert unknown_funnel.status_code == 404
    assert running.status_code == 200
    period = running.json()["periods"][0]
    assert period["figures"]["deal_slippage_rate_percent"]["reason"] == (
        f"{period['period']} has not ended: slippage is known at its end"
    )


# --- property: no input combination gives a 500 or a NaN -----------------------------
# Examples write into 2005-2008: after the worked dataset (churn reads every earlier
# customer), in years no other test reads, and in the past, so forecasts can be
# backfilled and slippage computed. Examples share those years; the property does not
# need them apart.

amounts = st.one_of(
    st.just(0),
    st.integers(min_value=0, max_value=10**15 - 1),  # the API's largest amount
    st.decimals(min_value=0, max_value=10**12, places=4, allow_nan=False, allow_infinity=False),
)
event_amounts = st.one_of(
    st.none(),
    amounts.map(float),
    st.sampled_from([-5, "lots", True, 1e300, 10**30, [1], {"v": 1}]),
)
DAYS = st.integers(min_value=0, max_value=729)  # a day of the example's two years
sales_events = st.lists(
    st.tuples(
        st.sampled_from(["deal_won", "deal_lost", "purchase", "renewal", "upsell", "churned"]),
        DAYS,
        event_amounts,
        st.sampled_from([None, "EUR", "USD"]),
        st.sampled_from(["a", "b", "c"]),  # deal
        st.sampled_from(["x", "y", "z"]),  # lead
    ),
    max_size=12,
)
forecasts = st.lists(
    st.tuples(DAYS, DAYS, amounts, st.sampled_from(["a", "b", "c"])),  # made, closes
    max_size=5,
)
spend_plans = st.lists(
    st.tuples(
        st.sampled_from(["email", "paid_search"]),
        st.integers(min_value=0, max_value=7),  # quarter of the two years
        st.sampled_from(["quarter", "months", "two months"]),  # how it is stated
        amounts,
        st.sampled_from(["EUR", "EUR", "EUR", "USD"]),
    ),
    max_size=10,
)
requests = st.fixed_dictionaries(
    {
        "period": st.sampled_from(["month", "quarter", "quarter"]),
        "breakdown": st.sampled_from([None, "channel", "industry", "source"]),
        "currency": st.sampled_from([None, None, "EUR", "USD"]),
        "owner": st.sampled_from([None, "team:t", "team:t", "team:t", "rep:r"]),
        "channel": st.sampled_from([None, None, "email"]),
    }
)


def no_nan(constant: str) -> None:
    raise AssertionError(f"non-finite number in the response: {constant}")


def spend_labels(year: int, quarter: int, stated: str) -> list[str]:
    year, index = year + quarter // 4, quarter % 4 + 1
    if stated == "quarter":
        return [f"{year}-Q{index}"]
    months = [f"{year}-{3 * index - 2 + i:02d}" for i in range(3)]
    return months if stated == "months" else months[:2]


class Example:
    count = 0


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
def test_no_input_combination_gives_a_500_or_a_nan(stack: Stack, environment: Environment) -> None:
    async def run_example(
        events: list[Any],
        predicted: list[Any],
        spend: list[Any],
        quotas: list[Any],
        query: dict[str, Any],
    ) -> dict[str, Any]:
        Example.count += 1
        year, run = 2005 + Example.count % 3, secrets.token_hex(3)
        start = utc(year, 1, 1)
        database = create_engine(environment.settings(), application_name="sales-fuzz")
        sessions = create_session_factory(database)
        try:
            writer = await token(sessions, f"fuzz-w-{run}", "inputs:write")
            reader = await token(sessions, f"fuzz-r-{run}", "metrics:read")
            records = [
                touch(
                    run,
                    n,
                    lead,
                    kind,
                    start + timedelta(days=day),
                    channel="email",
                    properties={
                        "deal_id": f"{run}-{name}",
                        **({} if amount is None else {"amount": amount}),
                        **({} if currency is None else {"currency": currency}),
                    },
                )
                for n, (kind, day, amount, currency, name, lead) in enumerate(events)
            ]
            if records:
                await ingest_directly(sessions, run, records)
            async with httpx.AsyncClient(base_url=stack.api.url, timeout=60) as http:

                async def put(path: str, body: dict[str, Any]) -> None:
                    response = await http.put(path, json=body, headers=writer)
                    assert response.status_code in (200, 201), response.text

                for made, close, amount, name in predicted:
                    await put(
                        f"/v1/forecasts/{run}-{name}",
                        {
                            "expected_close_date": (start + timedelta(days=close))
                            .date()
                            .isoformat(),
                            "amount": str(amount),
                            "currency": "EUR",
                            "team": "t",
                            "as_of": (start + timedelta(days=made)).isoformat(),
                        },
                    )
                for channel, quarter, stated, amount, currency in spend:
                    for label in spend_labels(year, quarter, stated):
                        await put(
                            f"/v1/spend/{label}/{channel}",
                            {"amount": str(amount), "currency": currency},
                        )
                for quarter, amount in enumerate(quotas):
                    await put(
                        f"/v1/quotas/team/t/{spend_labels(year, quarter, 'quarter')[0]}",
                        {"amount": str(amount), "currency": "EUR"},
                    )
                params = {
                    "from": f"{year}-01-01",
                    "to": f"{year + 2}-01-01",
                    **{k: v for k, v in query.items() if v is not None},
                }
                response = await http.get("/v1/metrics/sales", params=params, headers=reader)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = json.loads(response.text, parse_constant=no_nan)
            return body
        finally:
            await database.dispose()

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        events=sales_events,
        predicted=forecasts,
        spend=spend_plans,
        quotas=st.lists(amounts, min_size=8, max_size=8),  # one per quarter; zero too
        query=requests,
    )
    def check(
        events: list[Any],
        predicted: list[Any],
        spend: list[Any],
        quotas: list[Any],
        query: dict[str, Any],
    ) -> None:
        body = asyncio.run(run_example(events, predicted, spend, quotas, query))
        blocks = [p["figures"] for p in body["periods"]]
        blocks += [s["figures"] for p in body["periods"] for s in p["segments"]]
        for block in blocks:
            for name, figure in block.items():
                if name == "lead_scores":
                    continue
                # A number, or null with a reason; never both, never neither.
                assert (figure["value"] is None) == (figure["reason"] is not None), (name, figure)
                if figure["value"] is not None:
                    event(f"{name} computed")
            if block["win_rate"]["value"] is not None:
                assert 0 <= block["win_rate"]["value"] <= 1
            for name in ("churn_rate_percent", "deal_slippage_rate_percent"):
                if block[name]["value"] is not None:
                    assert 0 <= block[name]["value"] <= 100

    check()
