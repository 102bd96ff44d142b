"""The funnel analytics reports on a small worked dataset, every figure computed by hand.

The events go through the real engine's ``apply_batch`` into the real PostgreSQL;
accounts are written as ingest writes them (``accounts``, ``lead_accounts``). The
reports are read from a real metrics API process. Times are 10:00 UTC unless noted;
2012 is a leap year (February has 29 days). No other test writes in 2012.

b2b-six-stage (positions: Awareness 0, Interest 1, Action 2, Engagement 3,
Opportunity 4, Customer 5). Accounts: acme (software, 300 staff -> 200-999, DE,
tier 1), beta (retail, 40 -> 1-49, US, tier 3), gamma (software, 6000 -> 5000+, FR,
tier 2).

====  =======  ==============================================================
lead  account  touches (type channel [utm source/campaign]) -> stage
====  =======  ==============================================================
L1    acme     Jan02 ad_click paid_search [google/q1-search] -> Awareness
               Jan04 content_download email -> Interest
               Jan06 demo_requested direct -> Action
               Jan10 webinar_attended events -> Engagement
               Jan20 meeting_scheduled outbound -> Opportunity
               Feb05 deal_won outbound, amount 10000 -> Customer
L2    acme     Jan03 page_view organic_search [bing/brand] -> Awareness
               Jan15 demo_requested paid_search -> Action (skipped Interest)
               Jan25 call outbound -> Engagement
               Feb10 deal_lost outbound -> Lost
L3    beta     Jan05 ad_click paid_social [linkedin/q1-social] -> Awareness
               Jan07 email_opened email (no move)
               Jan09 newsletter_signup email -> Interest
L4    beta     Feb03 page_view organic_search -> Awareness
               Feb04 12:00 meeting_scheduled outbound -> Opportunity (skipped)
               Feb24 deal_won (no channel), amount 5000 -> Customer
L5    gamma    Jan20 page_view paid_search [google/q1-search] -> Awareness
               Jan21 trial_started direct -> Engagement (skipped)
               Feb01 call outbound, outcome disqualified -> Disqualified
L6    -        Feb08 ad_click paid_social [linkedin/q1-social] -> Awareness
               Feb09 demo_requested paid_social -> Action (skipped)
               Feb11 webinar_attended events -> Engagement
               Mar01 meeting_held outbound -> Opportunity
L7    -        Feb15 page_view (no channel) -> Awareness
L8    -        Mar05 page_view direct -> Awareness
L9    -        Mar10 demo_requested referral -> Action (entered there)
====  =======  ==============================================================

decision-journey (Consider 0, Evaluate 1, Buy 2, Enjoy 3, Advocate 4, Bond 5), June:
D1: Jun01 page_view -> Consider; Jun03 demo_requested -> Evaluate; Jun05 call
(outcome not_a_fit) -> Consider (regressed); Jun08 content_download -> Evaluate;
Jun12 deal_won -> Buy; Jun15 custom:onboarding_completed -> Enjoy; Jun20 renewal
-> Buy (looped). D2: Jun02 page_view -> Consider; Jun04 deal_won -> Buy (skipped);
Jun06 churned -> Churned (exited).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from leadstage.db.models import Account, LeadAccount
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.transport.base import Record
from leadstage_engine.processing import apply_batch
from tests.e2e.conftest import ANALYTICS_FUNNELS, MetricsApi

# Copies of the presets under names of their own (see tests/e2e/conftest.py): the
# reports count every lead of a funnel, so other tests' leads must not be in these.
B2B, DJ = ANALYTICS_FUNNELS["analytics-b2b"], ANALYTICS_FUNNELS["analytics-dj"]
DAY = 86_400.0
HOUR = 3_600.0


def at(month: int, day: int, hour: int = 10) -> datetime:
    return datetime(2012, month, day, hour, tzinfo=UTC)


Q1_SEARCH = {"source": "google", "name": "q1-search"}
Q1_SOCIAL = {"source": "linkedin", "name": "q1-social"}
# (lead, time, type, channel, utm, properties)
B2B_EVENTS: list[tuple[str, datetime, str, str | None, dict[str, str] | None, dict[str, Any]]] = [
    ("L1", at(1, 2), "ad_click", "paid_search", Q1_SEARCH, {}),
    ("L1", at(1, 4), "content_download", "email", None, {}),
    ("L1", at(1, 6), "demo_requested", "direct", None, {}),
    ("L1", at(1, 10), "webinar_attended", "events", None, {}),
    ("L1", at(1, 20), "meeting_scheduled", "outbound", None, {}),
    ("L1", at(2, 5), "deal_won", "outbound", None, {"amount": 10000}),
    ("L2", at(1, 3), "page_view", "organic_search", {"source": "bing", "name": "brand"}, {}),
    ("L2", at(1, 15), "demo_requested", "paid_search", None, {}),
    ("L2", at(1, 25), "call", "outbound", None, {}),
    ("L2", at(2, 10), "deal_lost", "outbound", None, {}),
    ("L3", at(1, 5), "ad_click", "paid_social", Q1_SOCIAL, {}),
    ("L3", at(1, 7), "email_opened", "email", None, {}),
    ("L3", at(1, 9), "newsletter_signup", "email", None, {}),
    ("L4", at(2, 3), "page_view", "organic_search", None, {}),
    ("L4", at(2, 4, 12), "meeting_scheduled", "outbound", None, {}),
    ("L4", at(2, 24), "deal_won", None, None, {"amount": 5000}),
    ("L5", at(1, 20), "page_view", "paid_search", Q1_SEARCH, {}),
    ("L5", at(1, 21), "trial_started", "direct", None, {}),
    ("L5", at(2, 1), "call", "outbound", None, {"outcome": "disqualified"}),
    ("L6", at(2, 8), "ad_click", "paid_social", Q1_SOCIAL, {}),
    ("L6", at(2, 9), "demo_requested", "paid_social", None, {}),
    ("L6", at(2, 11), "webinar_attended", "events", None, {}),
    ("L6", at(3, 1), "meeting_held", "outbound", None, {}),
    ("L7", at(2, 15), "page_view", None, None, {}),
    ("L8", at(3, 5), "page_view", "direct", None, {}),
    ("L9", at(3, 10), "demo_requested", "referral", None, {}),
]
DJ_EVENTS: list[tuple[str, datetime, str, str | None, dict[str, str] | None, dict[str, Any]]] = [
    ("D1", at(6, 1), "page_view", None, None, {}),
    ("D1", at(6, 3), "demo_requested", None, None, {}),
    ("D1", at(6, 5), "call", None, None, {"outcome": "not_a_fit"}),
    ("D1", at(6, 8), "content_download", None, None, {}),
    ("D1", at(6, 12), "deal_won", None, None, {}),
    ("D1", at(6, 15), "custom:onboarding_completed", None, None, {}),
    ("D1", at(6, 20), "renewal", None, None, {}),
    ("D2", at(6, 2), "page_view", None, None, {}),
    ("D2", at(6, 4), "deal_won", None, None, {}),
    ("D2", at(6, 6), "churned", None, None, {}),
]
ACCOUNTS = {
    "acme": ("software", 300, "DE", 1, ["L1", "L2"]),
    "beta": ("retail", 40, "US", 3, ["L3", "L4"]),
    "gamma": ("software", 6000, "FR", 2, ["L5"]),
}


@dataclass
class Worked:
    run: str
    api: MetricsApi

    def lead(self, name: str) -> str:
        return f"{self.run}-{name}"

    async def get(self, path: str, **params: Any) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30, headers=self.api.headers) as http:
            return await http.get(f"{self.api.url}/v1/funnels/{path}", params=params)

    async def ok(self, path: str, **params: Any) -> Any:
        response = await self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.json()


def records(run: str, topic: str, events: list[Any]) -> list[Record]:
    return [
        Record(
            topic,
            0,
            offset,
            None,
            Touchpoint.accept(
                TouchpointIn.model_validate(
                    {
                        "event_id": f"{run}-{topic}-{offset}",
                        "type": kind,
                        "lead_id": f"{run}-{lead}",
                        "occurred_at": when,
                        "channel": channel,
                        "utm": utm,
                        "properties": properties,
                    }
                ),
                source=f"analytics-{run}",
                received_at=when,
            ).to_record(),
        )
        for offset, (lead, when, kind, channel, utm, properties) in enumerate(
            sorted(events, key=lambda e: e[1])
        )
    ]


@pytest.fixture(scope="module")
async def worked(analytics_api: MetricsApi, sessions: SessionFactory) -> Worked:
    run = secrets.token_hex(3)
    async with unit_of_work(sessions) as session:
        for topic, events, funnel in (
            ("analytics-b2b", B2B_EVENTS, B2B),
            ("analytics-dj", DJ_EVENTS, DJ),
        ):
            await apply_batch(
                session,
                records(run, topic, events),
                consumer_group=f"analytics-{run}",
                funnels=[funnel],
                outbox_topic="tests.unpublished.v1",
            )
        for name, (industry, staff, country, tier, contacts) in ACCOUNTS.items():
            await session.execute(
                insert(Account).values(
                    id=f"{run}-{name}",
                    name=name,
                    industry=industry,
                    employee_count=staff,
                    country=country,
                    tier=tier,
                )
            )
            for contact in contacts:
                await session.execute(
                    insert(LeadAccount).values(
                        lead_id=f"{run}-{contact}",
                        account_id=f"{run}-{name}",
                        attached_by="explicit",
                    )
                )
    return Worked(run, analytics_api)


def reached(cohort: dict[str, Any]) -> list[int]:
    return [stage["reached"] for stage in cohort["stages"]]


def by_value(segments: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {segment["value"]: segment for segment in segments}


# -- cohorts ----------------------------------------------------------------------------

JAN_FEB = {"from": "2012-01-01T00:00:00Z", "to": "2012-03-01T00:00:00Z"}


async def test_cohorts_follow_each_entrant_for_the_window(worked: Worked) -> None:
    body = await worked.ok("analytics-b2b/cohorts", **JAN_FEB, period="month", follow_days=30)
    january, february = body["cohorts"]
    assert january["period_start"] == "2012-01-01T00:00:00Z"
    assert january["followed_until"] == "2012-03-02T00:00:00Z"  # Feb 1 + 30 days
    assert january["complete"] is True
    # January entrants L1 (Jan02), L2 (Jan03), L3 (Jan05), L5 (Jan20), each followed 30
    # days: L1 reached 0-4 (Customer on Feb05 is after Feb01), L2 0-3, L3 0-1, L5 0-3.
    assert january["entered"] == 4
    assert reached(january) == [4, 4, 3, 3, 1, 0]
    # February entrants L4 (Feb03: Customer Feb24 within Mar04), L6 (Feb08: Opportunity
    # Mar01 within Mar09), L7 (Feb15: Awareness only).
    assert reached(february) == [3, 2, 2, 2, 2, 1]
    assert january["stages"][4]["cumulative_conversion"] == {"value": 0.25, "reason": None}
    assert february["stages"][5]["cumulative_conversion"]["value"] == round(1 / 3, 6)
    assert february["stages"][1]["step_conversion"]["value"] == round(2 / 3, 6)
    customer = body["trends"][5]
    assert [p["value"] for p in customer["points"]] == [0.0, round(1 / 3, 6)]
    assert customer["change"]["value"] == round(1 / 3, 6)  # 0 -> 1/3

    # 60 days: L1's Customer (Feb05) is within Jan02 + 60 days now.
    longer = await worked.ok("analytics-b2b/cohorts", **JAN_FEB, period="month", follow_days=60)
    assert reached(longer["cohorts"][0]) == [4, 4, 3, 3, 1, 1]


async def test_cohorts_breakdown_filter_and_account_unit(worked: Worked) -> None:
    body = await worked.ok(
        "analytics-b2b/cohorts", **JAN_FEB, period="month", follow_days=30, breakdown="industry"
    )
    segments = by_value(body["segments"])
    # January by industry: software = L1, L2 (acme) and L5 (gamma); retail = L3 (beta).
    assert reached(segments["software"]["cohorts"][0]) == [3, 3, 3, 3, 1, 0]
    assert reached(segments["retail"]["cohorts"][0]) == [1, 1, 0, 0, 0, 0]
    # February: retail = L4; no account (null) = L6, L7.
    assert reached(segments["retail"]["cohorts"][1]) == [1, 1, 1, 1, 1, 1]
    assert reached(segments[None]["cohorts"][1]) == [2, 1, 1, 1, 1, 0]
    for month in (0, 1):  # the segments add up to the whole
        assert [
            sum(reached(s["cohorts"][month])[k] for s in body["segments"]) for k in range(6)
        ] == reached(body["cohorts"][month])

    # First-touch channel paid_search: L1 (ad_click) and L5 (page_view) in January.
    paid = await worked.ok(
        "analytics-b2b/cohorts", **JAN_FEB, period="month", follow_days=30, channel="paid_search"
    )
    assert reached(paid["cohorts"][0]) == [2, 2, 2, 2, 1, 0]
    assert paid["cohorts"][1]["entered"] == 0
    assert paid["cohorts"][1]["stages"][0]["cumulative_conversion"] == {
        "value": None,
        "reason": "no units entered in this period",
    }
    assert paid["filters"] == {"channel": ["paid_search"]}

    # Accounts: acme enters Jan02 (L1) and reaches 0-4 within 30 days; beta enters Jan05
    # (L3), reaches 0-1 by Feb04 10:00 (L4's meeting at 12:00 is two hours late); gamma
    # enters Jan20 (L5), 0-3. Nobody enters in February: beta entered in January.
    accounts = await worked.ok(
        "analytics-b2b/cohorts", **JAN_FEB, period="month", follow_days=30, unit="account"
    )
    assert reached(accounts["cohorts"][0]) == [3, 3, 2, 2, 1, 0]
    assert accounts["cohorts"][1]["entered"] == 0
    assert accounts["unit"] == "account"


# -- the summary, with filters, breakdown and the account unit ---------------------------

Q1 = {"from": "2012-01-01T00:00:00Z", "to": "2012-04-01T00:00:00Z"}


def reached_per_stage(figures: dict[str, Any]) -> list[int]:
    return [stage["reached"] for stage in figures["stages"]]


async def test_summary_breakdown_filters_and_accounts(worked: Worked) -> None:
    # Furthest stages: L1 5, L2 3, L3 1, L4 5, L5 3, L6 4, L7 0, L8 0, L9 2.
    whole = await worked.ok("analytics-b2b/summary", **Q1)
    assert whole["leads"] == 9
    assert reached_per_stage(whole) == [9, 7, 6, 5, 3, 2]

    body = await worked.ok("analytics-b2b/summary", **Q1, breakdown="tier")
    tiers = by_value(body["segments"])
    # tier 1 = acme (L1: 5, L2: 3); tier 3 = beta (L3: 1, L4: 5); tier 2 = gamma (L5: 3,
    # now Disqualified); no account = L6 (4), L7 (0), L8 (0), L9 (2).
    assert reached_per_stage(tiers["1"]) == [2, 2, 2, 2, 1, 1]
    assert reached_per_stage(tiers["3"]) == [2, 2, 1, 1, 1, 1]
    assert reached_per_stage(tiers["2"]) == [1, 1, 1, 1, 0, 0]
    assert tiers["2"]["exits"]["Disqualified"] == 1
    assert reached_per_stage(tiers[None]) == [4, 2, 2, 1, 1, 0]
    assert [sum(s["leads"] for s in body["segments"])] == [body["leads"]] == [9]
    assert list(tiers) == ["1", "2", "3", None]  # value order, unknown last

    # Filters AND across dimensions, OR within one: software in DE is acme only.
    acme = await worked.ok("analytics-b2b/summary", **Q1, industry="software", country="de")
    assert reached_per_stage(acme) == [2, 2, 2, 2, 1, 1]
    both = await worked.ok("analytics-b2b/summary", **{**Q1, "size_band": ["1-49", "5000+"]})
    assert reached_per_stage(both) == [3, 3, 2, 2, 1, 1]  # beta (L3, L4) and gamma (L5)

    # Accounts: acme reached Customer (L1) and is a customer now; beta too (L4); gamma
    # reached Engagement (L5) and, its only contact disqualified, is Disqualified.
    accounts = await worked.ok("analytics-b2b/summary", **Q1, unit="account")
    assert accounts["leads"] == 3
    assert reached_per_stage(accounts) == [3, 3, 3, 3, 2, 2]
    assert accounts["stages"][5]["current"] == 2
    assert accounts["exits"] == {"Churned": 0, "Disqualified": 1, "Lost": 0}


# -- time in stage and time to convert ---------------------------------------------------


def stats(figures: dict[str, Any]) -> tuple[int, float | None, float | None, float | None]:
    return (
        figures["count"],
        figures["median_seconds"]["value"],
        figures["p75_seconds"]["value"],
        figures["p90_seconds"]["value"],
    )


def buckets(figures: dict[str, Any]) -> dict[str, int]:
    return {b["label"]: b["count"] for b in figures["histogram"] if b["count"]}


async def test_time_in_stage_measures_completed_stays(worked: Worked) -> None:
    body = await worked.ok("analytics-b2b/time-in-stage", **Q1)
    stages = {s["stage"]: s for s in body["stages"]}
    # Awareness stays: L1 2d, L2 12d, L3 4d, L4 26h, L5 1d, L6 1d; sorted 1d, 1d, 26h, 2d,
    # 4d, 12d. percentile_cont interpolates at (n-1)p: median at 2.5 = (26h + 48h) / 2
    # = 37h; p75 at 3.75 = 2d + 0.75 * 2d = 3.5d; p90 at 4.5 = 4d + 0.5 * 8d = 8d.
    assert stats(stages["Awareness"]) == (6, 37 * HOUR, 3.5 * DAY, 8 * DAY)
    assert buckets(stages["Awareness"]) == {"1d-3d": 4, "3d-7d": 1, "7d-14d": 1}
    assert stages["Awareness"]["open"] == 2  # L7 and L8 are still there
    # Engagement: L1 10d, L5 11d, L2 16d, L6 19d (Feb11 -> Mar01 in a leap year): median
    # 13.5d; p75 at 2.25 = 16d + 0.25 * 3d = 16.75d; p90 at 2.7 = 16d + 0.7 * 3d = 18.1d.
    assert stats(stages["Engagement"]) == (4, 13.5 * DAY, 16.75 * DAY, 1_563_840.0)  # 18.1d
    assert buckets(stages["Engagement"]) == {"7d-14d": 2, "14d-30d": 2}
    # Opportunity: L1 16d = 384h, L4 Feb04 12:00 -> Feb24 10:00 = 478h; median 431h.
    assert stats(stages["Opportunity"])[:2] == (2, 431 * HOUR)
    assert stages["Opportunity"]["open"] == 1  # L6
    assert stats(stages["Customer"]) == (0, None, None, None)
    assert stages["Customer"]["median_seconds"]["reason"] == (
        "no completed stays in this stage in the range"
    )
    assert stages["Customer"]["open"] == 2
    assert "completed stays" in body["measures"]

    # Software (L1, L2, L5): Awareness 2d, 12d, 1d -> median 2d.
    software = await worked.ok("analytics-b2b/time-in-stage", **Q1, industry="software")
    assert stats(software["stages"][0])[:2] == (3, 2 * DAY)
    # By first-touch channel, Engagement: paid_search L1 10d and L5 11d -> 10.5d;
    # organic_search L2 16d; paid_social L6 19d.
    by_channel = await worked.ok("analytics-b2b/time-in-stage", **Q1, breakdown="channel")
    engagement = {
        s["value"]: stats(s["stages"][3])[:2]
        for s in by_channel["segments"]
        if s["stages"][3]["count"]
    }
    assert engagement == {
        "paid_search": (2, 10.5 * DAY),
        "organic_search": (1, 16 * DAY),
        "paid_social": (1, 19 * DAY),
    }

    # A regression makes a second stay: Consider D1 2d and 3d, D2 2d -> median 2d, p75 at
    # 1.5 = 2.5d, p90 at 1.8 = 2.8d. Buy: D1 3d, D2 2d; D1's looped-back visit is open.
    journey = await worked.ok(
        "analytics-dj/time-in-stage",
        **{"from": "2012-06-01T00:00:00Z", "to": "2012-07-01T00:00:00Z"},
    )
    consider, _, buy = journey["stages"][:3]
    assert stats(consider) == (3, 2 * DAY, 2.5 * DAY, 241_920.0)  # 2.8d
    assert (buy["count"], buy["open"]) == (2, 1)

    refused = await worked.get("analytics-b2b/time-in-stage", **Q1, unit="account")
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["field"] == "unit"


async def test_time_to_convert_with_trend_breakdown_and_accounts(worked: Worked) -> None:
    body = await worked.ok("analytics-b2b/time-to-convert", **Q1)
    assert (body["from_stage"], body["to_stage"]) == ("Awareness", "Customer")
    # Customers in Q1: L1 Jan02 -> Feb05 = 34d, L4 Feb03 -> Feb24 = 21d: median 27.5d;
    # p75 = 21d + 0.75 * 13d = 30.75d; p90 = 21d + 0.9 * 13d = 32.7d.
    assert stats(body) == (2, 27.5 * DAY, 30.75 * DAY, 2_825_280.0)  # 32.7d
    assert buckets(body) == {"14d-30d": 1, "30d-60d": 1}
    assert [(p["period_start"][:7], p["count"]) for p in body["trend"]] == [
        ("2012-01", 0),
        ("2012-02", 2),
        ("2012-03", 0),
    ]
    assert body["trend"][0]["median_seconds"] == {
        "value": None,
        "reason": "no unit reached Customer in this period",
    }

    # Action -> Opportunity: L1 Jan06 -> Jan20 = 14d (January), L4 skipped both on Feb04
    # = 0 (February), L6 Feb09 -> Mar01 = 21d (March).
    action = await worked.ok(
        "analytics-b2b/time-to-convert", **Q1, from_stage="Action", to_stage="Opportunity"
    )
    assert stats(action)[:2] == (3, 14 * DAY)
    assert [p["median_seconds"]["value"] for p in action["trend"]] == [14 * DAY, 0.0, 21 * DAY]

    by_tier = await worked.ok("analytics-b2b/time-to-convert", **Q1, breakdown="tier")
    assert {s["value"]: stats(s)[:2] for s in by_tier["segments"]} == {
        "1": (1, 34 * DAY),
        "3": (1, 21 * DAY),
    }
    # Accounts: acme Jan02 (L1) -> Feb05 (L1) = 34d; beta Jan05 (L3) -> Feb24 (L4) = 50d.
    accounts = await worked.ok("analytics-b2b/time-to-convert", **Q1, unit="account")
    assert stats(accounts)[:2] == (2, 42 * DAY)

    empty = await worked.ok(
        "analytics-b2b/time-to-convert",
        **{"from": "2013-01-01T00:00:00Z", "to": "2013-02-01T00:00:00Z"},
    )
    assert stats(empty) == (0, None, None, None)
    assert empty["median_seconds"]["reason"] == "no unit reached Customer in the range"

    backwards = await worked.get(
        "analytics-b2b/time-to-convert", **Q1, from_stage="Customer", to_stage="Action"
    )
    assert backwards.status_code == 422
    assert backwards.json()["error"]["details"][0]["field"] == "to_stage"
    unknown = await worked.get("analytics-b2b/time-to-convert", **Q1, from_stage="Nirvana")
    assert unknown.status_code == 404
    assert "Nirvana" in unknown.json()["error"]["message"]
    assert unknown.json()["error"]["details"][0]["field"] == "from_stage"


# -- transitions -------------------------------------------------------------------------

FEBRUARY = {"from": "2012-02-01T00:00:00Z", "to": "2012-03-01T00:00:00Z"}
JUNE = {"from": "2012-06-01T00:00:00Z", "to": "2012-07-01T00:00:00Z"}


async def test_who_left_engagement_last_month_and_to_where(worked: Worked) -> None:
    body = await worked.ok("analytics-b2b/transitions", **FEBRUARY, stage="Engagement")
    (engagement,) = body["states"]
    # February: L5 exited Engagement to Disqualified (Feb01), L2 to Lost (Feb10); L6
    # advanced into it (Feb11). L6 leaves only on Mar01, outside the range.
    assert engagement["destinations"] == {"Disqualified": 1, "Lost": 1}
    assert (engagement["entries"], engagement["departures"], engagement["leads_left"]) == (1, 2, 2)
    (february,) = engagement["periods"]
    assert february["exits"] == 2
    assert february["arrivals_by_kind"] == {"advanced": 1}
    assert february["departures_by_kind"] == {"exited": 2}

    # By industry: both who left are software (L2 acme, L5 gamma); L6 has no account.
    split = await worked.ok(
        "analytics-b2b/transitions", **FEBRUARY, stage="Engagement", breakdown="industry"
    )
    assert {
        s["value"]: (s["states"][0]["entries"], s["states"][0]["departures"])
        for s in split["segments"]
    } == {
        "software": (0, 2),
        None: (1, 0),
    }
    us = await worked.ok("analytics-b2b/transitions", **FEBRUARY, stage="Engagement", country="US")
    assert (us["states"][0]["entries"], us["states"][0]["departures"]) == (0, 0)


async def test_transitions_count_regressions_loops_and_exits(worked: Worked) -> None:
    body = await worked.ok("analytics-dj/transitions", **JUNE)
    states = {s["state"]: s for s in body["states"]}
    assert list(states) == [
        "Consider",
        "Evaluate",
        "Buy",
        "Enjoy",
        "Advocate",
        "Bond",
        "Churned",
        "Lost",
    ]
    # Consider: D1 and D2 entered, D1 came back (regressed); D1 advanced twice to
    # Evaluate, D2 skipped to Buy.
    assert states["Consider"]["periods"][0]["arrivals_by_kind"] == {"entered": 2, "regressed": 1}
    assert states["Consider"]["destinations"] == {"Buy": 1, "Evaluate": 2}
    assert states["Consider"]["leads_left"] == 2
    # Evaluate: one regression back to Consider, one advance to Buy.
    assert states["Evaluate"]["periods"][0]["regressions"] == 1
    assert states["Evaluate"]["destinations"] == {"Buy": 1, "Consider": 1}
    # Buy: in by advance (D1), skip (D2) and loop (D1 from Enjoy); out to Enjoy and Churned.
    assert states["Buy"]["periods"][0]["arrivals_by_kind"] == {
        "advanced": 1,
        "looped": 1,
        "skipped": 1,
    }
    assert states["Buy"]["periods"][0]["exits"] == 1
    assert states["Buy"]["destinations"] == {"Churned": 1, "Enjoy": 1}
    assert states["Enjoy"]["periods"][0]["loops"] == 1
    assert (states["Churned"]["kind"], states["Churned"]["entries"]) == ("exit", 1)
    assert states["Bond"]["entries"] == states["Bond"]["departures"] == 0

    daily = await worked.ok("analytics-dj/transitions", **JUNE, period="day", stage="Consider")
    entries = {
        p["period_start"][:10]: p["entries"] for p in daily["states"][0]["periods"] if p["entries"]
    }
    assert entries == {"2012-06-01": 1, "2012-06-02": 1, "2012-06-05": 1}
    assert len(daily["states"][0]["periods"]) == 30


async def test_bad_requests_answer_in_the_error_envelope(worked: Worked) -> None:
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("nope/transitions", {}, 404, "funnel"),
        ("analytics-b2b/transitions", {"stage": "Nowhere"}, 404, "stage"),
        ("analytics-b2b/transitions", {"unit": "account"}, 422, "unit"),
        ("analytics-b2b/transitions", {"period": "year"}, 422, "period"),
        ("analytics-b2b/cohorts", {"breakdown": "zodiac"}, 422, "breakdown"),
        ("analytics-b2b/cohorts", {"unit": "team"}, 422, "unit"),
        ("analytics-b2b/cohorts", {"channel": "carrier_pigeon"}, 422, "channel.0"),
        ("analytics-b2b/cohorts", {"follow_days": 0}, 422, "follow_days"),
        (
            "analytics-b2b/cohorts",
            {"from": "2012-03-01T00:00:00Z", "to": "2012-01-01T00:00:00Z"},
            422,
            "to",
        ),
        (
            "analytics-b2b/cohorts",
            {"from": "2010-01-01T00:00:00Z", "to": "2012-06-01T00:00:00Z"},
            422,
            "to",
        ),
        ("analytics-b2b/cohorts", {"from": "2012-01-01T00:00:00"}, 422, "from"),
        (
            "analytics-b2b/cohorts",
            {"from": "2011-01-01T00:00:00Z", "to": "2012-06-01T00:00:00Z", "period": "day"},
            422,
            "period",
        ),
        (
            "analytics-b2b/summary",
            {"from": "2009-01-01T00:00:00Z", "to": "2012-01-01T00:00:00Z"},
            422,
            "to",
        ),
        ("analytics-b2b/summary", {"breakdown": "zodiac"}, 422, "breakdown"),
    ]
    for path, params, status, field in cases:
        response = await worked.get(path, **params)
        assert response.status_code == status, (path, params, response.text)
        error = response.json()["error"]
        assert error["details"][0]["field"] == field, (path, params, error)


# -- attribution -------------------------------------------------------------------------


def credits(body: dict[str, Any]) -> dict[str | None, float]:
    """Credit per value; values touched but given no credit (listed for their touch
    counts) are left out."""
    return {c["value"]: c["credit"] for c in body["credits"] if c["credit"]}


async def attribute(worked: Worked, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = await worked.ok("analytics-b2b/attribution", **{**Q1, **params})
    # Every conversion hands out exactly 1 in credit.
    assert sum(c["credit"] for c in body["credits"]) == pytest.approx(body["conversions"])
    return body


async def test_attribution_models_on_the_customers(worked: Worked) -> None:
    # Customers in Q1: L1 (touches up to Feb05: paid_search, email, direct, events,
    # outbound, outbound = the deal) and L4 (organic_search, outbound, none = the deal).
    first = await attribute(worked, stage="Customer", model="first_touch")
    assert (first["conversions"], first["unattributed"]) == (2, 0)
    assert credits(first) == {"organic_search": 1.0, "paid_search": 1.0}
    assert credits(await attribute(worked, stage="Customer", model="last_touch")) == {
        "outbound": 1.0,
        None: 1.0,
    }
    linear = await attribute(worked, stage="Customer", model="linear")
    sixth, third = round(1 / 6, 6), round(1 / 3, 6)
    # outbound: 2 of L1's 6 touches and 1 of L4's 3 = 2/6 + 1/3.
    assert credits(linear) == {
        "direct": sixth,
        "email": sixth,
        "events": sixth,
        "organic_search": third,
        "outbound": round(2 / 3, 6),
        "paid_search": sixth,
        None: third,
    }
    outbound = next(c for c in linear["credits"] if c["value"] == "outbound")
    assert outbound["touches"] == 3
    assert outbound["share"]["value"] == round(2 / 3 / 2, 6)
    # Revenue: 10,000 (L1) x 2/6 + 5,000 (L4) x 1/3.
    assert outbound["revenue"] == 5000.0
    assert linear["revenue"] == 15000.0
    # Position based: L1 0.4 first, 0.4 last, 0.2 / 4 each in the middle (its outbound
    # meeting among them); L4 0.4, 0.2, 0.4.
    assert credits(await attribute(worked, stage="Customer", model="position_based")) == {
        "direct": 0.05,
        "email": 0.05,
        "events": 0.05,
        "organic_search": 0.4,
        "outbound": 0.65,  # 0.4 + 0.05 (L1) + 0.2 (L4)
        "paid_search": 0.4,
        None: 0.4,
    }
    # Time decay, half-life 7 days: weight 2^(-age/7) by age in days at the conversion.
    # L1 ages 34, 32, 30, 26, 16, 0; L4 ages 21, 19 + 22/24 (Feb04 12:00 -> Feb24 10:00), 0.
    l1 = [2 ** (-age / 7) for age in (34, 32, 30, 26, 16, 0)]
    l4 = [2 ** (-age / 7) for age in (21, 19 + 22 / 24, 0)]
    expected = {
        "paid_search": l1[0] / sum(l1),
        "email": l1[1] / sum(l1),
        "direct": l1[2] / sum(l1),
        "events": l1[3] / sum(l1),
        "outbound": (l1[4] + l1[5]) / sum(l1) + l4[1] / sum(l4),
        "organic_search": l4[0] / sum(l4),
        None: l4[2] / sum(l4),
    }
    decay = credits(await attribute(worked, stage="Customer", model="time_decay", half_life_days=7))
    assert decay == pytest.approx(expected, abs=1e-6)
    slower = credits(
        await attribute(worked, stage="Customer", model="time_decay", half_life_days=30)
    )
    assert slower["paid_search"] > decay["paid_search"]  # a longer half-life favours old touches


async def test_attribution_single_and_two_touch_conversions(worked: Worked) -> None:
    # Reaching Action in Q1: L1 by its 3rd touch (0.4 / 0.2 / 0.4), L2, L4, L5 and L6 by
    # their 2nd (50/50), L9 by its only touch (100%).
    body = await attribute(worked, stage="Action", model="position_based")
    assert body["conversions"] == 6
    assert credits(body) == {
        "direct": 0.9,  # L1 0.4 + L5 0.5
        "email": 0.2,  # L1's middle touch
        "organic_search": 1.0,  # L2 0.5 + L4 0.5
        "outbound": 0.5,  # L4
        "paid_search": 1.4,  # L1 0.4 + L2 0.5 + L5 0.5
        "paid_social": 1.0,  # L6 0.5 + 0.5
        "referral": 1.0,  # L9 alone
    }
    assert credits(
        await attribute(worked, stage="Customer", model="first_touch", by="campaign")
    ) == {
        "q1-search": 1.0,
        None: 1.0,
    }
    assert credits(await attribute(worked, stage="Customer", model="last_touch", by="type")) == {
        "deal_won": 2.0
    }


async def test_attribution_breakdown_filters_and_accounts(worked: Worked) -> None:
    split = await attribute(worked, stage="Customer", model="last_touch", breakdown="industry")
    assert {s["value"]: (s["conversions"], credits(s)) for s in split["segments"]} == {
        "retail": (1, {None: 1.0}),  # L4 (beta)
        "software": (1, {"outbound": 1.0}),  # L1 (acme)
    }
    tier3 = await attribute(worked, stage="Customer", model="first_touch", tier=3)
    assert (tier3["conversions"], credits(tier3)) == (1, {"organic_search": 1.0})
    # Accounts: acme's first touch is L1's ad click (Jan02), beta's is L3's (Jan05);
    # acme has 9 touches up to Feb05 (L1's 6, L2's 3), beta 6 up to Feb24 (L3's 3, L4's 3).
    accounts = await attribute(worked, stage="Customer", model="first_touch", unit="account")
    assert credits(accounts) == {"paid_search": 1.0, "paid_social": 1.0}
    linear = await attribute(worked, stage="Customer", model="linear", unit="account")
    assert sum(c["touches"] for c in linear["credits"]) == 15
    assert credits(linear)["email"] == round(1 / 9 + 2 / 6, 6)  # L1's download; L3's two

    empty = await worked.ok(
        "analytics-b2b/attribution",
        stage="Customer",
        **{"from": "2013-01-01T00:00:00Z", "to": "2013-02-01T00:00:00Z"},
    )
    assert (empty["conversions"], empty["credits"], empty["revenue"]) == (0, [], 0.0)

    bad: list[tuple[dict[str, Any], int, str]] = [
        ({}, 422, "stage"),
        ({"stage": "Nirvana"}, 404, "stage"),
        ({"stage": "Customer", "model": "w_shaped"}, 422, "model"),
        ({"stage": "Customer", "by": "weather"}, 422, "by"),
        ({"stage": "Customer", "half_life_days": 0}, 422, "half_life_days"),
    ]
    for params, status, field in bad:
        response = await worked.get("analytics-b2b/attribution", **params)
        assert response.status_code == status, response.text
        assert response.json()["error"]["details"][0]["field"] == field
