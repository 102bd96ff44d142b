"""Request and response models of the sales inputs (quotas, spend, forecasts) and the
sales metrics."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

# Money is exact in storage (NUMERIC(19, 4)) and a JSON number on the wire.
Amount = Annotated[
    Decimal,
    Field(ge=0, le=Decimal("999999999999999"), max_digits=19, decimal_places=4),
    PlainSerializer(float, return_type=float, when_used="json"),
]
StoredAmount = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
OwnerKind = Literal["rep", "team"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuotaIn(_Input):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"amount": 250000, "currency": "EUR"}]}
    )

    amount: Amount = Field(description="The quota for the period, >= 0.")
    currency: Currency = Field(description="ISO 4217 code, e.g. EUR.")


class SpendIn(_Input):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"amount": 12000, "currency": "EUR"}]}
    )

    amount: Amount = Field(description="Marketing spend on the channel in the period, >= 0.")
    currency: Currency = Field(description="ISO 4217 code, e.g. EUR.")


class ForecastIn(_Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "expected_close_date": "2026-09-15",
                    "amount": 48000,
                    "currency": "EUR",
                    "rep": "alice",
                    "team": "emea",
                }
            ]
        },
    )

    expected_close_date: date
    amount: Amount = Field(description="The expected deal amount, >= 0.")
    currency: Currency = Field(description="ISO 4217 code, e.g. EUR.")
    rep: Name | None = Field(default=None, description="The rep who owns the deal.")
    team: Name | None = Field(default=None, description="The rep's team.")
    as_of: AwareDatetime | None = Field(
        default=None,
        description="When the forecast was made; default now. A past time backfills a CRM's "
        "history; a future time is refused.",
    )


class QuotaVersion(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "owner_kind": "team",
                    "owner_id": "emea",
                    "period": "2026-Q3",
                    "version": 2,
                    "amount": 250000,
                    "currency": "EUR",
                    "written_at": "2026-06-20T09:15:00Z",
                    "written_by": "finance-sync",
                    "written_by_token_id": 7,
                }
            ]
        },
    )

    owner_kind: OwnerKind
    owner_id: str
    period: str
    version: int = Field(description="1 for the first write; each change adds one.")
    amount: StoredAmount
    currency: str
    written_at: datetime
    written_by: str = Field(description="The name of the API token that wrote this version.")
    written_by_token_id: int


class QuotaHistory(BaseModel):
    owner_kind: OwnerKind
    owner_id: str
    period: str
    versions: list[QuotaVersion] = Field(description="Every version, oldest first.")


class SpendVersion(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "period": "2026-07",
                    "channel": "paid_search",
                    "version": 1,
                    "amount": 12000,
                    "currency": "EUR",
                    "written_at": "2026-08-02T10:00:00Z",
                    "written_by": "marketing-ops",
                    "written_by_token_id": 9,
                }
            ]
        },
    )

    period: str
    channel: str
    version: int
    amount: StoredAmount
    currency: str
    written_at: datetime
    written_by: str
    written_by_token_id: int


class SpendHistory(BaseModel):
    period: str
    channel: str
    versions: list[SpendVersion] = Field(description="Every version, oldest first.")


class ForecastVersion(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "deal_id": "deal-1042",
                    "version": 3,
                    "expected_close_date": "2026-09-15",
                    "amount": 48000,
                    "currency": "EUR",
                    "rep": "alice",
                    "team": "emea",
                    "source": "event",
                    "as_of": "2026-07-01T08:00:00Z",
                    "written_at": "2026-07-01T08:00:03Z",
                    "written_by": "crm",
                    "written_by_token_id": None,
                    "event_source": "crm",
                    "event_id": "opp-1042-upd-7",
                }
            ]
        },
    )

    deal_id: str
    version: int
    expected_close_date: date
    amount: StoredAmount
    currency: str | None
    rep: str | None
    team: str | None
    source: Literal["api", "event"]
    as_of: datetime = Field(description="When the forecast was made.")
    written_at: datetime = Field(description="When LeadStage recorded this version.")
    written_by: str = Field(description="The API token's name, or the event's source.")
    written_by_token_id: int | None
    event_source: str | None = Field(description="For source=event: the deal event's source.")
    event_id: str | None


class ForecastHistory(BaseModel):
    deal_id: str
    current_version: int = Field(description="The version standing now: the latest as_of.")
    versions: list[ForecastVersion] = Field(description="Every version, in recording order.")


# --- metrics ----------------------------------------------------------------------------


class Figure(BaseModel):
    """A metric's value, or null with the reason (nothing to divide by, a missing input):
    never NaN. ``numerator`` and ``denominator`` show what was divided, when known."""

    value: float | None
    reason: str | None = None
    numerator: float | None = None
    denominator: float | None = None


class ScoreBin(BaseModel):
    lower: float = Field(description="Inclusive.")
    upper: float | None = Field(description="Exclusive; null on an open-ended last bin.")
    leads: int


class ScoreDistribution(BaseModel):
    score: str
    leads: int = Field(description="Leads with a value for this score at the period's end.")
    mean: Figure
    bin_width: float
    bins: list[ScoreBin]


class SalesFigures(BaseModel):
    average_sales_cycle_days: Figure = Field(
        description="Days from the lead's first touch to the deal won, averaged over the "
        "deals won in the period."
    )
    average_deal_size: Figure = Field(
        description="Revenue of the deals won in the period / those deals (with an amount)."
    )
    win_rate: Figure = Field(description="Won / (won + lost), deals closed in the period (0-1).")
    churn_rate_percent: Figure = Field(
        description="Customers lost in the period / customers at its start x 100."
    )
    deal_slippage_rate_percent: Figure = Field(
        description="Deals forecast to close in the period and not closed by its end / deals "
        "forecast to close in it x 100."
    )
    pipeline_coverage: Figure = Field(
        description="Open pipeline forecast to close in the period, as of its start / the "
        "owner's quota for it."
    )
    romi: Figure = Field(
        description="Incremental: (revenue of the period - revenue of the previous period) / "
        "(spend of the period - spend of the previous period)."
    )
    lead_scores: list[ScoreDistribution] = Field(
        description="Per named score of the funnel: leads' values at the period's end."
    )


class SegmentFigures(BaseModel):
    segment: str = Field(description="The channel, industry or source ('unattributed' if none).")
    figures: SalesFigures


class PeriodSalesMetrics(BaseModel):
    period: str
    start: datetime
    end: datetime
    figures: SalesFigures
    segments: list[SegmentFigures] = Field(
        default_factory=list, description="With `breakdown`: the figures per segment."
    )


class SalesMetrics(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel": "b2b-six-stage",
                    "period_kind": "quarter",
                    "from": "2026-01-01",
                    "to": "2026-07-01",
                    "currency": "EUR",
                    "owner": "team:emea",
                    "channel": None,
                    "industry": None,
                    "source": None,
                    "breakdown": None,
                    "as_of": "2026-07-02T08:00:00Z",
                    "periods": [
                        {
                            "period": "2026-Q1",
                            "start": "2026-01-01T00:00:00Z",
                            "end": "2026-04-01T00:00:00Z",
                            "figures": {
                                "average_sales_cycle_days": {
                                    "value": 42.5,
                                    "reason": None,
                                    "numerator": 85.0,
                                    "denominator": 2,
                                },
                                "average_deal_size": {
                                    "value": 30000.0,
                                    "reason": None,
                                    "numerator": 60000.0,
                                    "denominator": 2,
                                },
                                "win_rate": {
                                    "value": 0.666667,
                                    "reason": None,
                                    "numerator": 2,
                                    "denominator": 3,
                                },
                                "churn_rate_percent": {
                                    "value": None,
                                    "reason": "no customers at the start of 2026-Q1",
                                },
                                "deal_slippage_rate_percent": {
                                    "value": 50.0,
                                    "reason": None,
                                    "numerator": 1,
                                    "denominator": 2,
                                },
                                "pipeline_coverage": {
                                    "value": 3.2,
                                    "reason": None,
                                    "numerator": 800000.0,
                                    "denominator": 250000.0,
                                },
                                "romi": {
                                    "value": None,
                                    "reason": "no marketing spend recorded for 2025-Q4",
                                },
                                "lead_scores": [
                                    {
                                        "score": "engagement",
                                        "leads": 3,
                                        "mean": {
                                            "value": 20.0,
                                            "numerator": 60.0,
                                            "denominator": 3,
                                        },
                                        "bin_width": 10.0,
                                        "bins": [
                                            {"lower": 10.0, "upper": 20.0, "leads": 2},
                                            {"lower": 20.0, "upper": 30.0, "leads": 0},
                                            {"lower": 30.0, "upper": 40.0, "leads": 1},
                                        ],
                                    }
                                ],
                            },
                            "segments": [],
                        }
                    ],
                }
            ]
        },
        populate_by_name=True,
    )

    funnel: str = Field(description="The funnel whose scores are reported.")
    period_kind: Literal["month", "quarter"]
    from_: date = Field(alias="from")
    to: date
    currency: str | None
    owner: str | None
    channel: str | None
    industry: str | None
    source: str | None
    breakdown: Literal["channel", "industry", "source"] | None
    as_of: datetime = Field(description="When the figures were computed.")
    periods: list[PeriodSalesMetrics]
