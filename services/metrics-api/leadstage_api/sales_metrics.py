"""Sales and pipeline metrics per period, from the deal events and the sales inputs.

Formulas (docs/architecture.md, "Sales metrics", gives the sources):
- average sales cycle = days from the lead's first touch to the deal won, summed over
  the deals won in the period / those deals;
- average deal size = revenue of the deals won in the period / those deals;
- win rate = won / (won + lost), deals closed in the period;
- churn rate = customers lost in the period / customers at its start x 100;
- deal slippage = deals forecast to close in the period and not closed by its end /
  deals forecast to close in it x 100;
- pipeline coverage = open pipeline forecast to close in the period, as of its start
  / the rep's or team's quota for it;
- ROMI (incremental) = (revenue of the period - revenue of the previous one) /
  (spend of the period - spend of the previous one);
- lead scores: each lead's value of each named score at the period's end (decayed).

Every figure is a number or null with a reason, never NaN. Loaders are module-level
functions that take the session; the figures are pure functions over what they load.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY, distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import (
    SALES_EVENTS_PREDICATE,
    Account,
    DealForecast,
    LeadAccount,
    LeadScoreChange,
    MarketingSpend,
    SalesQuota,
    StoredTouchpoint,
)
from leadstage.funnels import Funnel, LeadState
from leadstage_api.sales_inputs import parse_amount, record_event_forecasts
from leadstage_api.sales_periods import Period, PeriodKind, periods_between
from leadstage_api.sales_schemas import (
    Figure,
    PeriodSalesMetrics,
    SalesFigures,
    SalesMetrics,
    ScoreBin,
    ScoreDistribution,
    SegmentFigures,
)

WON = frozenset({"deal_won", "purchase"})
LOST = frozenset({"deal_lost"})
REVENUE_ONLY = frozenset({"renewal", "upsell"})  # revenue, but not a new deal
BECAME_CUSTOMER = WON | REVENUE_ONLY
CHURNED = frozenset({"churned"})
MAX_PERIODS = 36
MAX_SCORE_BINS = 100
UNATTRIBUTED = "unattributed"
Breakdown = Literal["channel", "industry", "source"]


# --- values the figures are computed from --------------------------------------------


@dataclass(frozen=True)
class SalesEvent:
    """A deal, revenue or churn touchpoint. ``deal`` is its ``properties.deal_id``, or
    the lead when the event names no deal (one deal per lead)."""

    lead: str
    deal: str
    type: str
    at: datetime
    amount: Decimal | None = None
    currency: str | None = None


@dataclass(frozen=True)
class LeadFacts:
    """What a lead is segmented by: its first touch (first-touch attribution) and
    its account's industry."""

    first_touch_at: datetime | None = None
    channel: str | None = None
    source: str | None = None
    industry: str | None = None

    def segment(self, by: Breakdown) -> str:
        value = {"channel": self.channel, "industry": self.industry, "source": self.source}[by]
        return value or UNATTRIBUTED


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str | None


@dataclass(frozen=True)
class Forecast:
    deal: str
    version: int
    as_of: datetime
    close: date
    amount: Decimal
    currency: str | None
    rep: str | None
    team: str | None

    def owned_by(self, owner: tuple[str, str] | None) -> bool:
        if owner is None:
            return True
        kind, name = owner
        return (self.rep if kind == "rep" else self.team) == name


@dataclass(frozen=True)
class SalesQuery:
    kind: PeriodKind
    start: date
    end: date
    funnel: Funnel
    now: datetime
    currency: str | None = None
    owner: tuple[str, str] | None = None
    channel: str | None = None
    industry: str | None = None
    source: str | None = None
    breakdown: Breakdown | None = None
    score_bin_width: float = 10.0

    @property
    def periods(self) -> list[Period]:
        return periods_between(self.kind, self.start, self.end)

    @property
    def lead_filters(self) -> dict[Breakdown, str]:
        filters: dict[Breakdown, str | None] = {
            "channel": self.channel,
            "industry": self.industry,
            "source": self.source,
        }
        return {name: value for name, value in filters.items() if value is not None}


@dataclass(frozen=True)
class Slice:
    """The leads a set of figures covers: everyone, or those of a filter or segment."""

    by_lead: dict[Breakdown, str] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in sorted(self.by_lead.items()))


def null(reason: str) -> Figure:
    return Figure(value=None, reason=reason)


