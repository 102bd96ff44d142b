"""Periods and the sales figures as pure functions, on tiny hand-computed inputs."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from leadstage.funnels import load_presets
from leadstage_api.sales_inputs import parse_amount, parse_event_forecast
from leadstage_api.sales_metrics import (
    Forecast,
    Money,
    SalesEvent,
    amount_for,
    average_deal_size,
    churn_rate,
    closed_in,
    deal_slippage,
    lead_scores,
    pipeline_coverage,
    romi,
    score_distribution,
    win_rate,
)
from leadstage_api.sales_periods import Period, count_periods, parse_period, periods_between

Q1 = Period(2015, "quarter", 1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def at(month: int, day: int, year: int = 2015) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def ev(
    kind: str, when: datetime, lead: str = "l", deal: str | None = None, **money: object
) -> SalesEvent:
    amount = money.get("amount")
    return SalesEvent(
        lead=lead,
        deal=deal or lead,
        type=kind,
        at=when,
        amount=Decimal(str(amount)) if amount is not None else None,
        currency=money.get("currency"),  # type: ignore[arg-type]
    )


def test_period_labels_parse_and_bound() -> None:
    assert parse_period("2026-Q3") == Period(2026, "quarter", 3)
    assert parse_period("2026-07") == Period(2026, "month", 7)
    q3 = parse_period("2026-Q3")
    assert (q3.start, q3.end) == (at(7, 1, 2026), at(10, 1, 2026))
    assert parse_period("2026-Q4").end == at(1, 1, 2027)
    assert parse_period("2026-01").previous().label == "2025-12"
    assert parse_period("2026-Q1").previous().label == "2025-Q4"
    assert [m.label for m in q3.months()] == ["2026-07", "2026-08", "2026-09"]
    assert parse_period("2026-08").quarter().label == "2026-Q3"
    for bad in ("2026-Q5", "2026-13", "2026-00", "26-Q1", "2026-7", "2026-q1", " 2026-Q1"):
        with pytest.raises(ValueError, match="YYYY-Qn"):
            parse_period(bad)
    with pytest.raises(ValueError, match="between 1970 and 2999"):
        parse_period("1969-Q4")


def test_periods_between_are_whole_and_counted_without_building() -> None:
    months = periods_between("month", date(2015, 1, 15), date(2015, 3, 2))
    assert [p.label for p in months] == ["2015-01", "2015-02", "2015-03"]
    assert count_periods("month", date(2015, 1, 15), date(2015, 3, 2)) == 3
    quarters = periods_between("quarter", date(2014, 12, 31), date(2015, 4, 1))
    assert [p.label for p in quarters] == ["2014-Q4", "2015-Q1"]
    assert count_periods("quarter", date(2014, 12, 31), date(2015, 4, 1)) == 2
    assert count_periods("month", date(2015, 1, 1), date(2018, 1, 1)) == 36


def test_a_deal_counts_once_per_period_by_its_last_close() -> None:
    events = [
        ev("deal_won", at(2, 5), deal="d4", amount=20000),
        ev("deal_won", at(2, 5), deal="d4", amount=20000),  # a CRM's resend
        ev("deal_lost", at(3, 1), deal="d3"),
        ev("deal_won", at(3, 20), deal="d3", amount=100),  # lost, then won back
        ev("deal_lost", at(4, 2), deal="d5"),  # next quarter
    ]
    closed = closed_in(events, Q1)
    assert sorted((e.deal, e.type) for e in closed) == [("d3", "deal_won"), ("d4", "deal_won")]
    assert win_rate(closed, Q1).value == 1.0
    # (20000 + 100) / 2
    assert average_deal_size(closed, Q1, None).value == 10050.0
    assert win_rate([], Q1).reason == "no deals closed in 2015-Q1"


def test_deal_size_refuses_to_add_currencies() -> None:
    closed = [
        ev("deal_won", at(1, 2), deal="a", amount=1000, currency="USD"),
        ev("deal_won", at(1, 3), deal="b", amount=3000, currency="EUR"),
        ev("deal_won", at(1, 4), deal="c", amount=5000),  # no currency: taken as any
        ev("deal_won", at(1, 5), deal="d"),  # no amount: left out of the average
    ]
    mixed = average_deal_size(closed, Q1, None)
    assert mixed.value is None
    assert mixed.reason == "amounts in several currencies (EUR, USD): pass currency="
    eur = average_deal_size(closed, Q1, "EUR")
    assert (eur.value, eur.numerator, eur.denominator) == (4000.0, 8000.0, 2)  # (3000+5000)/2
    assert average_deal_size(closed[3:], Q1, None).reason == (
        "no deal won in 2015-Q1 carries an amount"
    )
    assert average_deal_size(closed[:1], Q1, "GBP").reason == "no deal won in 2015-Q1 is in GBP"


def test_churn_counts_only_customers_of_the_period_start() -> None:
    events = [
        ev("deal_won", at(11, 1, 2014), lead="a"),
        ev("purchase", at(12, 1, 2014), lead="b"),
        ev("deal_won", at(12, 2, 2014), lead="c"),
        ev("churned", at(12, 3, 2014), lead="c"),  # gone before the quarter
        ev("churned", at(2, 1), lead="a"),
        ev("deal_won", at(2, 2), lead="d"),
        ev("churned", at(3, 1), lead="d"),  # not a customer at the start
    ]
    # Customers on Jan 1: a and b; a churned in Q1: 1 / 2 x 100.
    assert churn_rate(events, Q1).value == 50.0
    assert churn_rate(events[:1], Period(2014, "quarter", 4)).reason == (
        "no customers at the start of 2014-Q4"
    )


def test_quarters_are_built_from_whole_months_only() -> None:
    months = {
        "2015-01": Money(Decimal(10), "EUR"),
        "2015-02": Money(Decimal(20), "EUR"),
    }
    assert amount_for(Q1, months, "spend") == (
        None,
        "spend is stated for only 2 of the 3 months of 2015-Q1",
    )
    months["2015-03"] = Money(Decimal(30), "EUR")
    assert amount_for(Q1, months, "spend") == (Money(Decimal(60), "EUR"), None)
    quarter = {"2015-Q1": Money(Decimal(90), "EUR")}
    assert amount_for(Period(2015, "month", 2), quarter, "spend") == (
        None,
        "spend is stated for 2015-Q1 as a whole, not per month",
    )
    assert amount_for(Q1, {}, "spend") == (None, None)


def test_romi_is_the_revenue_increase_over_the_spend_increase() -> None:
    events = [
        ev("deal_won", at(11, 15, 2014), deal="d0", amount=5000),
        ev("deal_won", at(1, 31), deal="d1", amount=10000),
        ev("renewal", at(2, 20), deal="d0", amount=2000),
    ]
    spend = {
        "email": {"2014-Q4": Money(Decimal(2000), "EUR"), "2015-Q1": Money(Decimal(4000), "EUR")},
        "paid_search": {
            "2014-Q4": Money(Decimal(8000), "EUR"),
            "2015-Q1": Money(Decimal(9000), "EUR"),
        },
    }
    # ((10000 + 2000) - 5000) / ((4000 + 9000) - (2000 + 8000)) = 7000 / 3000
    figure = romi(Q1, events, spend, None, None)
    assert (figure.value, figure.numerator, figure.denominator) == (2.333333, 7000.0, 3000.0)
    # Email alone: (0 - 0) / (4000 - 2000): the deals came from no channel here, so 0.
    assert romi(Q1, [], spend, "email", None).value == 0.0
    flat = {"email": {"2014-Q4": Money(Decimal(1), "EUR"), "2015-Q1": Money(Decimal(1), "EUR")}}
    assert romi(Q1, events, flat, None, None).reason == (
        "marketing spend did not change from 2014-Q4 to 2015-Q1"
    )
    assert romi(Q1, events, {}, None, None).reason == "no marketing spend recorded for 2015-Q1"
    only_now = {"email": {"2015-Q1": Money(Decimal(1), "EUR")}}
    assert romi(Q1, events, only_now, None, None).reason == (
        "no marketing spend recorded for 2014-Q4"
    )
    usd = [ev("deal_won", at(1, 31), deal="d9", amount=1, currency="USD")]
    assert romi(Q1, usd, spend, None, None).reason == (
        "amounts in several currencies (EUR, USD): pass currency="
    )


def forecast(deal: str, version: int, as_of: datetime, close: date, **extra: object) -> Forecast:
    return Forecast(
        deal=deal,
        version=version,
        as_of=as_of,
        close=close,
        amount=Decimal(str(extra.get("amount", 1000))),
        currency="EUR",
        rep=None,
        team=extra.get("team", "emea"),  # type: ignore[arg-type]
    )


def test_slippage_counts_deals_forecast_for_the_period_and_not_closed_by_its_end() -> None:
    forecasts = {
        "won": [forecast("won", 1, at(12, 1, 2014), date(2015, 2, 1))],
        "moved": [
            forecast("moved", 1, at(12, 1, 2014), date(2015, 3, 20)),
            forecast("moved", 2, at(3, 10), date(2015, 5, 15)),
        ],
        "other-team": [forecast("other-team", 1, at(1, 5), date(2015, 2, 2), team="apac")],
        "made-too-late": [forecast("made-too-late", 1, at(4, 2), date(2015, 3, 1))],
    }
    events = [ev("deal_won", at(2, 3), deal="won")]
    # Forecast for Q1: won, moved, other-team; not closed by Apr 1: moved, other-team.
    assert deal_slippage(Q1, forecasts, events, None, NOW).value == 66.666667
    assert deal_slippage(Q1, forecasts, events, ("team", "emea"), NOW).value == 50.0
    assert deal_slippage(Q1, forecasts, events, None, at(3, 1)).reason == (
        "2015-Q1 has not ended: slippage is known at its end"
    )
    assert deal_slippage(Q1, {}, events, None, NOW).reason == (
        "no deals were forecast to close in 2015-Q1"
    )


def test_coverage_values_the_pipeline_as_it_stood_at_the_period_start() -> None:
    forecasts = {
        "a": [forecast("a", 1, at(12, 1, 2014), date(2015, 2, 1), amount=30000)],
        "b": [
            forecast("b", 1, at(12, 1, 2014), date(2015, 3, 20), amount=50000),
            forecast("b", 2, at(3, 10), date(2015, 5, 15), amount=50000),  # later: no effect
        ],
        "closed-before": [forecast("closed-before", 1, at(11, 1, 2014), date(2015, 1, 9))],
        "apac": [forecast("apac", 1, at(12, 1, 2014), date(2015, 1, 9), team="apac")],
    }
    events = [ev("deal_lost", at(12, 20, 2014), deal="closed-before")]
    quotas = {"2015-Q1": Money(Decimal(40000), "EUR")}
    emea = ("team", "emea")
    figure = pipeline_coverage(Q1, forecasts, events, quotas, emea, None, NOW)
    # (30000 + 50000) / 40000
    assert (figure.value, figure.numerator, figure.denominator) == (2.0, 80000.0, 40000.0)
    assert pipeline_coverage(Q1, forecasts, events, {}, emea, None, NOW).reason == (
        "no quota for team emea in 2015-Q1"
    )
    zero = {"2015-Q1": Money(Decimal(0), "EUR")}
    assert pipeline_coverage(Q1, forecasts, events, zero, emea, None, NOW).reason == (
        "the quota of team emea for 2015-Q1 is zero"
    )
    assert pipeline_coverage(Q1, forecasts, events, quotas, None, None, NOW).reason == (
        "pipeline coverage is per rep or team: pass owner=rep:<id> or owner=team:<id>"
    )
    assert pipeline_coverage(Q1, forecasts, events, quotas, emea, "USD", NOW).reason == (
        "the quota of team emea for 2015-Q1 is in EUR, not USD"
    )


def test_score_histograms_have_contiguous_bins_and_a_capped_count() -> None:
    distribution = score_distribution("fit", [10.0, 25.0, 25.5], 5.0, Q1)
    assert [(b.lower, b.upper, b.leads) for b in distribution.bins] == [
        (10.0, 15.0, 1),
        (15.0, 20.0, 0),
        (20.0, 25.0, 0),
        (25.0, 30.0, 2),
    ]
    assert distribution.mean.value == round((10 + 25 + 25.5) / 3, 6)
    spread = score_distribution("wide", [-3.0, 0.0, 5000.0], 1.0, Q1)
    assert len(spread.bins) == 100
    assert (spread.bins[0].lower, spread.bins[0].leads) == (-3.0, 1)
    assert (spread.bins[-1].lower, spread.bins[-1].upper, spread.bins[-1].leads) == (96.0, None, 1)
    empty = score_distribution("fit", [], 10.0, Q1)
    assert (empty.leads, empty.bins, empty.mean.reason) == (
        0,
        [],
        "no lead has a value for fit at the end of 2015-Q1",
    )
    b2b = load_presets()["b2b-six-stage"]
    named = lead_scores(b2b, {"x": {"custom": 1.0}}, lambda _: True, 10.0, Q1)
    assert [d.score for d in named] == ["fit", "engagement", "custom"]


def test_event_amounts_and_forecasts_are_parsed_defensively() -> None:
    assert parse_amount(12000) == Decimal("12000")
    assert parse_amount("12.5") == Decimal("12.5")
    for bad in (-1, True, None, "lots", float("inf"), float("nan"), 1e16, [1]):
        assert parse_amount(bad) is None
    good = {"deal_id": 42, "expected_close_date": "2015-02-15", "amount": 3, "team": "emea"}
    parsed = parse_event_forecast(good)
    assert parsed is not None
    assert (parsed.deal_id, parsed.expected_close_date, parsed.team) == (
        "42",
        date(2015, 2, 15),
        "emea",
    )
    for broken in (
        {**good, "expected_close_date": "soon"},
        {**good, "amount": -5},
        {**good, "currency": "euro"},
        {k: v for k, v in good.items() if k != "deal_id"},
        "not a dict",
    ):
        assert parse_event_forecast(broken) is None
    assert math.isclose(float(parse_amount(0.1) or 0), 0.1)
