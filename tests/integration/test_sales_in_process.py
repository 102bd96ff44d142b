"""The sales inputs and every metrics query, in this process against the real PostgreSQL.

The e2e tests reach them through the API process, where a deprecation warning would go
unseen; here pytest turns any warning into a failure. One transaction, rolled back,
so nothing is left for other tests to see.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from leadstage.credentials import Caller
from leadstage.db.models import Account, LeadAccount
from leadstage.db.session import SessionFactory
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import load_presets
from leadstage.transport.base import Record
from leadstage_api import sales_inputs, sales_metrics
from leadstage_api.sales_schemas import ForecastIn, QuotaIn, SpendIn
from leadstage_engine.processing import apply_batch

B2B = load_presets()["b2b-six-stage"]


def record(run: str, n: int, lead: str, kind: str, at: datetime, **fields: Any) -> Record:
    touchpoint = Touchpoint.accept(
        TouchpointIn(
            event_id=f"{run}-{n}", type=kind, lead_id=f"{run}-{lead}", occurred_at=at, **fields
        ),
        source=f"in-process-{run}",
        received_at=at,
    )
    return Record("in-process", 0, n, None, touchpoint.to_record())


async def test_inputs_and_metrics_queries_run_cleanly_in_process(sessions: SessionFactory) -> None:
    run = secrets.token_hex(3)
    caller = Caller(token_id=0, name="in-process", scopes=frozenset())
    now = datetime.now(UTC)
    events = [
        record(
            run,
            0,
            "L1",
            "page_view",
            datetime(1999, 1, 2, tzinfo=UTC),
            channel="email",
            utm={"source": "newsletter"},
            account={"domain": f"l1-{run}.example", "industry": "software"},
        ),
        record(
            run,
            1,
            "L1",
            "deal_won",
            datetime(1999, 2, 1, tzinfo=UTC),
            properties={"deal_id": f"{run}-D1", "amount": 100, "currency": "EUR"},
        ),
        record(
            run,
            2,
            "L2",
            "proposal_sent",
            datetime(1998, 12, 1, tzinfo=UTC),
            properties={
                "deal_id": f"{run}-D2",
                "expected_close_date": "1999-02-15",
                "amount": 50,
                "currency": "EUR",
                "team": f"t-{run}",
            },
        ),
    ]
    async with sessions() as session:
        try:
            await apply_batch(
                session, events, consumer_group=f"ip-{run}", funnels=[B2B], outbox_topic="t.v1"
            )
            session.add(Account(id=f"{run}-a", domain=f"l1-{run}.example", industry="software"))
            session.add(LeadAccount(lead_id=f"{run}-L1", account_id=f"{run}-a", attached_by="id"))
            team = ("team", f"t-{run}")
            euros = {"currency": "EUR"}
            quota, added = await sales_inputs.put_quota(
                session, caller, *team, "1999-Q1", QuotaIn(amount=Decimal(100), **euros)
            )
            assert (quota.version, added) == (1, True)
            for label, amount in (("1998-Q4", 50), ("1999-Q1", 100)):
                await sales_inputs.put_spend(
                    session, caller, label, "email", SpendIn(amount=Decimal(amount), **euros)
                )
            forecast, _ = await sales_inputs.put_forecast(
                session,
                caller,
                f"{run}-D3",
                ForecastIn(
                    expected_close_date=date(1999, 3, 1),
                    amount=Decimal(70),
                    team=team[1],
                    as_of=datetime(1998, 12, 15, tzinfo=UTC),
                    **euros,
                ),
                now,
            )
            assert forecast.source == "api"
            query = sales_metrics.SalesQuery(
                kind="quarter",
                start=date(1999, 1, 1),
                end=date(1999, 4, 1),
                funnel=B2B,
                now=now,
                owner=team,
            )
            whole = (await sales_metrics.sales_metrics(session, query)).periods[0].figures
            split = await sales_metrics.sales_metrics(
                session,
                sales_metrics.SalesQuery(
                    kind="quarter",
                    start=date(1999, 1, 1),
                    end=date(1999, 4, 1),
                    funnel=B2B,
                    now=now,
                    breakdown="industry",
                    channel="email",
                ),
            )
            d2 = [
                (v.source, v.version)
                for v in await sales_inputs.forecast_versions(session, f"{run}-D2")
            ]
        finally:
            await session.rollback()

    assert whole.win_rate.value == 1.0
    assert whole.average_deal_size.value == 100.0
    assert whole.average_sales_cycle_days.value == 30.0  # Jan 2 -> Feb 1
    # Open on Jan 1: D2 50 (deal event of Dec 1) + D3 70 (as of Dec 15), quota 100.
    assert whole.pipeline_coverage.value == 1.2
    assert whole.deal_slippage_rate_percent.value == 100.0  # neither closed in Q1
    assert whole.romi.value == 2.0  # (100 - 0) / (100 - 50)
    assert whole.churn_rate_percent.reason == "no customers at the start of 1999-Q1"
    assert d2 == [("event", 1)]
    (software,) = split.periods[0].segments
    assert software.segment == "software"
    assert software.figures.win_rate.value == 1.0
    assert {d.score: d.leads for d in software.figures.lead_scores}["fit"] == 1