def ratio(numerator: float | Decimal, denominator: float | Decimal, *, scale: int = 1) -> Figure:
    """numerator / denominator x scale; the caller has ruled out a zero denominator."""
    value = float(numerator) / float(denominator) * scale
    if not math.isfinite(value):  # unreachable with capped amounts; kept as a guard
        return null("the result is not a finite number")
    return Figure(
        value=round(value, 6),
        numerator=round(float(numerator), 6),
        denominator=round(float(denominator), 6),
    )


def in_currency(items: Iterable[Money], requested: str | None) -> tuple[list[Money], str | None]:
    """The amounts that can be added up, or a reason they cannot. With ``requested``:
    those in it (an amount without a currency is taken to be in it). Without: all,
    if they share one currency."""
    items = list(items)
    if requested is not None:
        return [m for m in items if m.currency in (requested, None)], None
    currencies = sorted({m.currency for m in items if m.currency is not None})
    if len(currencies) > 1:
        return [], f"amounts in several currencies ({', '.join(currencies)}): pass currency="
    return items, None


def total(items: Sequence[Money]) -> Decimal:
    return sum((m.amount for m in items), Decimal(0))


# --- deals ---------------------------------------------------------------------------


def closed_in(events: Iterable[SalesEvent], period: Period) -> list[SalesEvent]:
    """Each deal's last close (won or lost) in the period: a repeated deal_won counts
    once, and a deal lost then won within the period counts as won."""
    last: dict[str, SalesEvent] = {}
    for event in events:
        if event.type in WON | LOST and period.start <= event.at < period.end:
            last[event.deal] = event
    return list(last.values())


def win_rate(closed: Sequence[SalesEvent], period: Period) -> Figure:
    if not closed:
        return null(f"no deals closed in {period}")
    return ratio(sum(1 for e in closed if e.type in WON), len(closed))


def average_deal_size(closed: Sequence[SalesEvent], period: Period, currency: str | None) -> Figure:
    won = [e for e in closed if e.type in WON]
    if not won:
        return null(f"no deals won in {period}")
    priced = [Money(e.amount, e.currency) for e in won if e.amount is not None]
    if not priced:
        return null(f"no deal won in {period} carries an amount")
    counted, reason = in_currency(priced, currency)
    if reason is not None:
        return null(reason)
    if not counted:
        return null(f"no deal won in {period} is in {currency}")
    return ratio(total(counted), len(counted))


def average_sales_cycle(
    closed: Sequence[SalesEvent], period: Period, facts: Mapping[str, LeadFacts]
) -> Figure:
    won = [e for e in closed if e.type in WON]
    if not won:
        return null(f"no deals won in {period}")
    seconds = 0.0
    for event in won:
        first = facts.get(event.lead, LeadFacts()).first_touch_at or event.at
        seconds += max((event.at - first).total_seconds(), 0.0)
    return ratio(seconds / 86_400, len(won))


def churn_rate(events: Sequence[SalesEvent], period: Period) -> Figure:
    """Customers are leads whose last deal_won, purchase, renewal, upsell or churned
    event before the period's start is not churned; lost ones churned in the period."""
    customer: dict[str, bool] = {}
    for event in events:
        if event.at >= period.start:
            break
        if event.type in BECAME_CUSTOMER:
            customer[event.lead] = True
        elif event.type in CHURNED:
            customer[event.lead] = False
    at_start = {lead for lead, is_customer in customer.items() if is_customer}
    if not at_start:
        return null(f"no customers at the start of {period}")
    lost = {
        e.lead
        for e in events
        if e.type in CHURNED and period.start <= e.at < period.end and e.lead in at_start
    }
    return ratio(len(lost), len(at_start), scale=100)


def revenue(events: Sequence[SalesEvent], period: Period) -> list[Money]:
    """The amounts of the deals won in the period (each deal once) and of its
    renewals and upsells."""
    won = [e for e in closed_in(events, period) if e.type in WON]
    extra = [e for e in events if e.type in REVENUE_ONLY and period.start <= e.at < period.end]
    return [Money(e.amount, e.currency) for e in (*won, *extra) if e.amount is not None]


# --- inputs stated per period --------------------------------------------------------


def amount_for(
    period: Period, records: Mapping[str, Money], what: str
) -> tuple[Money | None, str | None]:
    """The amount stated for the period itself, or a quarter's as the sum of its three
    months. (None, None): nothing stated; (None, reason): stated in a way that cannot
    be split or completed."""
    if period.label in records:
        return records[period.label], None
    if period.kind == "month":
        quarter = period.quarter().label
        if quarter in records:
            return None, f"{what} is stated for {quarter} as a whole, not per month"
        return None, None
    months = [records.get(month.label) for month in period.months()]
    stated = [m for m in months if m is not None]
    if not stated:
        return None, None
    if len(stated) < len(months):
        return None, f"{what} is stated for only {len(stated)} of the 3 months of {period}"
    currencies = {m.currency for m in stated}
    if len(currencies) > 1:
        return None, f"{what} for the months of {period} is in several currencies"
    return Money(total(stated), stated[0].currency), None


def spend_for(
    period: Period, spend: Mapping[str, Mapping[str, Money]], channel: str | None
) -> tuple[Money | None, str | None]:
    """The marketing spend of the period over every channel (or one)."""
    amounts: list[Money] = []
    for name, records in sorted(spend.items()):
        if channel is not None and name != channel:
            continue
        money, reason = amount_for(period, records, f"spend on {name}")
        if reason is not None:
            return None, reason
        if money is not None:
            amounts.append(money)
    where = f" on {channel}" if channel else ""
    if not amounts:
        return None, f"no marketing spend recorded for {period}{where}"
    if len({m.currency for m in amounts}) > 1:
        return None, f"marketing spend for {period} is in several currencies: pass currency="
    return Money(total(amounts), amounts[0].currency), None


def romi(
    period: Period,
    events: Sequence[SalesEvent],
    spend: Mapping[str, Mapping[str, Money]],
    channel: str | None,
    currency: str | None,
) -> Figure:
    previous = period.previous()
    spent_now, reason = spend_for(period, spend, channel)
    if spent_now is None:
        return null(reason or "")
    spent_before, reason = spend_for(previous, spend, channel)
    if spent_before is None:
        return null(reason or "")
    earned_now, earned_before = revenue(events, period), revenue(events, previous)
    everything = [*earned_now, *earned_before, spent_now, spent_before]
    _, reason = in_currency(everything, currency)
    if reason is not None:
        return null(reason)
    if currency is not None and spent_now.currency != currency:
        return null(f"marketing spend for {period} is in {spent_now.currency}, not {currency}")
    if currency is not None and spent_before.currency != currency:
        return null(f"marketing spend for {previous} is in {spent_before.currency}, not {currency}")
    earned_now, _ = in_currency(earned_now, currency)
    earned_before, _ = in_currency(earned_before, currency)
    increase = spent_now.amount - spent_before.amount
    if increase == 0:
        return null(f"marketing spend did not change from {previous} to {period}")
    return ratio(total(earned_now) - total(earned_before), increase)


# --- forecasts -----------------------------------------------------------------------


def _closes(events: Iterable[SalesEvent]) -> dict[str, list[datetime]]:
    closes: dict[str, list[datetime]] = defaultdict(list)
    for event in events:
        if event.type in WON | LOST:
            closes[event.deal].append(event.at)
    return closes


def deal_slippage(
    period: Period,
    forecasts: Mapping[str, Sequence[Forecast]],
    events: Sequence[SalesEvent],
    owner: tuple[str, str] | None,
    now: datetime,
) -> Figure:
    """A deal is forecast for the period if any forecast made before its end put the
    close date in it; it slipped if it did not close (won or lost) by the period's end,
    whether its date passed or was moved later."""
    if period.end > now:
        return null(f"{period} has not ended: slippage is known at its end")
    forecast = {
        deal
        for deal, versions in forecasts.items()
        if any(
            v.as_of < period.end
            and period.start_date <= v.close < period.end_date
            and v.owned_by(owner)
            for v in versions
        )
    }
    if not forecast:
        return null(f"no deals were forecast to close in {period}")
    closes = _closes(events)
    slipped = [d for d in forecast if not any(at < period.end for at in closes.get(d, ()))]
    return ratio(len(slipped), len(forecast), scale=100)


def pipeline_coverage(
    period: Period,
    forecasts: Mapping[str, Sequence[Forecast]],
    events: Sequence[SalesEvent],
    quotas: Mapping[str, Money],
    owner: tuple[str, str] | None,
    currency: str | None,
    now: datetime,
) -> Figure:
    """Open deals whose forecast, as it stood at the period's start (or now, for a
    period still ahead), closes in the period, valued at their forecast amount."""
    if owner is None:
        return null("pipeline coverage is per rep or team: pass owner=rep:<id> or owner=team:<id>")
    who = f"{owner[0]} {owner[1]}"
    quota, reason = amount_for(period, quotas, f"the quota of {who}")
    if quota is None:
        return null(reason or f"no quota for {who} in {period}")
    if currency is not None and quota.currency != currency:
        return null(f"the quota of {who} for {period} is in {quota.currency}, not {currency}")
    if quota.amount == 0:
        return null(f"the quota of {who} for {period} is zero")
    as_of = min(period.start, now)
    closes = _closes(events)
    pipeline: list[Money] = []
    for deal, versions in forecasts.items():
        known = [v for v in versions if v.as_of <= as_of]
        if not known:
            continue
        stood = max(known, key=lambda v: (v.as_of, v.version))
        is_open = not any(at <= as_of for at in closes.get(deal, ()))
        in_period = period.start_date <= stood.close < period.end_date
        if is_open and in_period and stood.owned_by(owner):
            pipeline.append(Money(stood.amount, stood.currency))
    _, reason = in_currency([*pipeline, quota], currency)
    if reason is not None:
        return null(reason)
    counted, _ = in_currency(pipeline, currency)
    return ratio(total(counted), quota.amount)


# --- lead scores ---------------------------------------------------------------------


def score_distribution(
    name: str, values: Sequence[float], width: float, period: Period
) -> ScoreDistribution:
    if not values:
        return ScoreDistribution(
            score=name,
            leads=0,
            mean=null(f"no lead has a value for {name} at the end of {period}"),
            bin_width=width,
            bins=[],
        )
    lowest = math.floor(min(values) / width) * width
    needed = math.floor(round((max(values) - lowest) / width, 9)) + 1
    # Past the cap, the last bin takes everything above its lower edge.
    count = min(needed, MAX_SCORE_BINS)
    counts = [0] * count
    for value in values:
        index = math.floor(round((value - lowest) / width, 9))
        counts[min(index, count - 1)] += 1
    bins = [
        ScoreBin(
            lower=round(lowest + i * width, 6),
            upper=None if needed > count and i == count - 1 else round(lowest + (i + 1) * width, 6),
            leads=n,
        )
        for i, n in enumerate(counts)
    ]
    return ScoreDistribution(
        score=name,
        leads=len(values),
        mean=ratio(math.fsum(values), len(values)),
        bin_width=width,
        bins=bins,
    )


def lead_scores(
    funnel: Funnel,
    scores: Mapping[str, Mapping[str, float]],
    leads: Callable[[str], bool],
    width: float,
    period: Period,
) -> list[ScoreDistribution]:
    by_score: dict[str, list[float]] = {name: [] for name in funnel.score_names}
    for lead, values in scores.items():
        if leads(lead):
            for name, value in values.items():
                by_score.setdefault(name, []).append(value)
    return [score_distribution(name, by_score[name], width, period) for name in by_score]


# --- assembling ----------------------------------------------------------------------


@dataclass(frozen=True)
class SalesData:
    events: list[SalesEvent]
    facts: dict[str, LeadFacts]
    forecasts: dict[str, list[Forecast]]
    quotas: dict[str, Money]
    spend: dict[str, dict[str, Money]]
    scores: dict[Period, dict[str, dict[str, float]]]


def figures_for(query: SalesQuery, data: SalesData, period: Period, scope: Slice) -> SalesFigures:
    def keeps(lead: str) -> bool:
        facts = data.facts.get(lead, LeadFacts())
        return all(facts.segment(by) == value for by, value in scope.by_lead.items())

    events = [e for e in data.events if keeps(e.lead)] if scope.by_lead else data.events
    closed = closed_in(events, period)
    if scope.by_lead:
        lead_free = f"forecasts and quotas are per deal, rep and team, not per {scope.describe()}"
        slippage, coverage = null(lead_free), null(lead_free)
    else:
        slippage = deal_slippage(period, data.forecasts, events, query.owner, query.now)
        coverage = pipeline_coverage(
            period, data.forecasts, events, data.quotas, query.owner, query.currency, query.now
        )
    not_per_channel = [by for by in scope.by_lead if by != "channel"]
    if not_per_channel:
        marketing = null(f"marketing spend is recorded per channel, not per {not_per_channel[0]}")
    else:
        channel = scope.by_lead.get("channel")
        marketing = romi(period, events, data.spend, channel, query.currency)
    return SalesFigures(
        average_sales_cycle_days=average_sales_cycle(closed, period, data.facts),
        average_deal_size=average_deal_size(closed, period, query.currency),
        win_rate=win_rate(closed, period),
        churn_rate_percent=churn_rate(events, period),
        deal_slippage_rate_percent=slippage,
        pipeline_coverage=coverage,
        romi=marketing,
        lead_scores=lead_scores(
            query.funnel, data.scores.get(period, {}), keeps, query.score_bin_width, period
        ),
    )


def assemble(query: SalesQuery, data: SalesData) -> SalesMetrics:
    scope = Slice(by_lead=query.lead_filters)
    segments: list[Slice] = []
    if query.breakdown is not None:
        breakdown = query.breakdown
        leads = {e.lead for e in data.events}
        for scores in data.scores.values():
            leads.update(scores)
        present = {data.facts.get(lead, LeadFacts()).segment(breakdown) for lead in leads}
        if breakdown in scope.by_lead:
            present &= {scope.by_lead[breakdown]}
        names = sorted(present - {UNATTRIBUTED}) + sorted(present & {UNATTRIBUTED})
        segments = [Slice(by_lead={**scope.by_lead, breakdown: name}) for name in names]
    periods = [
        PeriodSalesMetrics(
            period=period.label,
            start=period.start,
            end=period.end,
            figures=figures_for(query, data, period, scope),
            segments=[
                SegmentFigures(
                    segment=segment.by_lead[query.breakdown],
                    figures=figures_for(query, data, period, segment),
                )
                for segment in segments
                if query.breakdown is not None
            ],
        )
        for period in query.periods
    ]
    owner = f"{query.owner[0]}:{query.owner[1]}" if query.owner else None
    return SalesMetrics(
        funnel=query.funnel.name,
        period_kind=query.kind,
        from_=query.start,
        to=query.end,
        currency=query.currency,
        owner=owner,
        channel=query.channel,
        industry=query.industry,
        source=query.source,
        breakdown=query.breakdown,
        as_of=query.now,
        periods=periods,
    )


# --- loading -------------------------------------------------------------------------


async def load_sales_events(session: AsyncSession, before: datetime) -> list[SalesEvent]:
    """Every deal, revenue and churn event before ``before``, in event time."""
    t = StoredTouchpoint
    properties = t.payload["properties"]
    rows = await session.execute(
        select(
            t.lead_key,
            properties["deal_id"],
            t.type,
            t.occurred_at,
            properties["amount"],
            properties["currency"],
        )
        .where(SALES_EVENTS_PREDICATE, t.occurred_at < before)
        .order_by(t.occurred_at, t.source, t.event_id)
    )
    events = []
    for lead, deal, kind, at, amount, currency in rows:
        deal_id = str(deal) if isinstance(deal, str | int) and not isinstance(deal, bool) else ""
        events.append(
            SalesEvent(
                lead=lead,
                deal=deal_id.strip() or lead,
                type=kind,
                at=at,
                amount=parse_amount(amount),
                currency=currency if isinstance(currency, str) and currency.strip() else None,
            )
        )
    return events


async def load_lead_facts(
    session: AsyncSession, leads: Collection[str], *, industry: bool
) -> dict[str, LeadFacts]:
    """Each lead's first touch (time, channel, UTM source) and, if asked, industry."""
    if not leads:
        return {}
    t = StoredTouchpoint
    # One array parameter, not one parameter per lead (asyncpg allows 32,767).
    keys = bindparam("leads", sorted(leads), type_=ARRAY(String))
    rows = await session.execute(
        select(
            t.lead_key,
            t.occurred_at,
            t.payload["channel"].astext,
            t.payload["utm"]["source"].astext,
        )
        .where(t.lead_key == any_(keys))
        .ext(distinct_on(t.lead_key))
        .order_by(t.lead_key, t.occurred_at, t.source, t.event_id)
    )
    facts = {
        lead: LeadFacts(first_touch_at=at, channel=channel, source=source)
        for lead, at, channel, source in rows
    }
    if industry:
        industries = await session.execute(
            select(LeadAccount.lead_id, Account.industry)
            .join(Account, Account.id == LeadAccount.account_id)
            .where(LeadAccount.lead_id == any_(keys))
        )
        for lead, name in industries:
            facts[lead] = replace(facts.get(lead, LeadFacts()), industry=name)
    return facts


async def load_forecasts(
    session: AsyncSession, start: date, end: date
) -> dict[str, list[Forecast]]:
    """Every version of every deal ever forecast to close in [start, end)."""
    f = DealForecast
    deals = select(f.deal_id).where(f.expected_close_date >= start, f.expected_close_date < end)
    rows = await session.scalars(select(f).where(f.deal_id.in_(deals)).order_by(f.version))
    forecasts: dict[str, list[Forecast]] = defaultdict(list)
    for row in rows:
        forecasts[row.deal_id].append(
            Forecast(
                deal=row.deal_id,
                version=row.version,
                as_of=row.as_of,
                close=row.expected_close_date,
                amount=row.amount,
                currency=row.currency,
                rep=row.rep,
                team=row.team,
            )
        )
    return forecasts


def _labels(periods: Iterable[Period]) -> list[str]:
    labels: set[str] = set()
    for period in periods:
        labels.update(p.label for p in (period, period.quarter(), *period.months()))
    return sorted(labels)


async def load_quotas(
    session: AsyncSession, owner: tuple[str, str], periods: Iterable[Period]
) -> dict[str, Money]:
    """The current version of the owner's quota for each period (and its months)."""
    q = SalesQuota
    rows = await session.execute(
        select(q.period, q.amount, q.currency)
        .where(q.owner_kind == owner[0], q.owner_id == owner[1], q.period.in_(_labels(periods)))
        .ext(distinct_on(q.period))
        .order_by(q.period, q.version.desc())
    )
    return {label: Money(amount, currency) for label, amount, currency in rows}


async def load_spend(
    session: AsyncSession, periods: Iterable[Period]
) -> dict[str, dict[str, Money]]:
    """Per channel, the current version of the spend for each period (and its months)."""
    s = MarketingSpend
    rows = await session.execute(
        select(s.channel, s.period, s.amount, s.currency)
        .where(s.period.in_(_labels(periods)))
        .ext(distinct_on(s.channel, s.period))
        .order_by(s.channel, s.period, s.version.desc())
    )
    spend: dict[str, dict[str, Money]] = defaultdict(dict)
    for channel, label, amount, currency in rows:
        spend[channel][label] = Money(amount, currency)
    return spend


async def load_scores(
    session: AsyncSession, funnel: Funnel, at: datetime
) -> dict[str, dict[str, float]]:
    """Each lead's scores at ``at``: the last value before it, decayed to it."""
    c = LeadScoreChange
    rows = await session.execute(
        select(c.lead_key, c.score, c.value, c.occurred_at)
        .where(c.funnel == funnel.name, c.occurred_at < at)
        .ext(distinct_on(c.lead_key, c.score))
        .order_by(c.lead_key, c.score, c.occurred_at.desc(), c.id.desc())
    )
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for lead, name, value, changed_at in rows:
        state = LeadState(scores={name: value}, scores_as_of=changed_at)
        scores[lead][name] = state.score_at(funnel, name, at)
    return scores


async def sales_metrics(session: AsyncSession, query: SalesQuery) -> SalesMetrics:
    periods = query.periods
    await record_event_forecasts(session)
    first, last = periods[0], periods[-1]
    events = await load_sales_events(session, last.end)
    scores = {period: await load_scores(session, query.funnel, period.end) for period in periods}
    attributes = bool(query.lead_filters) or query.breakdown is not None
    leads = {e.lead for e in events if e.type in WON and e.at >= first.start}
    if attributes:
        leads = {e.lead for e in events}
        for values in scores.values():
            leads.update(values)
    needs_industry = query.industry is not None or query.breakdown == "industry"
    data = SalesData(
        events=events,
        facts=await load_lead_facts(session, leads, industry=needs_industry),
        forecasts=await load_forecasts(session, first.start_date, last.end_date),
        quotas=await load_quotas(session, query.owner, periods) if query.owner else {},
        spend=await load_spend(session, [*periods, first.previous()]),
        scores=scores,
    )
    return assemble(query, data)
